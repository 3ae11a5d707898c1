"""The pose judge for synthetic people: a small keypoint network trained on renderer output.

mediapipe finds nobody in many real 64x32 synthetic images, so it cannot judge how well a generator
follows the pose on synthetic data (the ceiling reads far below 1). The renderer
(:func:`~posereid.experiments.synthetic.people.render_person`) knows every keypoint, so labelled images
are unlimited: :class:`PoseJudge` is a small fully-convolutional heatmap network (COCO-18, one channel per
joint) trained on renderer output drawn on the fly at 64x32 and 128x64, with degradations (blur,
resampling, noise, JPEG, colour) so generator outputs do not throw it off. mediapipe stays the judge
for real photos.

Pieces:

* :class:`PoseJudge` — the network (diffusers ``ModelMixin``/``ConfigMixin``: ``config.json`` +
  ``diffusion_pytorch_model.safetensors``, ``save_pretrained`` / ``from_pretrained(dir)``). Input
  ``(B, 3, H, W)`` in ``[0, 1]`` with H and W divisible by 8; output heatmap logits at 1/``output_stride``
  resolution. :meth:`PoseJudge.predict` decodes keypoints (:func:`decode_heatmaps`).
* :class:`PoseJudgeEstimator` — the call surface of the mediapipe
  :class:`~posereid.models.pose_estimation.PoseEstimator` (``est(uint8 HxWx3) → (18, 2)``, ``batch``,
  ``close``, context manager) plus a batched :meth:`~PoseJudgeEstimator.detect` of ``(N, 3, H, W)``
  tensors, so :class:`~posereid.experiments.quality.scoring.QualityScorer` can take either.
* :func:`train_judge` — Adam on renderer batches from seeds ``>= 10**6`` (disjoint from every
  ``synth-market`` / demo / test dataset, which use small seeds), deterministic in ``seed``.
* :func:`evaluate_judge` — PCKh@0.5 and the share of people found on held-out renders (another seed,
  as ``synth-market`` writes them: JPEG quality 95), at 64x32 and 128x64; also blurred renders,
  person-free backgrounds (false finds) and, optionally, the real target images of a dataset's
  evaluation pairs (what ``evaluate-generator`` scores as its ceiling).

**Found**: a person is found when at least ``min_joints`` joints are predicted (config, default 1) —
the same rule as ``no_person`` in :func:`~posereid.experiments.quality.metrics.pose_fidelity`, which
counts an image as "no person" when every joint is ``-1``. PCKh is that function's (head length = twice
the neck-to-nose distance, else half the torso).

Commands: ``python -m posereid.experiments.quality.judge train --out DIR --minutes M`` and
``... evaluate --judge DIR --out REPORT_DIR`` (:mod:`~posereid.experiments.quality.judge_cli`).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from PIL import Image, ImageFilter
from torch import nn
from tqdm.auto import tqdm

from posereid.experiments.quality.metrics import pose_fidelity
from posereid.experiments.synthetic.params import (
    Camera,
    sample_camera,
    sample_identity,
    sample_pose,
)
from posereid.experiments.synthetic.people import render_background, render_person
from posereid.models.checkpoint import (
    CONFIG_NAME,
    CheckpointError,
    load_model_weights,
    read_json,
    save_model,
)
from posereid.models.io_utils import atomic_write
from posereid.models.pose import (
    NUM_KEYPOINTS,
    as_keypoints,
    drop_outside,
    flip_keypoints,
    render_pose_maps,
    resize_keypoints,
    visible_mask,
)

logger = logging.getLogger(__name__)

#: Seeds of the judge's own renders. ``synth-market``, the demo and the tests use small seeds (0, 1, 2,
#: ...) and draw from ``default_rng([seed, tag, ...])``; the judge's streams start at 10**6 and carry
#: their own tags, so no judge image shares an identity, pose or camera stream with a dataset.
TRAIN_SEED = 1_000_000
EVAL_SEED = 2_000_000
_TRAIN_TAG, _EVAL_TAG = 0x7A1, 0xE7A
MIN_JUDGE_SEED = 1_000_000

SIZES: tuple[tuple[int, int], ...] = ((64, 32), (128, 64))
TRAINING_NAME = "training.json"
REPORT_JSON, REPORT_MD = "judge_report.json", "judge_report.md"
#: where the shipped judge lives (``config.json`` + safetensors + ``training.json`` + its report)
DEFAULT_JUDGE_DIR = Path(__file__).resolve().parents[3] / "assets" / "pose-judge"
#: the acceptance bar of the held-out renders (issue 11): PCKh@0.5 and share of people found
TARGET_PCKH, TARGET_FOUND = 0.95, 0.98
SYNTH_JPEG_QUALITY = 95  # MarketWriter's default: what synth-market images go through


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------
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


class PoseJudge(ModelMixin, ConfigMixin):
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

    config_name = CONFIG_NAME

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

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:  # type: ignore[override]
        """Write ``config.json`` + ``diffusion_pytorch_model.safetensors``, each atomically."""
        directory = Path(save_directory)
        save_model(self, directory)
        with atomic_write(directory / CONFIG_NAME) as fh:
            fh.write(self.to_json_string())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str]) -> PoseJudge:  # type: ignore[override]
        """Load a local directory written by :meth:`save_pretrained` (in eval mode)."""
        directory = Path(pretrained_model_name_or_path)
        cfg_path = directory / CONFIG_NAME
        config = read_json(cfg_path)
        name = config.get("_class_name", cls.__name__)
        if name != cls.__name__:
            raise CheckpointError(f"{cfg_path}: is a {name} checkpoint, not {cls.__name__}")
        try:
            model = cls.from_config(config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{cfg_path}: invalid judge config ({err})") from err
        load_model_weights(model, directory, use_ema=False)
        return model.eval()


# --------------------------------------------------------------------------------------------------
# Heatmaps: targets, loss, decoding
# --------------------------------------------------------------------------------------------------
def to_heatmap_coords(kps: np.ndarray, stride: int) -> np.ndarray:
    """Input-pixel keypoints → heatmap-pixel keypoints (pixel centres aligned; missing stay -1)."""
    k = as_keypoints(kps)
    return np.where(visible_mask(k)[..., None], (k + 0.5) / stride - 0.5, -1.0).astype(np.float32)


def keypoint_heatmaps(kps: np.ndarray, image_hw: tuple[int, int], stride: int, sigma: float) -> torch.Tensor:
    """Training targets ``(B, 18, H/s, W/s)``: a Gaussian of width ``sigma · H`` input pixels per visible
    joint whose nearest heatmap pixel is exactly 1 (the positive of the focal loss); missing joints give
    empty maps."""
    h, w = image_hw[0] // stride, image_hw[1] // stride
    k = to_heatmap_coords(kps, stride)
    sig = max(0.5, sigma * image_hw[0] / stride)
    heat = render_pose_maps(k, h, w, sigma=sig, limbs=False)
    vis = visible_mask(k)
    b, j = np.nonzero(vis)
    if len(b):
        px = np.clip(np.rint(k[b, j, 0]), 0, w - 1).astype(np.int64)
        py = np.clip(np.rint(k[b, j, 1]), 0, h - 1).astype(np.int64)
        heat[b, j, py, px] = 1.0
    return heat


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (α = 2, β = 4), summed and divided by the positives."""
    pos = target.eq(1).float()
    logp, log1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = logp.exp()
    pos_loss = (logp * (1 - p) ** 2 * pos).sum()
    neg_loss = (log1mp * p**2 * (1 - target) ** 4 * (1 - pos)).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp_min(1.0)


