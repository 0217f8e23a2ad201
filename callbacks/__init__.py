"""Bluesky callbacks: documents in, batches out."""
