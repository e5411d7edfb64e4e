"""A reproducible pipeline for chapters 1-4 of Deep Learning with PyTorch Step-by-Step."""

__version__ = "0.1.0"