def decode_heatmaps(
    heat: torch.Tensor,
    *,
    stride: int,
    image_hw: tuple[int, int],
    threshold: float,
    min_joints: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints from heatmaps ``(B, 18, h, w)`` of probabilities.

    Each joint is the arg-max pixel refined to sub-pixel precision by a parabola through the log values
    of its neighbours (exact for a Gaussian peak; at most half a pixel each way), mapped back to input
    pixels (pixel centres aligned, ``x = (u + 0.5)·stride - 0.5``) and clamped into the image. A joint
    whose peak is below ``threshold`` is missing; an image with fewer than ``min_joints`` joints has none.

    Returns:
        ``(B, 18, 2)`` float32 keypoints and ``(B, 18)`` float32 peak values.
    """
    if heat.ndim != 4 or heat.shape[1] != NUM_KEYPOINTS:
        raise ValueError(f"expected (B, {NUM_KEYPOINTS}, h, w) heatmaps, got {tuple(heat.shape)}")
    heat = heat.detach().float().cpu()
    b, j, h, w = heat.shape
    score, idx = heat.reshape(b, j, -1).max(-1)
    py, px = idx // w, idx % w
    logh = F.pad(heat.clamp_min(1e-6).log(), (1, 1, 1, 1), mode="replicate")
    bi = torch.arange(b)[:, None].expand(b, j)
    ji = torch.arange(j)[None].expand(b, j)

    def at(dy: int, dx: int) -> torch.Tensor:
        return logh[bi, ji, py + 1 + dy, px + 1 + dx]

    c = at(0, 0)

    def offset(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        curv = lo - 2 * c + hi
        off = torch.where(curv < -1e-6, (lo - hi) / (2 * curv.clamp(max=-1e-6)), torch.zeros_like(c))
        return off.clamp(-0.5, 0.5)

    x = px.float() + offset(at(0, -1), at(0, 1))
    y = py.float() + offset(at(-1, 0), at(1, 0))
    xy = torch.stack([(x + 0.5) * stride - 0.5, (y + 0.5) * stride - 0.5], -1).numpy()
    xy[..., 0] = np.clip(xy[..., 0], 0, image_hw[1] - 1)
    xy[..., 1] = np.clip(xy[..., 1], 0, image_hw[0] - 1)
    score_np = score.numpy().astype(np.float32)
    present = score_np >= threshold
    present &= (present.sum(-1) >= max(1, min_joints))[:, None]
    xy[~present] = -1.0
    return xy.astype(np.float32), score_np


# --------------------------------------------------------------------------------------------------
# The estimator surface (what QualityScorer calls)
# --------------------------------------------------------------------------------------------------
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
                f"`python -m posereid.experiments.quality.judge train --out {directory}`"
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


# --------------------------------------------------------------------------------------------------
# Renders: training batches and held-out sets
# --------------------------------------------------------------------------------------------------
def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def degrade(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random degradations of a uint8 ``HxWx3`` image, like a generator's output: Gaussian blur,
    down-and-up resampling, colour jitter, low-frequency blotches, noise and JPEG (each with some chance;
    ``strength`` scales the chances and amounts, 0 = none)."""
    if strength <= 0:
        return img
    h, w = img.shape[:2]
    u = rng.random(8)
    s = strength
    im = Image.fromarray(img)
    if u[0] < 0.5 * s:  # down and up again (generators at low resolution)
        f = 1 + rng.uniform(0.3, 1.5) * s
        small = (max(4, round(w / f)), max(8, round(h / f)))
        im = im.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
    if u[1] < 0.6 * s:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.6) * s * h / 128))
    x = np.asarray(im, dtype=np.float32)
    if u[2] < 0.6 * s:  # brightness, contrast, saturation
        mean = x.mean((0, 1), keepdims=True)
        grey = x.mean(2, keepdims=True)
        x = grey + (x - grey) * rng.uniform(1 - 0.5 * s, 1 + 0.5 * s)
        x = mean + (x - mean) * rng.uniform(1 - 0.3 * s, 1 + 0.3 * s)
        x = x * rng.uniform(1 - 0.25 * s, 1 + 0.25 * s) + rng.normal(0, 8 * s, 3)
    if u[3] < 0.3 * s:  # low-frequency colour blotches
        blot = rng.normal(0, 1, (4, 2, 3)).astype(np.float32)
        blot = np.asarray(
            torch.nn.functional.interpolate(
                torch.from_numpy(blot).permute(2, 0, 1)[None],
                size=(h, w),
                mode="bicubic",
                align_corners=False,
            )[0].permute(1, 2, 0)
        )
        x = x + blot * rng.uniform(4, 20) * s
    if u[4] < 0.5 * s:
        x = x + rng.normal(0, rng.uniform(1, 10) * s, x.shape)
    out = np.clip(x, 0, 255).astype(np.uint8)
    if u[5] < 0.4 * s:
        out = _jpeg(out, int(rng.integers(25, 96)))
    return out


