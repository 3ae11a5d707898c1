"""Source features inside the denoiser's attention, through diffusers attention processors (a public
extension point); one processor class, :class:`SourceAttnProcessor`, serves every family.

* **Scale-matched tokens** (PIDM's texture diffusion): every UNet resolution attends to the source
  features of the matching scale instead of one flat bag of all levels' tokens.
  :class:`LevelTokensProcessor` replaces a cross-attention layer's ``encoder_hidden_states`` by the token
  level it was assigned, taken from ``cross_attention_kwargs={"level_tokens": (level_0, level_1, ...)}``;
  self-attention is untouched. :func:`assign_levels` maps every attention layer of a
  ``UNet2DConditionModel`` to the pyramid level whose resolution is closest to the layer's own.
* **Query biases** (CFLD's Hybrid-Granularity Attention): :class:`HybridGranularityProcessor` adds the
  layer's source feature map, projected to the query width, to the cross-attention queries (not to keys
  or values), taken from ``cross_attention_kwargs={"hga_biases": (...)}``.
* **Reference attention** (the spatial path human-animation models use to keep identity): a
  self-attention layer with a ``reference_index`` appends the source tokens of its own resolution
  (``cross_attention_kwargs={"reference_tokens": (...)}``, already projected to the layer's width) to its
  keys and values, so every target position can attend to the source's positions at the same scale.
  PIDM (appearance tokens of each level) and CFLD (source pyramid maps) both take it as their
  ``reference_attention`` option; :func:`reference_layers` lists the layers it extends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


class SourceAttnProcessor(AttnProcessor2_0):
    """Scaled-dot-product attention that can read source features: a cross-attention layer with a
    ``level`` takes the tokens of that level (``level_tokens``), one with a ``bias_index`` adds that source
    bias to its queries (``hga_biases``). Without them (or on other layers) it is diffusers' own.

    The features travel with the UNet call (``cross_attention_kwargs``) rather than living on the
    processor, so gradient checkpointing (which re-runs transformer blocks during backward) sees them too.
    """

    def __init__(
        self, level: int | None = None, bias_index: int | None = None, reference_index: int | None = None
    ) -> None:
        super().__init__()
        self.level = None if level is None else int(level)
        self.bias_index = None if bias_index is None else int(bias_index)
        self.reference_index = None if reference_index is None else int(reference_index)

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        level_tokens: Sequence[torch.Tensor] | None = None,
        hga_biases: Sequence[torch.Tensor] | None = None,
        reference_tokens: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self.level is not None and attn.is_cross_attention and level_tokens is not None:
            encoder_hidden_states = level_tokens[self.level].to(hidden_states.dtype)
        bias = hga_biases[self.bias_index] if self.bias_index is not None and hga_biases is not None else None
        reference = None
        if self.reference_index is not None and reference_tokens is not None and not attn.is_cross_attention:
            reference = reference_tokens[self.reference_index]
        if bias is None and reference is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError(
                "source attention expects the (B, N, C) tokens of a transformer block's attention"
            )
        if attention_mask is not None:
            raise ValueError("source attention takes no attention mask (its tokens have no padding)")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        if reference is not None:  # keys / values: the layer's own tokens, then the source's at this scale
            if reference.shape[0] != context.shape[0] or reference.shape[-1] != context.shape[-1]:
                raise ValueError(
                    f"reference tokens of shape {tuple(reference.shape)} for a layer of tokens "
                    f"{tuple(context.shape)}: batch and width must match"
                )
            context = torch.cat([context, reference.to(context.dtype)], dim=1)
        query = attn.to_q(hidden_states)
        if bias is not None:
            if bias.shape != query.shape:
                raise ValueError(
                    f"HGA bias of shape {tuple(bias.shape)} for queries of shape {tuple(query.shape)}"
                )
            query = query + bias.to(query.dtype)
        key, value = attn.to_k(context), attn.to_v(context)
        b, heads = hidden_states.shape[0], attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        q, k, v = split(query), split(key), split(value)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        out = out.transpose(1, 2).reshape(b, -1, v.shape[1] * v.shape[-1]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class LevelTokensProcessor(SourceAttnProcessor):
    """Cross-attention keys/values are the tokens of one pyramid level (PIDM's scale matching)."""

    def __init__(self, level: int) -> None:
        super().__init__(level=level)


class HybridGranularityProcessor(SourceAttnProcessor):
    """CFLD's HGA: the layer's source bias (``index`` into ``hga_biases``) is added to the queries; installed
    on every attention layer so that all accept ``hga_biases`` (``index=None``: the layer ignores it).
    ``reference_index``: the layer's entry of ``reference_tokens`` when reference attention is on too."""

    def __init__(self, index: int | None, reference_index: int | None = None) -> None:
        super().__init__(bias_index=index, reference_index=reference_index)

    @property
    def index(self) -> int | None:
        return self.bias_index


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


def reference_layers(unet: UNet2DConditionModel) -> list[str]:
    """The processor names of the UNet's self-attention layers (``...attn1.processor``), in order.

    A transformer block built with ``only_cross_attention`` (CFLD's levels without self-attention) has an
    ``attn1`` that reads the prompt, not its own tokens: it is left out, as reference attention extends the
    self-attention only. (PIDM's and PCDMs' ``attn1`` layers all self-attend: the list is every ``attn1``.)
    """
    return [
        name
        for name in unet.attn_processors
        if name.endswith("attn1.processor")
        and not unet.get_submodule(name.removesuffix(".processor")).is_cross_attention
    ]


def use_level_tokens(unet: UNet2DConditionModel, levels: dict[str, int]) -> None:
    """Install a :class:`LevelTokensProcessor` on every attention layer (weights unchanged)."""
    unet.set_attn_processor({name: LevelTokensProcessor(level) for name, level in levels.items()})


__all__ = [
    "HybridGranularityProcessor",
    "LevelTokensProcessor",
    "SourceAttnProcessor",
    "assign_levels",
    "reference_layers",
    "unet_level",
    "use_level_tokens",
]
