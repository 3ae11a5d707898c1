"""A fourth generator family, written by following docs/ARCHITECTURE.md ("A new family") and nothing else.

"concat": the simplest pose-transfer diffusion model that fits the contract. The denoiser is a plain
diffusers ``UNet2DModel`` (no attention) over the noisy target ⊕ the target pose maps ⊕ the source image;
the "appearance dropped" condition is a learned image, the "pose dropped" one empty pose maps. Importing
this module registers the family, so ``load_generator``, the commands and the conformance suite
(tests/test_conformance.py) treat it like the three built in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config
from torch import nn

from posereid.models import CheckpointMixin, GeneratorPipeline, check_training_fields, register_family
from posereid.models.pose import POSE_CHANNELS


class ConcatModel(CheckpointMixin, ModelMixin, ConfigMixin):
    """Weights only: a UNet over noisy target ⊕ pose maps ⊕ source, and the learned null source."""

    @register_to_config
    def __init__(
        self,
        image_size: Sequence[int] = (32, 16),
        block_out_channels: Sequence[int] = (16, 32),
        norm_num_groups: int = 8,
        p_drop_pose: float = 0.1,
        p_drop_appearance: float = 0.1,
        pose_sigma: float | None = None,
    ) -> None:
        super().__init__()
        check_training_fields(p_drop_pose=p_drop_pose, p_drop_appearance=p_drop_appearance)
        h, w = (int(v) for v in image_size)
        levels = len(block_out_channels)
        self.unet = UNet2DModel(
            sample_size=(h, w), in_channels=3 + POSE_CHANNELS + 3, out_channels=3,
            block_out_channels=tuple(block_out_channels), layers_per_block=1, norm_num_groups=norm_num_groups,
            down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
        )  # fmt: skip
        self.null_source = nn.Parameter(torch.zeros(3, h, w))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, pose: torch.Tensor, source: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(torch.cat([x, pose.to(x.dtype), source.to(x.dtype)], dim=1), t).sample


class ConcatPipeline(GeneratorPipeline):
    """Source image + target pose → image, by channel concatenation."""

    family = "concat"
    model_class = ConcatModel
    PRESETS = {"tiny": dict(image_size=(32, 16), prediction_type="flow")}

    def conditions(self, source, target_kps, source_kps):
        self.check_images(source, "source")
        return self.pose_maps(target_kps, batch=source.shape[0]), source * 2.0 - 1.0

    def null_conditions(self, pose, appearance):
        return torch.zeros_like(pose), self.model.null_source.to(appearance.dtype).expand_as(appearance)

    def model_output(self, x, t, pose, appearance):
        return self.model(x, t, pose, appearance)


register_family("concat", ConcatPipeline)