def _person(
    rng: np.random.Generator,
    camera: Camera,
    hw: tuple[int, int],
    *,
    kind: str = "person",
    widen: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One render as ``synth-market`` makes them (``kind`` person / partial / junk / background)."""
    h, w = hw
    if kind == "background":
        return render_background(camera, height=h, width=w, rng=rng), np.full(
            (NUM_KEYPOINTS, 2), -1.0, np.float32
        )
    idn, pose = sample_identity(rng), sample_pose(rng)
    if kind == "partial":  # a badly cropped distractor, as dataset.plan_synthetic draws them
        pose = dataclasses.replace(
            pose,
            scale=float(rng.uniform(1.2, 2.0)),
            dx=float(rng.choice([-1, 1]) * rng.uniform(0.25, 0.5)),
            dy=float(rng.uniform(-0.5, 0.3)),
        )
    elif kind == "junk":  # just the feet of a passer-by
        pose = dataclasses.replace(pose, dy=float(rng.uniform(-0.75, -0.6)))
    elif widen:  # a little outside the renderer's usual framing: generators misplace people
        pose = dataclasses.replace(
            pose,
            scale=float(rng.uniform(0.7, 1.12)),
            dx=float(rng.uniform(-0.15, 0.15)),
            dy=float(rng.uniform(-0.06, 0.06)),
            yaw=float(rng.uniform(-30, 30)),
        )
    return render_person(idn, pose, camera, height=h, width=w, rng=rng)


def training_batch(
    rng: np.random.Generator,
    n: int,
    hw: tuple[int, int],
    cameras: Sequence[Camera],
    *,
    augment: float = 1.0,
) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` fresh renders ``(n, 3, H, W)`` in ``[0, 1]`` and their keypoints ``(n, 18, 2)``.

    Mix: 82 % people (a third of them framed more loosely), 10 % cropped distractors, 4 % feet only, 4 %
    backgrounds; half are mirrored (with the left/right swap), and ``degrade`` runs at ``augment``.
    """
    imgs = np.empty((n, hw[0], hw[1], 3), np.uint8)
    kps = np.empty((n, NUM_KEYPOINTS, 2), np.float32)
    for i in range(n):
        r = rng.random()
        kind = "person" if r < 0.82 else "partial" if r < 0.92 else "junk" if r < 0.96 else "background"
        cam = cameras[int(rng.integers(len(cameras)))]
        img, kp = _person(rng, cam, hw, kind=kind, widen=rng.random() < 0.33)
        if rng.random() < 0.5:
            img, kp = img[:, ::-1], flip_keypoints(kp, hw[1])
        imgs[i] = degrade(np.ascontiguousarray(img), rng, augment)
        kps[i] = kp
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255.0), kps


