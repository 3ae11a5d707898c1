"""Appearance ("texture") encoder: the source image as one sequence of cross-attention tokens.

A small trainable conv pyramid (diffusers ``ResnetBlock2D`` / ``Downsample2D`` blocks) reads the source
image, optionally concatenated with its pose maps. Every pyramid level is projected to ``token_dim`` and
flattened; a learned **level embedding** and a fixed 2-D sin-cos **positional embedding** (coordinates
normalised to the image, so the same spot of the person has the same code at every level) are added, and
all levels are concatenated into ONE token sequence that the denoiser's cross-attention reads.

Optionally a ``transformers`` vision backbone (DINOv2, CLIP, ...) adds its patch tokens as one more level.
It is loaded **only from a local directory** (``local_files_only=True``), frozen, and its input is the
source resized to the backbone's square ``image_size`` and normalised with the directory's
``preprocessor_config.json`` mean/std (ImageNet statistics when the file is absent).

Classifier-free guidance needs an "appearance dropped" input: :meth:`AppearanceEncoder.null_tokens` gives
learned null tokens with the same layout (one learned vector per level, plus the same level/position
codes), so a dropped and a kept sample can share one batched UNet call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from posereid.models.checkpoint import require_local_weights
from posereid.models.pose import POSE_CHANNELS

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class BackboneNotFoundError(FileNotFoundError):
    """A local backbone directory is missing or incomplete."""


def load_local_backbone(path: str | Path) -> nn.Module:
    """Load a ``transformers`` vision model from a local directory only (never the hub).

    A CLIP-style dual model is reduced to its ``vision_model``. Raises :class:`BackboneNotFoundError` naming
    the path and what must be in it.
    """
    directory = require_local_weights(
        path,
        "appearance backbone",
        "put a transformers vision model there (e.g. model.save_pretrained(dir) of a DINOv2/CLIP model). "
        "Weights are never downloaded.",
        weight_files=_WEIGHT_FILES,
        error=BackboneNotFoundError,
    )
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(directory), local_files_only=True)
    if hasattr(model, "vision_model"):
        model = model.vision_model
    return model


def _backbone_stats(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    proc = path / "preprocessor_config.json"
    if proc.is_file():
        cfg = json.loads(proc.read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return _IMAGENET_MEAN, _IMAGENET_STD


def pyramid_shapes(height: int, width: int, levels: int, stem_stride: int) -> list[tuple[int, int]]:
    """Spatial size of each pyramid level for an ``height × width`` input."""
    if height % stem_stride or width % stem_stride:
        raise ValueError(
            f"appearance encoder: image size {height}x{width} is not divisible by the stem stride {stem_stride}"
        )
    h, w = height // stem_stride, width // stem_stride
    shapes = [(h, w)]
    for _ in range(levels - 1):
        h, w = (h + 1) // 2, (w + 1) // 2  # 3x3 conv, stride 2, padding 1
        shapes.append((h, w))
    return shapes


class AppearanceEncoder(nn.Module):
    """Conv pyramid (+ optional local vision backbone) → one token sequence ``(B, N, token_dim)``.

    Args:
        image_size: ``(H, W)`` the encoder is built for (positional codes are precomputed).
        channels: channels of each pyramid level (its length is the number of levels).
        token_dim: output token width (the UNet's ``cross_attention_dim``; divisible by 4).
        in_channels: 3 (RGB) or 3 + pose channels when the source pose maps are appended.
        stem_stride: the first level's stride (a patchifying conv); each later level halves again.
        norm_groups: GroupNorm groups (must divide every channel count).
        backbone_path: optional local directory of a ``transformers`` vision model.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        channels: Sequence[int],
        token_dim: int,
        *,
        use_pose: bool = False,
        stem_stride: int = 2,
        norm_groups: int = 8,
        backbone_path: str | None = None,
    ) -> None:
        super().__init__()
        if token_dim % 4:
            raise ValueError(f"appearance token_dim must be divisible by 4, got {token_dim}")
        bad = [c for c in channels if c % norm_groups]
        if bad:
            raise ValueError(f"appearance channels {bad} are not divisible by norm_num_groups={norm_groups}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        in_channels = 3 + (POSE_CHANNELS if use_pose else 0)
        self.in_channels = in_channels
        self.shapes = pyramid_shapes(*self.image_size, len(channels), stem_stride)
        self.stem = nn.Conv2d(in_channels, channels[0], kernel_size=stem_stride, stride=stem_stride)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.proj = nn.ModuleList()
        for i, c in enumerate(channels):
            self.blocks.append(
                ResnetBlock2D(in_channels=c, out_channels=c, temb_channels=None, groups=norm_groups)
            )
            self.proj.append(nn.Conv2d(c, token_dim, kernel_size=1))
            if i + 1 < len(channels):
                self.downs.append(
                    Downsample2D(c, use_conv=True, out_channels=channels[i + 1], padding=1, name="op")
                )
        for i, (h, w) in enumerate(self.shapes):
            pos = get_2d_sincos_pos_embed(token_dim, (h, w), base_size=16, output_type="pt").float()
            self.register_buffer(f"pos_{i}", pos, persistent=False)

        self.backbone: nn.Module | None = None
        n_levels = len(channels)
        if backbone_path is not None:
            path = Path(backbone_path)
            self.backbone = load_local_backbone(path)
            self.backbone.requires_grad_(False)
            self.backbone.eval()
            cfg = self.backbone.config
            self.backbone_size = int(getattr(cfg, "image_size", 224))
            self.backbone_proj = nn.Linear(int(cfg.hidden_size), token_dim)
            mean, std = _backbone_stats(path)
            self.register_buffer("bb_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("bb_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
            n_levels += 1
        self.level_embed = nn.Parameter(torch.randn(n_levels, token_dim) * 0.02)
        self.null_embed = nn.Parameter(torch.randn(n_levels, token_dim) * 0.02)
        self.norm = nn.LayerNorm(token_dim)

    @property
    def num_conv_tokens(self) -> int:
        return sum(h * w for h, w in self.shapes)

    def train(self, mode: bool = True) -> AppearanceEncoder:
        super().train(mode)
        if self.backbone is not None:  # frozen: keep dropout etc. off
            self.backbone.eval()
        return self

    def forward(self, source: torch.Tensor, source_maps: torch.Tensor | None = None) -> torch.Tensor:
        """``source`` ``(B, 3, H, W)`` in ``[0, 1]``; ``source_maps`` ``(B, C, H, W)`` when built with pose.

        One sequence: every level's tokens (and the backbone's) concatenated."""
        return torch.cat(self.forward_levels(source, source_maps), dim=1)

    def forward_levels(
        self, source: torch.Tensor, source_maps: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The tokens of each pyramid level ``(B, h_i·w_i, D)`` (finest first), then the backbone's if any.

        Layer-normalised per token, so their concatenation is exactly :meth:`forward`'s sequence."""
        source = source.to(self.stem.weight.device)
        x = source.to(self.stem.weight.dtype) * 2.0 - 1.0
        if self.in_channels > 3:
            if source_maps is None:
                source_maps = x.new_zeros(x.shape[0], self.in_channels - 3, *x.shape[-2:])
            x = torch.cat([x, source_maps.to(x.dtype)], dim=1)
        h = self.stem(x)
        tokens = []
        for i, block in enumerate(self.blocks):
            h = block(h, None)
            t = self.proj[i](h).flatten(2).transpose(1, 2)  # (B, h*w, D)
            tokens.append(t + self.level_embed[i] + getattr(self, f"pos_{i}").to(t.dtype))
            if i < len(self.downs):
                h = self.downs[i](h)
        if self.backbone is not None:
            tokens.append(self._backbone_tokens(source))
        return [self.norm(t) for t in tokens]

    def _backbone_tokens(self, source: torch.Tensor) -> torch.Tensor:
        size = (self.backbone_size, self.backbone_size)
        img = F.interpolate(source.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        img = (img - self.bb_mean) / self.bb_std
        with torch.no_grad():
            feats = self.backbone(
                pixel_values=img.to(next(self.backbone.parameters()).dtype)
            ).last_hidden_state
        return self.backbone_proj(feats.to(self.backbone_proj.weight.dtype)) + self.level_embed[-1]

    def null_levels(self, batch: int, backbone_tokens: int = 0) -> list[torch.Tensor]:
        """Learned "no appearance" tokens laid out like :meth:`forward_levels` (``backbone_tokens``: the
        backbone level's length, when there is one)."""
        parts = [
            self.null_embed[i] + self.level_embed[i] + getattr(self, f"pos_{i}")
            for i in range(len(self.shapes))
        ]
        if self.backbone is not None:
            parts.append((self.null_embed[-1] + self.level_embed[-1]).expand(max(backbone_tokens, 0), -1))
        return [self.norm(p).unsqueeze(0).expand(batch, -1, -1) for p in parts]

    def null_tokens(self, batch: int, num_tokens: int) -> torch.Tensor:
        """Learned "no appearance" tokens ``(batch, num_tokens, D)`` with the same layout as :meth:`forward`."""
        parts = [
            self.null_embed[i] + self.level_embed[i] + getattr(self, f"pos_{i}")
            for i in range(len(self.shapes))
        ]
        n_conv = self.num_conv_tokens
        if self.backbone is not None:
            n_bb = num_tokens - n_conv
            parts.append((self.null_embed[-1] + self.level_embed[-1]).expand(max(n_bb, 0), -1))
        null = torch.cat(parts, dim=0)
        if null.shape[0] != num_tokens:
            raise ValueError(
                f"appearance tokens have length {num_tokens} but this encoder produces {null.shape[0]} "
                f"(image size {self.image_size}); were they computed by a different model?"
            )
        return self.norm(null).unsqueeze(0).expand(batch, -1, -1)


__all__ = ["AppearanceEncoder", "BackboneNotFoundError", "load_local_backbone", "pyramid_shapes"]
