"""The PCDMs-style family (Shen et al., ICLR 2024): prior → canvas inpainter → refiner, in pixel space."""

from posereid.models.pcdms.model import ImageEmbedder, PCDMsInpainter, PCDMsPrior, PCDMsRefiner
from posereid.models.pcdms.pipeline import PCDMsPipeline

__all__ = ["ImageEmbedder", "PCDMsInpainter", "PCDMsPipeline", "PCDMsPrior", "PCDMsRefiner"]
