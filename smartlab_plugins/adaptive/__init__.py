"""Adaptive experiment planning: planners read results, suggest the next measurement.

See :mod:`smartlab_plugins.adaptive.protocol` for the planner hooks and the data they
exchange.
"""
