"""The PIDM-style family (Bhunia et al., CVPR 2023): pixel-space denoiser with a texture encoder."""

from posereid.models.pidm.model import PIDMModel
from posereid.models.pidm.pipeline import PIDMPipeline

__all__ = ["PIDMModel", "PIDMPipeline"]
