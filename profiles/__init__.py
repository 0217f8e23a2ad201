"""The IPython profile shipped with SmartLab."""
