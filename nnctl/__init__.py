"""nnctl: train neural networks from YAML experiment specs with a pure NumPy engine."""

__version__ = "0.1.0"
