"""The PIDM-style denoiser: weights only (a UNet over target ⊕ pose maps, and the appearance encoder).

:class:`PIDMModel` is a diffusers ``ModelMixin``/``ConfigMixin``: it holds the weights and a
self-describing config, nothing else. The denoiser is a ``UNet2DConditionModel`` in pixel space whose input
is the noisy target ⊕ the target pose maps (:func:`posereid.models.pose.render_pose_maps`) and whose
cross-attention reads the appearance tokens of the source image (:mod:`posereid.models.appearance`).
The noise schedule is the pipeline's scheduler; the loss and the sampling loop are in
:mod:`posereid.models.pidm.pipeline`.

Files: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (+ ``ema.safetensors``; + ``backbone/``
when a local vision backbone is used), through :class:`~posereid.models.checkpoint.CheckpointMixin`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from posereid.models.appearance import AppearanceEncoder
from posereid.models.checkpoint import CheckpointMixin, save_component
from posereid.models.parts import build_unet, check_training_fields
from posereid.models.pose import POSE_CHANNELS
from posereid.models.texture_attention import (
    SourceAttnProcessor,
    assign_levels,
    reference_layers,
    use_level_tokens,
)

BACKBONE_DIR = "backbone"


class PIDMModel(CheckpointMixin, ModelMixin, ConfigMixin):
    """UNet denoiser + appearance encoder of the PIDM-style family (weights and config only).

    Args:
        image_size: ``(H, W)`` of every image the model sees (both divisible by the UNet's down-sampling).
        block_out_channels: UNet channels per resolution level.
        layers_per_block: ResNet layers per UNet level.
        attention_levels: per UNet level, whether it has (self + cross) attention; the mid block always has.
        attention_head_dim: channels per attention head.
        norm_num_groups: GroupNorm groups (UNet and appearance encoder).
        cross_attention_dim: appearance token width.
        appearance_channels: channels of the appearance pyramid's levels.
        appearance_stem_stride: stride of the appearance pyramid's first level.
        appearance_use_pose: feed the source pose maps to the appearance encoder too.
        timestep_sampling: training timesteps ``"uniform"`` or ``"cubic"`` (t = (1 − u³)·T, CFLD).
        p_drop_pose, p_drop_appearance: independent training condition-dropout rates (for guidance).
        p_drop_source_pose: training rate of empty source pose maps for the appearance encoder, so that
            sampling without source keypoints (augment batches, unannotated sources) is not out of
            distribution (0: always fed, as before).
        snr_gamma: min-SNR-γ loss weighting (None: plain MSE).
        texture_attention: ``"flat"`` (every cross-attention reads all levels' tokens in one sequence) or
            ``"per_level"`` (PIDM's texture diffusion: each UNet resolution reads the appearance level of
            the closest resolution; :mod:`posereid.models.texture_attention`).
        pose_sigma: Gaussian width of pose maps in pixels (None: 2.5 % of the height).
        backbone_path: local directory of a ``transformers`` vision model adding appearance tokens.
        reference_attention: every self-attention layer of the UNet also attends to the source's appearance
            tokens of its own resolution (projected to its width; :mod:`posereid.models.texture_attention`),
            beside the cross-attention: the spatial path that keeps identity in human-animation models.
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
        attention_levels: Sequence[bool] = (False, True, True, True),
        attention_head_dim: int = 32,
        norm_num_groups: int = 32,
        cross_attention_dim: int = 256,
        appearance_channels: Sequence[int] = (64, 128, 256),
        appearance_stem_stride: int = 4,
        appearance_use_pose: bool = True,
        timestep_sampling: Literal["uniform", "cubic"] = "uniform",
        p_drop_pose: float = 0.1,
        p_drop_appearance: float = 0.1,
        p_drop_source_pose: float = 0.0,
        snr_gamma: float | None = None,
        texture_attention: Literal["flat", "per_level"] = "flat",
        pose_sigma: float | None = None,
        backbone_path: str | None = None,
        reference_attention: bool = False,
    ) -> None:
        super().__init__()
        h, w = (int(v) for v in image_size)
        check_training_fields(
            p_drop_pose=p_drop_pose, p_drop_appearance=p_drop_appearance,
            p_drop_source_pose=p_drop_source_pose, snr_gamma=snr_gamma, timestep_sampling=timestep_sampling,
        )  # fmt: skip
        if texture_attention not in ("flat", "per_level"):
            raise ValueError(f"texture_attention must be 'flat' or 'per_level', got {texture_attention!r}")
        if texture_attention == "per_level" and backbone_path is not None:
            raise ValueError("texture_attention='per_level' does not take a backbone yet; use 'flat'")
        self.unet = build_unet(
            sample_size=(h, w), in_channels=3 + POSE_CHANNELS, out_channels=3,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            attention_levels=attention_levels, attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups, cross_attention_dim=cross_attention_dim,
        )  # fmt: skip
        self.appearance = AppearanceEncoder(
            (h, w), appearance_channels, cross_attention_dim, use_pose=appearance_use_pose,
            stem_stride=appearance_stem_stride, norm_groups=norm_num_groups,
            backbone_path=backbone_path,
        )  # fmt: skip
        levels = assign_levels(self.unet, (h, w), self.appearance.shapes)
        #: per reference layer: the pyramid level whose tokens it reads (and its projection below)
        self.reference_levels: list[int] = []
        self.reference_proj = nn.ModuleList()
        if reference_attention:
            names = reference_layers(self.unet)
            for name in names:
                attn = self.unet.get_submodule(name.removesuffix(".processor"))
                self.reference_levels.append(levels[name])
                self.reference_proj.append(nn.Linear(int(cross_attention_dim), attn.to_k.in_features))
            index = {name: i for i, name in enumerate(names)}
            self.unet.set_attn_processor({
                name: SourceAttnProcessor(
                    level=levels[name] if texture_attention == "per_level" else None,
                    reference_index=index.get(name),
                )
                for name in self.unet.attn_processors
            })  # fmt: skip
        elif texture_attention == "per_level":
            use_level_tokens(self.unet, levels)

    @property
    def per_level(self) -> bool:
        return self.config.texture_attention == "per_level"

    @property
    def by_level(self) -> bool:
        """Whether the appearance condition is one token tensor per level (scale-matched or reference)."""
        return self.per_level or bool(self.config.get("reference_attention"))

    def encode_appearance(
        self, source: torch.Tensor, source_maps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Appearance tokens ``(B, N, cross_attention_dim)`` of ``source`` ``(B, 3, H, W)`` in ``[0, 1]``, or
        with ``texture_attention="per_level"`` or ``reference_attention`` a tuple of one such tensor per
        pyramid level (their concatenation is the flat sequence).

        ``source_maps``: the source pose maps when the config uses them; ``None`` gives empty maps.
        """
        source = source.to(self.unet.conv_in.weight.device)
        if self.by_level:
            return tuple(self.appearance.forward_levels(source, source_maps))
        return self.appearance(source, source_maps)

    def null_tokens(self, batch: int, num_tokens: int) -> torch.Tensor:
        """The learned "appearance dropped" tokens, laid out like the flat :meth:`encode_appearance`'s."""
        return self.appearance.null_tokens(batch, num_tokens)

    def null_like(
        self, tokens: torch.Tensor | tuple[torch.Tensor, ...]
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The "appearance dropped" condition with the layout and dtype of ``tokens`` (flat or per level)."""
        if isinstance(tokens, tuple):
            return tuple(
                n.to(t.dtype) for n, t in zip(self.appearance.null_levels(tokens[0].shape[0]), tokens)
            )
        return self.appearance.null_tokens(tokens.shape[0], tokens.shape[1]).to(tokens.dtype)

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        pose_maps: torch.Tensor,
        tokens: torch.Tensor | tuple[torch.Tensor, ...],
    ) -> torch.Tensor:
        """Model output (ε or v) for ``noisy`` ``(B, 3, H, W)`` in ``[-1, 1]``, given the rendered target
        ``pose_maps`` ``(B, POSE_CHANNELS, H, W)`` and appearance ``tokens`` (flat, or one per level)."""
        dtype = self.unet.conv_in.weight.dtype  # a half-precision model takes half inputs; autocast recasts
        x = torch.cat([noisy.to(dtype), pose_maps.to(noisy.device, dtype)], dim=1)
        if not isinstance(tokens, tuple):
            return self.unet(x, timesteps, encoder_hidden_states=tokens.to(dtype)).sample
        levels = tuple(t.to(dtype) for t in tokens)
        kwargs: dict[str, Any] = {}
        if self.per_level:
            kwargs["level_tokens"] = levels
            context = levels[0]
        else:
            context = torch.cat(levels, dim=1)  # the flat sequence
        if self.reference_proj:
            kwargs["reference_tokens"] = tuple(
                proj(levels[level]) for level, proj in zip(self.reference_levels, self.reference_proj)
            )
        return self.unet(
            x, timesteps, encoder_hidden_states=context, cross_attention_kwargs=kwargs or None
        ).sample

    # ------------------------------------------------------------------ checkpoints
    def _save_components(self, directory: Path) -> None:
        """The frozen vision backbone, if any, in ``backbone/`` (its own ``save_pretrained`` layout)."""
        backbone = self.appearance.backbone
        if backbone is not None:
            processor = Path(self.config.backbone_path) / "preprocessor_config.json"
            save_component(backbone, directory / BACKBONE_DIR, extra_files=(processor,))

    @classmethod
    def _checkpoint_config(cls, config: dict[str, Any], directory: Path) -> dict[str, Any]:
        """A backbone is read from the checkpoint's own ``backbone/`` folder, not from where it was first found."""
        if config.get("backbone_path") is not None:
            config = {**config, "backbone_path": str(directory / BACKBONE_DIR)}
        return config


__all__ = ["BACKBONE_DIR", "PIDMModel"]
