"""Shoal: a serverless-style gateway-plus-mesh platform."""

__version__ = "0.1.0"
