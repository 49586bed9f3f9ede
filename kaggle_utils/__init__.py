"""Helpers for notebook-driven Kaggle binary-mask segmentation (Carvana)."""

__version__ = "0.1.0"
