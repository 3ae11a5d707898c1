"""The CFLD-style family (Lu et al., CVPR 2024): coarse prompt (PRD), query biases (HGA), pose adapter."""

from posereid.models.cfld.model import CFLDModel, HybridGranularityProcessor
from posereid.models.cfld.pipeline import CFLDPipeline, load_local_unet, load_local_vae

__all__ = ["CFLDModel", "CFLDPipeline", "HybridGranularityProcessor", "load_local_unet", "load_local_vae"]
