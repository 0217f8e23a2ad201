"""Built-in analysis plugins, one module per plugin."""
