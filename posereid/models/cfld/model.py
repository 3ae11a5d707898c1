"""The CFLD-style denoiser (Lu et al., CVPR 2024): weights only.

:class:`CFLDModel` is a diffusers ``ModelMixin``/``ConfigMixin`` holding four parts:

* a **source pyramid** (:class:`SourcePyramid`): multi-scale feature maps of the source image;
* the **Perception-Refined Decoder** (:class:`PerceptionRefinedDecoder`): ``num_queries`` learnable queries
  refined by a transformer decoder over the last level's tokens (+ 2-D positional code) give a short
  "coarse prompt" that takes the text prompt's place in every UNet cross-attention (``use_prd=False``:
  the last level's tokens are the prompt, the paper's "w/o PRD" row);
* **Hybrid-Granularity Attention**: on the cross-attention layers of the UNet's *up* blocks, the source
  feature map of the matching resolution, projected to the layer's query width, is added to the queries
  (not to keys/values) by :class:`HybridGranularityProcessor` (``use_hga=False``: the "w/o HGA" row);
* a **pose adapter**: diffusers' ``T2IAdapter`` over the target pose maps, whose per-level features go to
  the UNet's down path through ``down_intrablock_additional_residuals``;
* optional **reference attention** (``reference_attention=True``, issue 24): every self-attention layer of
  the UNet also attends to the source pyramid's feature map of the closest resolution (resized to the
  layer's size, layer-normalised and projected to the layer's width): the shared
  :class:`~posereid.models.texture_attention.SourceAttnProcessor` appends those tokens to its keys and
  values, so every target position can look up the source's positions at its own scale.

The denoiser is a diffusers ``UNet2DConditionModel`` over the noisy target alone (pixels in ``[-1, 1]``, or
VAE latents with ``latent=True``; the VAE itself belongs to the pipeline). The T2I-adapter adds level ``i``'s
feature at the end of down block ``i`` *before* its down-sampling only for cross-attention blocks, so every
down block but the last is a ``CrossAttnDownBlock2D``; high-resolution levels can skip self-attention
(``self_attention_levels``: their transformer blocks only cross-attend the short prompt, which is cheap).

Files: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (+ ``ema.safetensors``). A Stable
Diffusion UNet loaded by :meth:`~posereid.models.cfld.CFLDPipeline.from_sd_components` is recorded as
``unet_config`` and its weights are saved with the rest, so a checkpoint is self-contained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin, T2IAdapter, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from posereid.models.appearance import pyramid_shapes
from posereid.models.checkpoint import CheckpointMixin
from posereid.models.parts import build_unet, check_sizes, check_training_fields
from posereid.models.pose import POSE_CHANNELS
from posereid.models.texture_attention import (
    HybridGranularityProcessor,
    SourceAttnProcessor,
    reference_layers,
    unet_level,
)


# --------------------------------------------------------------------------------------------------
# Source branch: conv pyramid and the Perception-Refined Decoder
# --------------------------------------------------------------------------------------------------
class SourcePyramid(nn.Module):
    """Conv pyramid over the source image: one feature map per level, finest first.

    Not :class:`~posereid.models.appearance.AppearanceEncoder`: that one turns *every* level into
    layer-normalised cross-attention tokens (with level and null embeddings); CFLD needs raw maps (HGA
    projects each to a UNet layer's query width) and tokens of the last level only, and parameters that
    never receive a gradient would stop DDP (``find_unused_parameters=False``).
    """

    def __init__(self, channels: Sequence[int], stem_stride: int, norm_groups: int) -> None:
        super().__init__()
        chans = [int(c) for c in channels]
        bad = [c for c in chans if c % norm_groups]
        if bad:
            raise ValueError(f"source_channels {bad} are not divisible by norm_num_groups={norm_groups}")
        s = int(stem_stride)
        self.stem = nn.Conv2d(
            3, chans[0], kernel_size=3 if s == 1 else s, stride=s, padding=1 if s == 1 else 0
        )
        self.blocks = nn.ModuleList(
            ResnetBlock2D(in_channels=c, out_channels=c, temb_channels=None, groups=norm_groups)
            for c in chans
        )
        self.downs = nn.ModuleList(
            Downsample2D(a, use_conv=True, out_channels=b, padding=1, name="op")
            for a, b in zip(chans, chans[1:])
        )

    def forward(self, source: torch.Tensor) -> list[torch.Tensor]:
        """``source`` ``(B, 3, H, W)`` in ``[0, 1]`` → feature maps ``(B, C_i, h_i, w_i)``."""
        h = self.stem(source.to(self.stem.weight.dtype) * 2.0 - 1.0)
        maps = []
        for i, block in enumerate(self.blocks):
            h = block(h, None)
            maps.append(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        return maps


class PerceptionRefinedDecoder(nn.Module):
    """``num_queries`` learnable queries refined by a transformer decoder over source tokens → coarse prompt."""

    def __init__(self, dim: int, num_queries: int, layers: int, heads: int, query_std: float = 1.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"cross_attention_dim {dim} is not divisible by prd_heads={heads}")
        if not query_std > 0:
            raise ValueError(f"prd_query_std must be > 0, got {query_std}")
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * float(query_std))
        layer = nn.TransformerDecoderLayer(
            dim,
            heads,
            dim_feedforward=4 * dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers=layers, norm=nn.LayerNorm(dim))

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        """``memory`` ``(B, N, D)`` → prompt ``(B, num_queries, D)``."""
        queries = self.queries.to(memory.dtype).unsqueeze(0).expand(memory.shape[0], -1, -1)
        return self.decoder(queries, memory)


def _level_size(size: tuple[int, int], level: int) -> tuple[int, int]:
    h, w = size
    for _ in range(level):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class CFLDModel(CheckpointMixin, ModelMixin, ConfigMixin):
    """UNet + pose adapter + source pyramid + PRD + HGA of the CFLD family (weights and config only).

    Args:
        image_size: ``(H, W)`` of the images, in pixels (also in latent mode).
        block_out_channels: UNet channels per level (also the adapter's).
        layers_per_block: ResNet/transformer layers per UNet level.
        self_attention_levels: per UNet level, whether its transformer blocks self-attend too (else they
            only cross-attend the prompt); the mid block always self-attends.
        attention_head_dim: channels per attention head.
        norm_num_groups: GroupNorm groups (UNet and source pyramid).
        cross_attention_dim: prompt token width.
        source_channels / source_stem_stride: the source pyramid's channels per level and first stride.
        num_queries, prd_layers, prd_heads: the PRD's learnable queries, decoder layers and heads.
        prd_query_std: initial standard deviation of the learnable queries: 1.0, an embedding's. With 0.02
            the queries, small beside what the decoder adds to them, came out of training nearly alike: one
            prompt token sixteen times, nothing for HGA to choose between, identity at the floor
            (``results/generator_v2``, ``cfld-q0.02`` rows).
        use_prd: False: the prompt is the last pyramid level's tokens ("w/o PRD").
        use_hga: False: no query biases in the up blocks ("w/o HGA").
        adapter_res_blocks: residual blocks per pose-adapter level.
        timestep_sampling: training timesteps, ``"cubic"`` (CFLD's ``t = (1 − u³)·T``) or ``"uniform"``.
        p_drop_pose, p_drop_appearance: independent training condition-dropout rates (for guidance).
        snr_gamma: min-SNR-γ loss weighting (None: plain MSE).
        pose_sigma: Gaussian width of pose maps in pixels (None: 2.5 % of the height).
        latent: diffuse in a VAE latent (the pipeline holds the VAE) instead of pixels.
        latent_channels, vae_scale_factor: the VAE's latent channels and down-sampling (latent mode).
        unet_config: a full ``UNet2DConditionModel`` config (e.g. Stable Diffusion 1.5's) used instead of
            the UNet fields above.
        reference_attention: every self-attention layer of the UNet (``attn1`` of the levels that
            self-attend, and the mid block's) also attends to the source's features of its own resolution,
            beside the prompt's cross-attention and HGA: the spatial path that keeps identity in
            human-animation models (as PIDM's option of the same name). The features are the source
            pyramid's raw maps (:class:`SourcePyramid`, the same maps HGA reads), the level closest to the
            layer's resolution, resized to the layer's size, then ``LayerNorm`` + ``Linear`` to its width
            (one projection per layer). A dropped appearance gives zero reference tokens (as its zero HGA
            biases). False (the default, and what a checkpoint without the field loads as): no change.
    """

    _supports_gradient_checkpointing = True

    # Kept on purpose: the size fields shared with the other families' models (image_size ... cross_attention_dim)
    # are spelled out in each, since a diffusers model's config is its __init__ signature;
    # tests/test_conformance.py::test_shared_config_fields_agree_across_families checks that they agree.
    @register_to_config
    def __init__(
        self,
        image_size: Sequence[int] = (128, 64),
        block_out_channels: Sequence[int] = (64, 128, 256, 256),
        layers_per_block: int = 2,
        self_attention_levels: Sequence[bool] = (False, True, True, True),
        attention_head_dim: int = 32,
        norm_num_groups: int = 32,
        cross_attention_dim: int = 256,
        source_channels: Sequence[int] = (64, 128, 256, 256),
        source_stem_stride: int = 2,
        num_queries: int = 16,
        prd_layers: int = 8,
        prd_heads: int = 8,
        prd_query_std: float = 1.0,
        use_prd: bool = True,
        use_hga: bool = True,
        adapter_res_blocks: int = 2,
        timestep_sampling: Literal["uniform", "cubic"] = "cubic",
        p_drop_pose: float = 0.1,
        p_drop_appearance: float = 0.1,
        snr_gamma: float | None = None,
        pose_sigma: float | None = None,
        latent: bool = False,
        latent_channels: int = 4,
        vae_scale_factor: int = 8,
        unet_config: Mapping[str, Any] | None = None,
        reference_attention: bool = False,
    ) -> None:
        super().__init__()
        check_sizes(
            image_size=list(image_size), source_channels=list(source_channels),
            source_stem_stride=source_stem_stride, num_queries=num_queries, prd_layers=prd_layers,
            prd_heads=prd_heads, adapter_res_blocks=adapter_res_blocks, latent_channels=latent_channels,
            vae_scale_factor=vae_scale_factor,
        )  # fmt: skip
        h, w = (int(v) for v in image_size)
        dim = int(cross_attention_dim)
        check_training_fields(
            p_drop_pose=p_drop_pose, p_drop_appearance=p_drop_appearance, snr_gamma=snr_gamma,
            timestep_sampling=timestep_sampling,
        )  # fmt: skip
        if dim % 4:
            raise ValueError(f"cross_attention_dim must be divisible by 4, got {dim}")
        factor = int(vae_scale_factor) if latent else 1
        if h % factor or w % factor:
            raise ValueError(f"image_size {h}x{w} is not divisible by the VAE's down-sampling {factor}")
        self.unet_size = (h // factor, w // factor)
        channels = int(latent_channels) if latent else 3
        if unet_config is not None:
            self.unet = UNet2DConditionModel.from_config(dict(unet_config))
        else:
            self.unet = build_unet(
                sample_size=self.unet_size, in_channels=channels, out_channels=channels,
                block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                self_attention_levels=self_attention_levels, attention_head_dim=attention_head_dim,
                norm_num_groups=norm_num_groups, cross_attention_dim=dim,
                what="the UNet input (image_size / VAE factor)",
            )  # fmt: skip
        self._check_unet(channels, dim, bool(latent))

        # pose adapter: level i has the UNet's channels at down block i's resolution
        self.adapter = T2IAdapter(
            in_channels=POSE_CHANNELS,
            channels=[int(c) for c in self.unet.config.block_out_channels],
            num_res_blocks=int(adapter_res_blocks),
            downscale_factor=factor,
            adapter_type="full_adapter",
        )

        # source branch
        self.source = SourcePyramid(source_channels, source_stem_stride, norm_num_groups)
        self.source_shapes = pyramid_shapes(h, w, len(source_channels), int(source_stem_stride))
        last_h, last_w = self.source_shapes[-1]
        self.source_proj = nn.Linear(int(source_channels[-1]), dim)
        pos = get_2d_sincos_pos_embed(dim, (last_h, last_w), base_size=16, output_type="pt").float()
        self.register_buffer("source_pos", pos, persistent=False)
        self.source_norm = nn.LayerNorm(dim)
        self.prd = (
            PerceptionRefinedDecoder(dim, num_queries, prd_layers, prd_heads, prd_query_std)
            if use_prd
            else None
        )
        prompt_len = int(num_queries) if use_prd else last_h * last_w
        self.null_prompt = nn.Parameter(torch.randn(prompt_len, dim) * 0.02)

        # HGA: one query-bias projection per cross-attention layer of the up blocks
        self.hga_layers: list[tuple[str, int, tuple[int, int]]] = []  # (processor, source level, size)
        self.hga_proj = nn.ModuleList()
        if use_hga:
            self._plan_hga(source_channels)
        # reference attention: one token projection per self-attention layer
        self.ref_layers: list[tuple[str, int, tuple[int, int]]] = []  # (processor, source level, size)
        self.reference_proj = nn.ModuleList()
        if reference_attention:
            self._plan_reference(source_channels)
        self._install_processors(bool(use_hga))

    # ------------------------------------------------------------------ construction helpers
    def _check_unet(self, channels: int, dim: int, latent: bool) -> None:
        ucfg = self.unet.config
        if int(ucfg.in_channels) != channels or int(ucfg.out_channels) != channels:
            raise ValueError(
                f"the UNet maps {ucfg.in_channels} to {ucfg.out_channels} channels but the model diffuses "
                f"{channels} ({'latent' if latent else 'RGB'})"
            )
        if ucfg.cross_attention_dim != dim:
            raise ValueError(f"the UNet's cross_attention_dim {ucfg.cross_attention_dim} is not {dim}")
        for i, block in enumerate(self.unet.down_blocks[:-1]):
            if not getattr(block, "has_cross_attention", False):
                raise ValueError(
                    f"down block {i} ({type(block).__name__}) has no cross-attention: the T2I pose adapter "
                    "adds its features before a block's down-sampling only in cross-attention blocks"
                )

    def _source_level(self, name: str) -> tuple[int, tuple[int, int]]:
        """The source pyramid level nearest in resolution (octaves) to a UNet attention layer, and the
        layer's ``(h, w)``, to which that level's map is resized."""
        size = _level_size(self.unet_size, unet_level(name, len(self.unet.config.block_out_channels)))
        src = min(
            range(len(self.source_shapes)),
            key=lambda j: abs(math.log2(self.source_shapes[j][0] / size[0])),
        )
        return src, size

    def _plan_hga(self, source_channels: Sequence[int]) -> None:
        """One query-bias projection per cross-attention layer of the up blocks."""
        for name in self.unet.attn_processors:
            if not (name.startswith("up_blocks.") and name.endswith(".attn2.processor")):
                continue
            src, size = self._source_level(name)
            attn = self.unet.get_submodule(name.removesuffix(".processor"))
            self.hga_layers.append((name, src, size))
            self.hga_proj.append(nn.Linear(int(source_channels[src]), attn.to_q.out_features))

    def _plan_reference(self, source_channels: Sequence[int]) -> None:
        """One token projection (``LayerNorm`` + ``Linear`` to the key/value input width) per self-attention
        layer (:func:`~posereid.models.texture_attention.reference_layers`)."""
        for name in reference_layers(self.unet):
            src, size = self._source_level(name)
            attn = self.unet.get_submodule(name.removesuffix(".processor"))
            c = int(source_channels[src])
            self.ref_layers.append((name, src, size))
            self.reference_proj.append(nn.Sequential(nn.LayerNorm(c), nn.Linear(c, attn.to_k.in_features)))

    def _install_processors(self, use_hga: bool) -> None:
        """The shared source-attention processors: with HGA a :class:`HybridGranularityProcessor` on every
        layer (as before reference attention existed), else a plain
        :class:`~posereid.models.texture_attention.SourceAttnProcessor` when reference attention is on;
        neither: diffusers' own processors are kept."""
        if not use_hga and not self.ref_layers:
            return
        bias = {name: i for i, (name, _, _) in enumerate(self.hga_layers)}
        ref = {name: i for i, (name, _, _) in enumerate(self.ref_layers)}
        self.unet.set_attn_processor({
            name: HybridGranularityProcessor(bias.get(name), reference_index=ref.get(name))
            if use_hga
            else SourceAttnProcessor(reference_index=ref.get(name))
            for name in self.unet.attn_processors
        })  # fmt: skip

    # ------------------------------------------------------------------ conditions
    @property
    def latent(self) -> bool:
        return bool(self.config.latent)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of what the UNet denoises (RGB pixels, or VAE latents)."""
        return int(self.unet.config.in_channels), *self.unet_size

    def encode_source(self, source: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The appearance condition ``(prompt, *hga_biases, *reference_tokens)`` of ``source``
        ``(B, 3, H, W)`` in ``[0, 1]``.

        ``prompt`` ``(B, P, cross_attention_dim)``; one bias ``(B, h·w, query width)`` per HGA layer; with
        ``reference_attention``, one token tensor ``(B, h·w, layer width)`` per reference layer."""
        maps = self.source(source.to(self.unet.conv_in.weight.device))
        last = maps[-1]
        tokens = self.source_proj(last.flatten(2).transpose(1, 2)) + self.source_pos.to(last.dtype)
        tokens = self.source_norm(tokens)
        prompt = self.prd(tokens) if self.prd is not None else tokens
        resized: dict[tuple[int, int, int], torch.Tensor] = {}

        def at(src: int, size: tuple[int, int]) -> torch.Tensor:
            """Pyramid level ``src`` at ``size`` as tokens ``(B, h·w, C)``, resized once per (level, size)."""
            key = (src, *size)
            if key not in resized:
                m = maps[src]
                if tuple(m.shape[-2:]) != size:
                    m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                resized[key] = m.flatten(2).transpose(1, 2)
            return resized[key]

        biases = [proj(at(src, size)) for (_, src, size), proj in zip(self.hga_layers, self.hga_proj)]
        references = [
            proj(at(src, size)) for (_, src, size), proj in zip(self.ref_layers, self.reference_proj)
        ]
        return (prompt, *biases, *references)

    def null_source(self, appearance: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The "appearance dropped" condition laid out like ``appearance``: learned null prompt, zero biases
        (and zero reference tokens)."""
        prompt, *biases = appearance
        null = self.null_prompt.to(prompt.dtype).unsqueeze(0).expand(prompt.shape[0], -1, -1)
        return (null, *(torch.zeros_like(b) for b in biases))

    def encode_pose(self, pose_maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The pose condition: the adapter's features ``(B, C_i, h_i, w_i)``, one per UNet down block."""
        return tuple(self.adapter(pose_maps.to(self.adapter.adapter.conv_in.weight.dtype)))

    @staticmethod
    def null_pose(pose: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The "pose dropped" condition: zero adapter residuals (the UNet sees no pose at all)."""
        return tuple(torch.zeros_like(r) for r in pose)

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        pose_residuals: Sequence[torch.Tensor] | None,
        prompt: torch.Tensor,
        hga_biases: Sequence[torch.Tensor] = (),
        reference_tokens: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Model output (ε or v) for ``noisy`` ``(B, *sample_shape)`` given the conditions of
        :meth:`encode_pose` (``None``: no pose) and :meth:`encode_source` (``prompt``, then its tail).

        ``hga_biases``: one bias per HGA layer; with reference attention it may be :meth:`encode_source`'s
        whole tail (the biases, then the reference tokens), or the reference tokens come apart as
        ``reference_tokens``."""
        n_bias, n_ref = len(self.hga_proj), len(self.reference_proj)
        tail = tuple(hga_biases)
        if reference_tokens is None and n_ref and len(tail) == n_bias + n_ref:
            tail, reference_tokens = tail[:n_bias], tail[n_bias:]
        if len(tail) != n_bias:
            raise ValueError(f"got {len(tail)} HGA biases; this model has {n_bias} HGA layers")
        refs = tuple(reference_tokens or ())
        if len(refs) != n_ref:
            raise ValueError(
                f"got {len(refs)} reference token tensors; this model has {n_ref} reference layers"
            )
        dtype = self.unet.conv_in.weight.dtype  # a half-precision model takes half inputs; autocast recasts
        kwargs: dict[str, Any] = {}
        attention: dict[str, Any] = {}
        if n_bias:
            attention["hga_biases"] = tuple(b.to(dtype) for b in tail)
        if n_ref:
            attention["reference_tokens"] = tuple(r.to(dtype) for r in refs)
        if attention:
            kwargs["cross_attention_kwargs"] = attention
        residuals = None
        if pose_residuals is not None:
            residuals = [r.to(dtype) for r in pose_residuals]  # a fresh list: the UNet pops from it
        return self.unet(
            noisy.to(dtype),
            timesteps,
            encoder_hidden_states=prompt.to(dtype),
            down_intrablock_additional_residuals=residuals,
            **kwargs,
        ).sample


__all__ = ["CFLDModel", "HybridGranularityProcessor", "PerceptionRefinedDecoder", "SourcePyramid"]
