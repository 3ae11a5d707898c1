"""posereid: pose-transfer diffusion augmentation for person re-identification."""

__version__ = "0.1.0"
