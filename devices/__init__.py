"""Simulated ophyd devices, one module per instrument."""
