"""iterpo: iterative preference optimization of generative models."""

__version__ = "0.1.0"
