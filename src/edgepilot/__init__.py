"""edgepilot: from a trained model to a monitored, updatable edge deployment."""
__version__ = "0.1.0"
