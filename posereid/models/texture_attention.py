"""Scale-matched cross-attention: each UNet level reads the appearance features of its own resolution.

PIDM's texture diffusion module lets every UNet resolution attend to the source features of the matching
scale, instead of one flat bag of all levels' tokens. With diffusers this is an attention processor (a
public extension point): :class:`LevelTokensProcessor` replaces a cross-attention layer's
``encoder_hidden_states`` by the token level it was assigned, taken from
``cross_attention_kwargs={"level_tokens": (level_0, level_1, ...)}``; self-attention is untouched.
:func:`assign_levels` maps every attention layer of a ``UNet2DConditionModel`` to the pyramid level whose
resolution is closest to the layer's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


class LevelTokensProcessor(AttnProcessor2_0):
    """Scaled-dot-product attention whose cross-attention keys/values are the tokens of one level."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = int(level)

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        level_tokens: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if attn.is_cross_attention and level_tokens is not None:
            encoder_hidden_states = level_tokens[self.level].to(hidden_states.dtype)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def unet_level(processor_name: str, num_levels: int) -> int:
    """The resolution level (0 = full size) of an attention processor of a ``UNet2DConditionModel``."""
    block, _, rest = processor_name.partition(".")
    if block == "mid_block":
        return num_levels - 1
    index = int(rest.split(".", 1)[0])
    return index if block == "down_blocks" else num_levels - 1 - index


def assign_levels(
    unet: UNet2DConditionModel, image_hw: tuple[int, int], pyramid_hw: Sequence[tuple[int, int]]
) -> dict[str, int]:
    """Processor name → index of the pyramid level closest in resolution (by height, in octaves)."""
    n = len(unet.config.block_out_channels)
    out = {}
    for name in unet.attn_processors:
        h = image_hw[0] / 2 ** unet_level(name, n)
        out[name] = min(range(len(pyramid_hw)), key=lambda j: abs(math.log2(pyramid_hw[j][0] / h)))
    return out


def use_level_tokens(unet: UNet2DConditionModel, levels: dict[str, int]) -> None:
    """Install a :class:`LevelTokensProcessor` on every attention layer (weights unchanged)."""
    unet.set_attn_processor({name: LevelTokensProcessor(level) for name, level in levels.items()})


__all__ = ["LevelTokensProcessor", "assign_levels", "unet_level", "use_level_tokens"]
