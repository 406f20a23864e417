"""fedgate's version, in a leaf module: the worker announces it without importing the gateway."""

__version__ = "0.1.0"
