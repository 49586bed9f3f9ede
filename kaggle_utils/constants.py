"""The competition's constants, defined once (torch-free).

Every module that needs Carvana's mask shape, its Kaggle slug or the ImageNet statistics the
pretrained encoders expect imports them from here.
"""

from __future__ import annotations

COMPETITION = "carvana-image-masking-challenge"
"""Kaggle's slug: `kaggle competitions download -c ...`, `/kaggle/input/<slug>/`."""

MASK_SHAPE: tuple[int, int] = (1280, 1918)
"""(height, width) of every Carvana photo and mask: the metric's resolution."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""RGB statistics the timm / smp encoders were pretrained with (images in 0..1)."""
