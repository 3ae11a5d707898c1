"""Heatmaps of the pose judge: training targets, the focal loss and decoding keypoints from heatmaps."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from posereid.models.pose import NUM_KEYPOINTS, as_keypoints, render_pose_maps, visible_mask


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


__all__ = ["decode_heatmaps", "focal_loss", "keypoint_heatmaps", "to_heatmap_coords"]