def heldout_people(
    n: int, hw: tuple[int, int], *, seed: int = EVAL_SEED, jpeg_quality: int | None = SYNTH_JPEG_QUALITY
) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` held-out people rendered as ``synth-market`` writes them (fresh identity, any view, a camera
    of a pool of 6 per 24 people, JPEG at quality 95), and their exact keypoints. The same seed and size
    give the same images."""
    rng = np.random.default_rng([seed, _EVAL_TAG, hw[0], hw[1]])
    imgs = np.empty((n, hw[0], hw[1], 3), np.uint8)
    kps = np.empty((n, NUM_KEYPOINTS, 2), np.float32)
    cams: list[Camera] = []
    for i in range(n):
        if i % 24 == 0:
            cams = [sample_camera(rng, c) for c in range(6)]
        img, kp = _person(rng, cams[int(rng.integers(6))], hw)
        imgs[i] = _jpeg(img, jpeg_quality) if jpeg_quality else img
        kps[i] = kp
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255.0), kps


def heldout_backgrounds(n: int, hw: tuple[int, int], *, seed: int = EVAL_SEED) -> torch.Tensor:
    """``n`` person-free held-out images (for the false-find rate)."""
    rng = np.random.default_rng([seed, _EVAL_TAG, 0xB6, hw[0], hw[1]])
    out = np.empty((n, hw[0], hw[1], 3), np.uint8)
    for i in range(n):
        out[i] = _jpeg(render_background(sample_camera(rng, 0), height=hw[0], width=hw[1], rng=rng), 95)
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)


def blur_images(
    images: torch.Tensor, sigma_at_128: float = 1.0, noise: float = 3.0, seed: int = 0
) -> torch.Tensor:
    """A fixed "generator-like" degradation for the robustness row: Gaussian blur (σ in pixels at 128
    rows, scaled with the height) plus Gaussian noise (grey levels)."""
    h = images.shape[-2]
    sigma = sigma_at_128 * h / 128
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = images.reshape(-1, 1, *images.shape[-2:])
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    g = torch.Generator().manual_seed(seed)
    x = x.reshape(images.shape) + torch.randn(images.shape, generator=g) * noise / 255
    return x.clamp(0, 1)


# --------------------------------------------------------------------------------------------------
# Metrics and evaluation
# --------------------------------------------------------------------------------------------------
def judge_metrics(pred: np.ndarray, target: np.ndarray, *, alpha: float = 0.5) -> dict[str, float]:
    """PCKh@``alpha`` (:func:`~posereid.experiments.quality.metrics.pose_fidelity`) and the share of people
    found: images whose target shows at least one joint and where at least one joint was predicted."""
    pred, target = as_keypoints(pred), as_keypoints(target)
    m = pose_fidelity(pred, target, alpha=alpha)
    people = visible_mask(target).any(-1)
    found = visible_mask(pred).any(-1)
    n_people = int(people.sum())
    return {
        "pckh": m["pckh"],
        "pckh_found": m["pckh_found"],
        "found_rate": float(found[people].mean()) if n_people else float("nan"),
        "joint_error_px": m["joint_error_px"],
        "n_images": int(len(pred)),
        "n_people": n_people,
        "n_joints": m["n_joints"],
        "no_person": int((people & ~found).sum()),
    }


Predictor = Callable[[torch.Tensor], np.ndarray]


def _as_predictor(judge: Any) -> tuple[Predictor, str]:
    if isinstance(judge, PoseJudge):
        judge = PoseJudgeEstimator(judge, device=judge.device)
    name = getattr(judge, "description", getattr(judge, "__name__", type(judge).__name__))
    if hasattr(judge, "detect"):
        return judge.detect, name
    if callable(judge):
        return judge, name
    raise TypeError(
        f"expected a PoseJudge, PoseJudgeEstimator or images → keypoints callable, got {type(judge)}"
    )


def evaluate_judge(
    judge: PoseJudge | PoseJudgeEstimator | Predictor,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    n_images: int = 512,
    sizes: Sequence[tuple[int, int]] = SIZES,
    seed: int = EVAL_SEED,
    robustness: bool = True,
    data: str | os.PathLike[str] | None = None,
    data_pairs: int | None = 200,
    data_seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """PCKh@0.5 and the share of people found on held-out renders at each size; report to ``out_dir``.

    Rows per size: ``people`` (:func:`heldout_people`: the acceptance set), with ``robustness`` also
    ``people, blurred`` (:func:`blur_images`) and ``backgrounds`` (``false_find_rate``: person-free
    images where someone was found). With ``data`` (a Market-format folder with its test annotations and
    pairs), also the real target images of ``evaluate-generator``'s pairs (``data_pairs`` drawn with
    ``data_seed``, the same draw as ``evaluate-generator --n-pairs --seed``) at each size.

    Returns:
        ``{"rows": [{"set", "size", metrics...}], "acceptance": {...}, "config": {...}}``; with
        ``out_dir``, also written as :data:`REPORT_JSON` and :data:`REPORT_MD`.
    """
    if seed < MIN_JUDGE_SEED:
        raise ValueError(
            f"evaluation seed must be >= {MIN_JUDGE_SEED} (disjoint from the datasets), got {seed}"
        )
    predict, name = _as_predictor(judge)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for hw in sizes:
        hw = (int(hw[0]), int(hw[1]))
        size = f"{hw[0]}x{hw[1]}"
        images, kps = heldout_people(n_images, hw, seed=seed)
        t = time.perf_counter()
        pred = predict(images)
        rows.append({"set": "people", "size": size, **judge_metrics(pred, kps),
                     "ms_per_image": 1000 * (time.perf_counter() - t) / max(1, n_images)})  # fmt: skip
        if robustness:
            rows.append({"set": "people, blurred", "size": size,
                         **judge_metrics(predict(blur_images(images, seed=seed)), kps)})  # fmt: skip
            bg = heldout_backgrounds(max(16, n_images // 4), hw, seed=seed)
            found = visible_mask(as_keypoints(predict(bg))).any(-1)
            rows.append({"set": "backgrounds", "size": size, "n_images": int(len(bg)),
                         "false_find_rate": float(found.mean())})  # fmt: skip
        if data is not None:
            from posereid.experiments.quality.pairs import load_eval_pairs

            pairs = load_eval_pairs(data, hw, n_pairs=data_pairs, seed=data_seed)
            rows.append({"set": f"data targets ({Path(data).name})", "size": size,
                         **judge_metrics(predict(pairs.target), pairs.target_kps)})  # fmt: skip
    people = [r for r in rows if r["set"] == "people"]
    acceptance = {
        r["size"]: {
            "pckh": r["pckh"],
            "found_rate": r["found_rate"],
            "pass": bool(r["pckh"] >= TARGET_PCKH and r["found_rate"] >= TARGET_FOUND),
        }
        for r in people
    }
    result = {
        "rows": rows,
        "acceptance": {
            "target_pckh": TARGET_PCKH,
            "target_found": TARGET_FOUND,
            "sizes": acceptance,
            "pass": bool(people) and all(a["pass"] for a in acceptance.values()),
        },  # fmt: skip
        "config": {
            "n_images": n_images,
            "seed": seed,
            "sizes": [list(s) for s in sizes],
            "data": None if data is None else str(data),
            "data_pairs": data_pairs,
            "data_seed": data_seed,
            "seconds": round(time.perf_counter() - t0, 1),
            "judge": name,
            **(extra or {}),
        },  # fmt: skip
    }
    if out_dir is not None:
        write_judge_report(result, out_dir)
    return result


def render_judge_markdown(result: dict[str, Any]) -> str:
    """The report of :func:`evaluate_judge` as markdown."""
    cfg, acc = result["config"], result["acceptance"]

    def f(v: Any, pct: bool = False) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "–"
        return f"{100 * v:.1f} %" if pct else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [
        "# Pose judge: held-out synthetic people",
        "",
        f"Judge: {cfg['judge']}. Held-out renders: {cfg['n_images']} people per size from seed {cfg['seed']} "
        "(identities, poses and cameras disjoint from training and from every synth-market dataset), "
        f"JPEG quality {SYNTH_JPEG_QUALITY} like synth-market.",
        "",
        "| set | size | PCKh@0.5 | people found | PCKh (found) | joint error px | images | false finds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['set']} | {r['size']} | {f(r.get('pckh'))} | {f(r.get('found_rate'), True)} | "
            f"{f(r.get('pckh_found'))} | {f(r.get('joint_error_px'))} | {r.get('n_images', '–')} | "
            f"{f(r.get('false_find_rate'), True)} |"
        )
    lines += [
        "",
        f"Acceptance (people rows): PCKh@0.5 >= {acc['target_pckh']} and found >= {100 * acc['target_found']:.0f} % "
        f"at every size: **{'pass' if acc['pass'] else 'not yet'}** "
        + ", ".join(f"{k}: {'pass' if v['pass'] else 'fail'}" for k, v in acc["sizes"].items()),
        "",
        "A person is found when at least one joint is predicted (the `no_person` rule of "
        "`quality.metrics.pose_fidelity`); PCKh counts every joint visible in the target, a joint not "
        "predicted is wrong. 'people, blurred': the same images with Gaussian blur (σ 1 px at 128 rows) "
        "and noise (σ 3 grey levels). 'backgrounds': person-free images, share where someone was found.",
    ]
    return "\n".join(lines) + "\n"


def write_judge_report(result: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / REPORT_JSON, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, default=float)
    with atomic_write(out / REPORT_MD, "w", encoding="utf-8") as fh:
        fh.write(render_judge_markdown(result))
    return {"json": str(out / REPORT_JSON), "md": str(out / REPORT_MD)}


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class JudgeTrainConfig:
    """What :func:`train_judge` does.

    Args:
        steps: optimisation steps; ``None`` = as many as fit ``minutes`` (at least 200; timed on steps
            10-40, inside the warm-up, then fixed, so ``--steps N`` with the recorded count reproduces
            the run exactly).
        minutes: wall-clock budget when ``steps`` is None (also a hard stop at 1.2x).
        batch_size: images per step (each step is one size; sizes alternate).
        lr: Adam learning rate (:func:`_lr_factor`: 50 warm-up steps, cosine decay to 2 %).
        sizes: training image sizes ``(H, W)``.
        seed: seed of the weights and of the render stream (>= 10**6: disjoint from every dataset).
        camera_pool / pool_steps: cameras in use, renewed every ``pool_steps`` steps.
        augment: strength of :func:`degrade` (0 = clean renders).
        eval_images: held-out people per size for the final report (0 = no report).
        workers: 1 = render in a ``DataLoader`` worker beside training, 0 = in this process (same batches).
        log_every: steps per point of the loss curve.
        model: :class:`PoseJudge` arguments.
    """

    steps: int | None = None
    minutes: float = 10.0
    batch_size: int = 32
    lr: float = 3e-3
    sizes: tuple[tuple[int, int], ...] = SIZES
    seed: int = TRAIN_SEED
    camera_pool: int = 12
    pool_steps: int = 8
    augment: float = 1.0
    eval_images: int = 256
    grad_clip: float = 5.0
    workers: int = 1
    log_every: int = 25
    model: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.seed < MIN_JUDGE_SEED:
            raise ValueError(
                f"seed must be >= {MIN_JUDGE_SEED} (disjoint from every dataset), got {self.seed}"
            )
        if self.workers not in (0, 1):
            raise ValueError(f"workers must be 0 or 1 (one ordered render stream), got {self.workers}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.steps is None and not self.minutes > 0:
            raise ValueError(f"minutes must be > 0 when steps is not given, got {self.minutes}")
        for h, w in self.sizes:
            if h % 8 or w % 8:
                raise ValueError(f"training sizes must be divisible by 8, got {h}x{w}")
        height = int(self.model.get("input_height", 64))
        for h, w in self.sizes if height else ():
            if (w * height) % (8 * h):
                raise ValueError(f"training size {h}x{w} at the judge's {height} rows is not divisible by 8")


WARMUP_STEPS = 50


def _lr_factor(step: int, total: int | None) -> float:
    """Linear warm-up over :data:`WARMUP_STEPS` (a quarter of a run shorter than 200 steps), then cosine
    decay to 2 %. The warm-up does not depend on ``total`` (runs of >= 200 steps), so a run whose length
    was set by its time budget is reproduced exactly by ``--steps N``."""
    warm = WARMUP_STEPS if total is None or total >= 4 * WARMUP_STEPS else max(1, total // 4)
    if step < warm or total is None:
        return min(1.0, (step + 1) / warm)
    t = (step - warm) / max(1, total - warm)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class JudgeBatches(torch.utils.data.IterableDataset):
    """The endless, seeded stream of training batches: ``(images (B, 3, h, w), targets (B, 18, h/s, w/s))``
    at the judge's working size. Batch ``i`` is rendered at ``sizes[i % len(sizes)]``; the camera pool
    is renewed every ``pool_steps`` batches. One stream per seed whatever runs it (the main process or one
    ``DataLoader`` worker), so training is deterministic."""

    def __init__(self, cfg: JudgeTrainConfig, *, input_height: int, stride: int, sigma: float) -> None:
        super().__init__()
        self.cfg, self.input_height, self.stride, self.sigma = cfg, input_height, stride, sigma

    def __iter__(self):
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, _TRAIN_TAG])
        cams: list[Camera] = []
        for i in itertools.count():
            if i % cfg.pool_steps == 0:
                cams = [sample_camera(rng, c) for c in range(cfg.camera_pool)]
            hw = tuple(int(v) for v in cfg.sizes[i % len(cfg.sizes)])
            images, kps = training_batch(rng, cfg.batch_size, hw, cams, augment=cfg.augment)
            images = resize_to_height(images, self.input_height)  # as PoseJudge.predict does
            work = (int(images.shape[-2]), int(images.shape[-1]))
            if work != hw:
                kps = resize_keypoints(kps, hw, work)
            yield images, keypoint_heatmaps(kps, work, self.stride, self.sigma)


def _reproduce_command(cfg: JudgeTrainConfig, steps: int, out_dir: Any) -> str:
    parts = [
        "python -m posereid.experiments.quality.judge train",
        f"--out {out_dir if out_dir is not None else 'DIR'}",
        f"--steps {steps} --seed {cfg.seed} --batch-size {cfg.batch_size} --lr {cfg.lr:g}",
        "--sizes " + " ".join(f"{h}x{w}" for h, w in cfg.sizes),
        f"--augment {cfg.augment:g} --eval-images {cfg.eval_images}",
    ]
    if "channels" in cfg.model:
        parts.append("--channels " + " ".join(str(c) for c in cfg.model["channels"]))
    return " ".join(parts)


def train_judge(
    out_dir: str | os.PathLike[str] | None,
    config: JudgeTrainConfig | None = None,
    *,
    progress: bool = True,
    device: torch.device | str = "cpu",
    command: str | None = None,
) -> tuple[PoseJudge, dict[str, Any]]:
    """Train a :class:`PoseJudge` on fresh renders; save it (+ :data:`TRAINING_NAME` + the report) to ``out_dir``.

    Renders come from :class:`JudgeBatches`, in a ``DataLoader`` worker when ``config.workers`` is 1 (it
    renders the next batch while this process trains; the stream is the same either way).

    Returns:
        ``(judge in eval mode, summary)``; the summary (steps, seconds, loss curve, skipped steps,
        evaluation) is also written to ``out_dir/training.json``.
    """
    cfg = config or JudgeTrainConfig()
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        judge = PoseJudge(**cfg.model)
    judge.to(dev).train()
    stream = JudgeBatches(
        cfg, input_height=int(judge.config.input_height), stride=judge.stride, sigma=float(judge.config.sigma)
    )
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=cfg.workers, prefetch_factor=4 if cfg.workers else None
    )
    opt = torch.optim.Adam(judge.parameters(), lr=cfg.lr)
    total = cfg.steps
    budget = cfg.minutes * 60
    calib_from, calib_to = 10, WARMUP_STEPS - 10  # timed inside the warm-up, whose LR ignores the total
    curve: list[tuple[int, float]] = []
    run_loss, run_n, skipped, step = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    t_calib = t0
    bar = tqdm(total=total, desc="pose judge", unit="step", disable=not progress)
    batches = iter(loader)
    while total is None or step < total:
        images, target = next(batches)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(step, total)
        loss = focal_loss(judge(images.to(dev)), target.to(dev))
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(judge.parameters(), cfg.grad_clip)
            opt.step()
            run_loss, run_n = run_loss + float(loss.detach()), run_n + 1
        else:
            skipped += 1
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == total:
            if run_n:
                curve.append((step, round(run_loss / run_n, 5)))
                bar.set_postfix(loss=f"{run_loss / run_n:.3f}")
            run_loss, run_n = 0.0, 0
        if total is None and step == calib_from:
            t_calib = time.perf_counter()  # the first steps include start-up costs
        if total is None and step == calib_to:
            per_step = (time.perf_counter() - t_calib) / (calib_to - calib_from)
            total = int((budget - (time.perf_counter() - t0)) / per_step) + step
            total = max(total + total % len(cfg.sizes), 4 * WARMUP_STEPS)  # sizes get as many steps
            bar.total = total
            bar.refresh()
            logger.info("pose judge: %.2f s/step, %d steps fit %.1f minutes", per_step, total, cfg.minutes)
        if cfg.steps is None and time.perf_counter() - t0 > 1.2 * budget:
            logger.warning("pose judge: stopped at step %d of %d (1.2x the time budget)", step, total)
            break
    bar.close()
    del batches, loader  # stops the worker
    if run_n:
        curve.append((step, round(run_loss / run_n, 5)))
    seconds = time.perf_counter() - t0
    judge.eval()
    summary: dict[str, Any] = {
        "steps": step,
        "planned_steps": total,
        "truncated": bool(total is not None and step < total),  # hit the 1.2x hard stop: --steps N differs
        "seconds": round(seconds, 1),
        "skipped_non_finite": skipped,
        "loss_curve": curve,
        "config": {**dataclasses.asdict(cfg), "steps": step},
        "reproduce": command or _reproduce_command(cfg, step, out_dir),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
    }
    if cfg.eval_images:
        summary["evaluation"] = evaluate_judge(
            judge, out_dir, n_images=cfg.eval_images, robustness=True, extra={"training_steps": step}
        )
    if out_dir is not None:
        judge.save_pretrained(out_dir)
        with atomic_write(Path(out_dir) / TRAINING_NAME, "w", encoding="utf-8") as fh:
            json.dump({k: v for k, v in summary.items() if k != "evaluation"}, fh, indent=1, default=float)
    return judge, summary


__all__ = [
    "DEFAULT_JUDGE_DIR",
    "EVAL_SEED",
    "JudgeTrainConfig",
    "PoseJudge",
    "PoseJudgeEstimator",
    "TRAIN_SEED",
    "decode_heatmaps",
    "degrade",
    "evaluate_judge",
    "focal_loss",
    "heldout_people",
    "judge_metrics",
    "keypoint_heatmaps",
    "render_judge_markdown",
    "train_judge",
    "training_batch",
    "write_judge_report",
]


if __name__ == "__main__":  # python -m posereid.experiments.quality.judge
    import sys

    from posereid.experiments.quality.judge_cli import main

    sys.exit(main())
