"""A multi-backend comparison harness for neural-network training.

Importing this package imports no deep-learning framework: backends are
looked up lazily through ``harness.registry``.
"""
__version__ = "0.1.0"
