"""The pose judge's network (:class:`PoseJudge`) and its estimator surface (:class:`PoseJudgeEstimator`,
which also loads the shipped judge)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from PIL import Image
from torch import nn

from posereid.experiments.quality.judge.heatmaps import decode_heatmaps
from posereid.models.checkpoint import CONFIG_NAME, CheckpointMixin
from posereid.models.pose import NUM_KEYPOINTS, drop_outside, resize_keypoints

#: where the shipped judge lives (``config.json`` + safetensors + ``training.json``)
DEFAULT_JUDGE_DIR = Path(__file__).resolve().parents[3] / "assets" / "pose-judge"


def resize_to_height(images: torch.Tensor, height: int) -> torch.Tensor:
    """``(B, 3, H, W)`` images resized to ``height`` rows, aspect kept (bilinear, antialiased when
    shrinking); ``height`` 0 or equal to H returns them unchanged."""
    h, w = images.shape[-2:]
    if not height or height == h:
        return images
    size = (int(height), max(1, round(w * height / h)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=height < h)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class PoseJudge(CheckpointMixin, ModelMixin, ConfigMixin):
    """A small heatmap network for COCO-18 keypoints of one person per image (weights and config only).

    Encoder: three stride-2 stages (1/2, 1/4, 1/8) of residual blocks, a global-context vector (the
    mean of the 1/8 features through a 1x1 conv, added back everywhere: which way the person faces
    decides left from right), then a decoder that upsamples with skip connections to 1/``output_stride``
    and a head with one logit map per joint.

    Args:
        channels: widths of the 1/2, 1/4 and 1/8 stages.
        blocks: residual blocks per stage.
        output_stride: 2 or 4 (heatmap resolution relative to the input).
        sigma: width of the training target Gaussians, as a fraction of the input height.
        presence_threshold: a joint whose heatmap peak (a probability) is below this is missing (-1).
        min_joints: a person is found when at least this many joints are present; otherwise every joint
            is -1 (1 = the ``no_person`` rule of :func:`~posereid.experiments.quality.metrics.pose_fidelity`).
        input_height: the working height: every image is resized to it (aspect kept, width padded to a
            multiple of 8) before the network and the keypoints are mapped back, so 64x32 and 128x64
            images are judged alike (PCKh's tolerance scales with the person) and the network stays
            cheap; 0 = judge each image at its own size (then H and W must be divisible by 8).
    """

    @register_to_config
    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] = (1, 1, 2),
        output_stride: int = 2,
        sigma: float = 0.025,
        presence_threshold: float = 0.3,
        min_joints: int = 1,
        input_height: int = 64,
    ) -> None:
        super().__init__()
        if len(channels) != 3 or len(blocks) != 3:
            raise ValueError(f"channels and blocks need 3 entries, got {channels} and {blocks}")
        if output_stride not in (2, 4):
            raise ValueError(f"output_stride must be 2 or 4, got {output_stride}")
        c1, c2, c3 = (int(c) for c in channels)
        self.stage1 = nn.Sequential(_conv_bn(3, c1, 2), *[_ResBlock(c1) for _ in range(blocks[0])])
        self.stage2 = nn.Sequential(_conv_bn(c1, c2, 2), *[_ResBlock(c2) for _ in range(blocks[1])])
        self.stage3 = nn.Sequential(_conv_bn(c2, c3, 2), *[_ResBlock(c3) for _ in range(blocks[2])])
        self.context = nn.Conv2d(c3, c3, 1)
        self.up2 = nn.Sequential(_conv_bn(c3 + c2, c2), _ResBlock(c2))
        self.up1 = _conv_bn(c2 + c1, c1) if output_stride == 2 else None
        cout = c1 if output_stride == 2 else c2
        self.head = nn.Sequential(_conv_bn(cout, cout), nn.Conv2d(cout, NUM_KEYPOINTS, 1))
        nn.init.constant_(self.head[-1].bias, -2.19)  # CenterNet's prior: sigmoid = 0.1 at the start

    @property
    def stride(self) -> int:
        return int(self.config.output_stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Heatmap logits ``(B, 18, H/s, W/s)`` of ``[0, 1]`` images ``(B, 3, H, W)`` (H, W divisible by 8)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"image height and width must be divisible by 8, got {h}x{w}")
        x = (images - 0.45) / 0.25
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        f3 = F.relu(f3 + self.context(f3.mean((2, 3), keepdim=True)))
        y = self.up2(torch.cat([F.interpolate(f3, size=f2.shape[-2:], mode="bilinear"), f2], 1))
        if self.up1 is not None:
            y = self.up1(torch.cat([F.interpolate(y, size=f1.shape[-2:], mode="bilinear"), f1], 1))
        return self.head(y)

    def working_size(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` resized to ``input_height`` rows (aspect kept; bilinear, antialiased when shrinking)."""
        return resize_to_height(images, int(self.config.input_height))

    @torch.no_grad()
    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """Globally averaged stage-3 (1/8 resolution) features ``(B, channels[2])`` of ``[0, 1]`` images
        ``(B, 3, H, W)`` of any size, prepared as :meth:`predict` prepares them (resized to
        ``input_height`` rows, padded to a multiple of 8): a feature space for Fréchet distances."""
        x = self.working_size(images.to(self.device, torch.float32))
        ph, pw = (-x.shape[-2]) % 8, (-x.shape[-1]) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        f3 = self.stage3(self.stage2(self.stage1((x - 0.45) / 0.25)))
        return f3.mean((2, 3)).float()

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, *, threshold: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints ``(B, 18, 2)`` float32 (x, y; -1 missing) and peak scores ``(B, 18)`` of ``[0, 1]``
        images ``(B, 3, H, W)`` of any size (resized to ``input_height`` rows, padded to a multiple of 8)."""
        images = images.to(self.device, torch.float32)
        h, w = images.shape[-2:]
        cfg = self.config
        x = self.working_size(images)
        xh, xw = x.shape[-2:]
        ph, pw = (-xh) % 8, (-xw) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        heat = torch.sigmoid(self(x).float())
        kps, scores = decode_heatmaps(
            heat,
            stride=self.stride,
            image_hw=(xh, xw),
            threshold=float(cfg.presence_threshold if threshold is None else threshold),
            min_joints=int(cfg.min_joints),
        )
        if (xh, xw) != (h, w):
            kps = drop_outside(resize_keypoints(kps, (xh, xw), (h, w)), h, w)
        return kps, scores


class PoseJudgeEstimator:
    """The judge behind the call surface of :class:`~posereid.models.pose_estimation.PoseEstimator`.

    Usage::

        with PoseJudgeEstimator.from_pretrained() as est:   # the shipped judge
            kps = est(image)            # (18, 2) float32 (x, y), all -1 when no person is found
            many = est.detect(images)   # (N, 3, H, W) [0, 1] tensor → (N, 18, 2), batched

    ``description`` names the judge for reports.
    """

    def __init__(
        self,
        judge: PoseJudge,
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 256,
        threshold: float | None = None,
        source: str = "",
    ) -> None:
        self.judge = judge.to(device).eval()
        self.batch_size, self.threshold, self.source = int(batch_size), threshold, source

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str] | None = None, *, device: torch.device | str = "cpu", **kwargs: Any
    ) -> PoseJudgeEstimator:
        """Load a judge directory (default: the shipped :data:`DEFAULT_JUDGE_DIR`)."""
        directory = Path(path).expanduser() if path is not None else DEFAULT_JUDGE_DIR
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"{directory}: no pose judge here (expected {CONFIG_NAME} + safetensors); train one with "
                f"`posereid pose-judge train --out {directory}`"
            )
        return cls(PoseJudge.from_pretrained(directory), device=device, source=str(directory), **kwargs)

    @property
    def description(self) -> str:
        where = f" from {self.source}" if self.source else ""
        return f"pose judge (COCO-18 heatmap network trained on synthetic renders{where})"

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> np.ndarray:
        """``(N, 18, 2)`` keypoints of ``(N, 3, H, W)`` float ``[0, 1]`` (or uint8) images."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        out = [
            self.judge.predict(images[i : i + self.batch_size].clamp(0, 1), threshold=self.threshold)[0]
            for i in range(0, images.shape[0], self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, NUM_KEYPOINTS, 2), np.float32)

    def __call__(self, image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
        """``(18, 2)`` keypoints of one image (PIL, uint8 ``HxWx3`` numpy, or a ``(3, H, W)`` tensor)."""
        from posereid.models.pose_estimation import _as_rgb_array

        arr = _as_rgb_array(image)
        return self.detect(torch.from_numpy(arr).permute(2, 0, 1)[None])[0]

    def batch(self, images: Iterable[Image.Image | np.ndarray | torch.Tensor]) -> np.ndarray:
        """``(N, 18, 2)`` keypoints for a sequence of images (or a ``(N, 3, H, W)`` tensor)."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            return self.detect(images)
        out = [self(im) for im in images]
        return np.stack(out) if out else np.zeros((0, NUM_KEYPOINTS, 2), dtype=np.float32)

    def close(self) -> None:
        """Nothing to release (kept for the estimator surface)."""

    def __enter__(self) -> PoseJudgeEstimator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DEFAULT_JUDGE_DIR", "PoseJudge", "PoseJudgeEstimator", "resize_to_height"]
