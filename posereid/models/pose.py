"""COCO-18 pose vocabulary shared by every package.

Keypoints are float arrays of shape ``(..., 18, 2)`` in **(x, y) pixel-index order** (the PATN CSV stores
y first; :mod:`posereid.reid_integration.market1501` swaps on read/write). A missing joint is ``-1`` in both
coordinates, and every geometric helper here keeps missing joints missing and drops joints that leave the
image (a plain mirror would map x = -1 to the right border and invent a joint there).

Left/right are the subject's own, so a horizontal flip mirrors x **and** swaps the left/right labels.
:class:`PoseKeypoints` is a ``torchvision.tv_tensors.KeyPoints`` subclass whose kernels do this, so
``v2.RandomHorizontalFlip`` on an ``(image, PoseKeypoints)`` sample gives a correct skeleton.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

NUM_KEYPOINTS = 18
MISSING = -1.0

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "neck",
    "r_shoulder", "r_elbow", "r_wrist",
    "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle",
    "l_hip", "l_knee", "l_ankle",
    "r_eye", "l_eye", "r_ear", "l_ear",
)  # fmt: skip

#: Limbs as 0-based keypoint pairs (OpenPose / PATN order).
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)  # fmt: skip
NUM_LIMBS = len(LIMBS)

#: Index permutation that swaps the subject's left and right labels.
FLIP_PERMUTATION: tuple[int, ...] = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16)

#: Channels of :func:`render_pose_maps`: one heatmap per joint, then one map per limb.
POSE_CHANNELS = NUM_KEYPOINTS + NUM_LIMBS

# Colours for drawing (one per limb, OpenPose-like hue wheel).
_LIMB_COLOURS = [
    tuple(int(c) for c in np.array(__import__("colorsys").hsv_to_rgb(i / NUM_LIMBS, 1.0, 1.0)) * 255)
    for i in range(NUM_LIMBS)
]


class KeypointError(ValueError):
    """Keypoints that are not a valid COCO-18 pose."""


# --------------------------------------------------------------------------------------------------
# Basic array helpers
# --------------------------------------------------------------------------------------------------
def as_keypoints(kps: Any, *, source: str = "keypoints") -> np.ndarray:
    """Validate and convert to a float32 ``(..., 18, 2)`` array with missing joints exactly ``-1``.

    A joint with any negative or non-finite coordinate counts as missing. ``source`` names the input in
    error messages (e.g. ``"annotations.csv line 12"``).
    """
    arr = np.asarray(kps.detach().cpu() if isinstance(kps, torch.Tensor) else kps, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-2:] != (NUM_KEYPOINTS, 2):
        raise KeypointError(f"{source}: expected shape (..., {NUM_KEYPOINTS}, 2), got {tuple(arr.shape)}")
    arr = arr.astype(np.float32, copy=True)
    bad = ~np.isfinite(arr).all(-1) | (arr < 0).any(-1)
    arr[bad] = MISSING
    return arr


def visible_mask(kps: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Boolean ``(..., 18)`` mask of joints that are present (both coordinates ≥ 0)."""
    return (kps >= 0).all(-1)


def missing_pose(batch: Sequence[int] = ()) -> np.ndarray:
    """A pose with every joint missing."""
    return np.full((*batch, NUM_KEYPOINTS, 2), MISSING, dtype=np.float32)


def drop_outside(kps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Mark joints outside ``[0, W-1] × [0, H-1]`` (after rounding) as missing."""
    out = np.array(kps, dtype=np.float32, copy=True)
    x, y = out[..., 0], out[..., 1]
    inside = (x > -0.5) & (x < width - 0.5) & (y > -0.5) & (y < height - 0.5)
    # A joint that rounds onto the border pixel is clamped onto it, so that no coordinate is ever
    # negative while the joint counts as present (negative means missing everywhere else).
    out[..., 0] = np.clip(x, 0, width - 1)
    out[..., 1] = np.clip(y, 0, height - 1)
    out[~inside] = MISSING
    return out


# --------------------------------------------------------------------------------------------------
# Geometry (numpy)
# --------------------------------------------------------------------------------------------------
def flip_keypoints(kps: np.ndarray, width: int) -> np.ndarray:
    """Horizontal flip: mirror x (pixel index ``x → W-1-x``) and swap left/right labels."""
    kps = as_keypoints(kps)
    out = kps[..., list(FLIP_PERMUTATION), :].copy()
    vis = visible_mask(out)
    out[..., 0] = np.where(vis, (width - 1) - out[..., 0], MISSING)
    return out


def resize_keypoints(kps: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Rescale keypoints from one image size to another (pixel-centre aligned, missing stay missing)."""
    kps = as_keypoints(kps)
    (h0, w0), (h1, w1) = from_hw, to_hw
    vis = visible_mask(kps)
    out = kps.copy()
    out[..., 0] = (kps[..., 0] + 0.5) * (w1 / w0) - 0.5
    out[..., 1] = (kps[..., 1] + 0.5) * (h1 / h0) - 0.5
    out[~vis] = MISSING
    return drop_outside(out, h1, w1)


def crop_keypoints(kps: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """Shift keypoints into a crop box; joints outside the box become missing."""
    kps = as_keypoints(kps)
    vis = visible_mask(kps)
    out = kps - np.array([left, top], dtype=np.float32)
    out[~vis] = MISSING
    return drop_outside(out, height, width)


def affine_keypoints(kps: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Apply a 2×3 affine matrix (``[x', y'] = M @ [x, y, 1]``); joints leaving ``out_hw`` become missing."""
    kps = as_keypoints(kps)
    m = np.asarray(matrix, dtype=np.float32).reshape(2, 3)
    vis = visible_mask(kps)
    out = kps @ m[:, :2].T + m[:, 2]
    out[~vis] = MISSING
    return drop_outside(out.astype(np.float32), *out_hw)


def torso_length(kps: np.ndarray, *, fallback: bool = False) -> np.ndarray:
    """Torso length in pixels, ``(...,)``: the body scale every pose heuristic divides by.

    The distance from the neck (or, without it, the shoulders' midpoint) to the hips' midpoint (or the
    one visible hip). Where that is not available or is 0 the result is NaN, or with ``fallback`` a third
    of the visible joints' vertical extent (an upright person is about three torsos tall; 0 with fewer
    than two joints).
    """
    kps = as_keypoints(kps).astype(np.float64)
    vis = visible_mask(kps)
    both_sh = vis[..., 2] & vis[..., 5]
    has_top = vis[..., 1] | both_sh
    top = np.where(vis[..., 1, None], kps[..., 1, :], (kps[..., 2, :] + kps[..., 5, :]) / 2)
    hip_w = vis[..., [8, 11]].astype(np.float64)  # (..., 2)
    n_hips = hip_w.sum(-1)
    hips = (kps[..., [8, 11], :] * hip_w[..., None]).sum(-2) / np.maximum(n_hips, 1)[..., None]
    length = np.linalg.norm(top - hips, axis=-1)
    length = np.where(has_top & (n_hips > 0) & (length > 0), length, np.nan)
    if fallback:
        ys = kps[..., 1]
        extent = np.where(vis, ys, -np.inf).max(-1) - np.where(vis, ys, np.inf).min(-1)
        extent = np.where(vis.sum(-1) >= 2, extent, 0.0)
        length = np.where(np.isnan(length), extent / 3.0, length)
    return length


def normalize_pose(kps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation/scale-invariant pose vector for clustering.

    Centres on the mid-hip (or neck when a hip is missing) and divides by :func:`torso_length` (with its
    fallback). Returns ``(vec, mask)`` with ``vec`` of shape ``(..., 36)`` (missing joints at 0) and
    ``mask`` ``(..., 18)``.
    """
    kps = as_keypoints(kps)
    vis = visible_mask(kps)
    flat = kps.reshape(-1, NUM_KEYPOINTS, 2)
    fvis = vis.reshape(-1, NUM_KEYPOINTS)
    scales = np.maximum(torso_length(flat, fallback=True), 1e-3)
    vecs = np.zeros((flat.shape[0], NUM_KEYPOINTS, 2), dtype=np.float32)
    for i, (p, v) in enumerate(zip(flat, fvis)):
        if not v.any():
            continue
        hips_ok = v[8] and v[11]
        centre = (p[8] + p[11]) / 2 if hips_ok else (p[1] if v[1] else p[v].mean(0))
        vecs[i][v] = (p[v] - centre) / scales[i]
    return vecs.reshape(*kps.shape[:-2], NUM_KEYPOINTS * 2), vis


# --------------------------------------------------------------------------------------------------
# Pose maps (torch, vectorised over the batch)
# --------------------------------------------------------------------------------------------------
def default_sigma(height: int) -> float:
    """Gaussian width in pixels for pose maps: 2.5 % of the image height, at least 1 px (3.2 px at 128)."""
    return max(1.0, 0.025 * height)


def render_pose_maps(
    kps: np.ndarray | torch.Tensor,
    height: int,
    width: int,
    *,
    sigma: float | None = None,
    limbs: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Render conditioning maps for a batch of poses.

    Args:
        kps: ``(B, 18, 2)`` or ``(18, 2)`` keypoints in (x, y) pixels of an ``height × width`` image.
        sigma: Gaussian width in pixels (default :func:`default_sigma`).
        limbs: also render one distance-to-segment Gaussian map per limb.

    Returns:
        ``(B, 18 [+ 19], H, W)`` maps in ``[0, 1]``; missing joints (and limbs with a missing end) give
        all-zero channels.
    """
    t = torch.as_tensor(np.asarray(kps) if not isinstance(kps, torch.Tensor) else kps)
    t = t.to(device=device, dtype=torch.float32)
    squeeze = t.ndim == 2
    if squeeze:
        t = t[None]
    if t.shape[-2:] != (NUM_KEYPOINTS, 2):
        raise KeypointError(f"render_pose_maps: expected (B, 18, 2) keypoints, got {tuple(t.shape)}")
    sigma = default_sigma(height) if sigma is None else float(sigma)
    inv = 1.0 / (2.0 * sigma * sigma)
    vis = (t >= 0).all(-1)  # (B, 18)
    ys = torch.arange(height, device=t.device, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, device=t.device, dtype=torch.float32).view(1, 1, 1, width)
    px, py = t[..., 0, None, None], t[..., 1, None, None]  # (B, 18, 1, 1)
    heat = torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) * inv) * vis[..., None, None]
    maps = [heat]
    if limbs:
        a_idx = torch.tensor([a for a, _ in LIMBS], device=t.device)
        b_idx = torch.tensor([b for _, b in LIMBS], device=t.device)
        a, b = t[:, a_idx], t[:, b_idx]  # (B, L, 2)
        lvis = vis[:, a_idx] & vis[:, b_idx]
        ab = b - a
        len2 = (ab**2).sum(-1).clamp_min(1e-6)[..., None, None]  # (B, L, 1, 1)
        ax, ay = a[..., 0, None, None], a[..., 1, None, None]
        bx, by = ab[..., 0, None, None], ab[..., 1, None, None]
        proj = (((xs - ax) * bx + (ys - ay) * by) / len2).clamp(0.0, 1.0)
        dx = xs - ax - proj * bx
        dy = ys - ay - proj * by
        limb = torch.exp(-(dx**2 + dy**2) * inv) * lvis[..., None, None]
        maps.append(limb)
    out = torch.cat(maps, dim=1).to(dtype)
    return out[0] if squeeze else out


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------
def draw_skeleton(
    image: Image.Image | None,
    kps: np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    radius: float | None = None,
    width: int | None = None,
) -> Image.Image:
    """Draw a COCO-18 skeleton onto a copy of ``image`` (or a black canvas of ``size=(H, W)``).

    Limbs get OpenPose-like hues, so the subject's left and right differ; joints are white. Not
    ``torchvision.utils.draw_keypoints``: it draws every connection in white and truncates coordinates to
    integers (torchvision 0.29), which would hide exactly the left/right errors a grid is looked at for.
    """
    kps = as_keypoints(kps)
    if image is None:
        if size is None:
            raise ValueError("draw_skeleton needs an image or size=(H, W)")
        image = Image.new("RGB", (size[1], size[0]))
    canvas = image.convert("RGB").copy()
    h = canvas.height
    radius = max(1.0, h / 64) if radius is None else radius
    width = max(1, round(h / 64)) if width is None else width
    draw = ImageDraw.Draw(canvas)
    vis = visible_mask(kps)
    for (a, b), colour in zip(LIMBS, _LIMB_COLOURS):
        if vis[a] and vis[b]:
            draw.line([tuple(kps[a]), tuple(kps[b])], fill=colour, width=width)
    for j in np.flatnonzero(vis):
        x, y = kps[j]
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 255, 255))
    return canvas


def skeleton_tensor(kps: np.ndarray | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, 3, H, W)`` float images of skeletons on black (for sample grids)."""
    arr = as_keypoints(kps)
    if arr.ndim == 2:
        arr = arr[None]
    from posereid.models.images import pil_to_tensor01

    return torch.stack([pil_to_tensor01(draw_skeleton(None, k, size=(height, width))) for k in arr])


# --------------------------------------------------------------------------------------------------
# torchvision v2 integration (tv_tensors.KeyPoints: torchvision >= 0.23, the declared floor)
# --------------------------------------------------------------------------------------------------
class PoseKeypoints(tv_tensors.KeyPoints):
    """COCO-18 keypoints ``(..., 18, 2)`` as a torchvision tv_tensor.

    Geometric v2 transforms keep missing joints (-1) missing and drop joints that leave the canvas;
    horizontal flip also swaps left/right labels. Build with ``PoseKeypoints(kps, canvas_size=(H, W))``.
    """


def _plain(inpt: PoseKeypoints) -> tv_tensors.KeyPoints:
    """The same points as torchvision's own ``KeyPoints`` (its functionals then run their own kernel)."""
    return tv_tensors.KeyPoints(inpt.as_subclass(torch.Tensor), canvas_size=tuple(inpt.canvas_size))


def _missing(inpt: torch.Tensor) -> torch.Tensor:
    return ~(inpt >= 0).all(-1)


def _finish(out: torch.Tensor, was_missing: torch.Tensor, canvas: tuple[int, int]) -> torch.Tensor:
    h, w = canvas
    x, y = out[..., 0], out[..., 1]
    outside = (x <= -0.5) | (x >= w - 0.5) | (y <= -0.5) | (y >= h - 0.5)
    out = out.clone()
    out[..., 0] = out[..., 0].clamp(0, w - 1)
    out[..., 1] = out[..., 1].clamp(0, h - 1)
    out[was_missing | outside] = MISSING
    return out


def _hflip_pose(inpt: PoseKeypoints) -> PoseKeypoints:
    h, w = inpt.canvas_size
    t = inpt.as_subclass(torch.Tensor)
    out = t[..., list(FLIP_PERMUTATION), :].clone()
    miss = _missing(out)
    out[..., 0] = (w - 1) - out[..., 0]
    out[miss] = MISSING
    return tv_tensors.wrap(out, like=inpt)


def _wrap_default(functional: Any) -> Any:
    """Run torchvision's own KeyPoints version of ``functional``, then restore missing joints and drop
    the joints that left the canvas."""

    def kernel(inpt: PoseKeypoints, *args: Any, **kwargs: Any) -> PoseKeypoints:
        out = functional(_plain(inpt), *args, **kwargs)
        canvas = tuple(out.canvas_size)
        res = _finish(out.as_subclass(torch.Tensor), _missing(inpt), canvas)
        return tv_tensors.wrap(res, like=inpt, canvas_size=canvas)

    return kernel


def _rescale_pixel_centres(t: torch.Tensor, left: float, top: float, sx: float, sy: float) -> torch.Tensor:
    """Pixel-index mapping of a crop + resize, as the image resampling does: ``(x - left + 0.5)·s - 0.5``
    (torchvision's own KeyPoints kernels use ``x·s``, half a pixel off for pixel indices)."""
    out = t.clone()
    out[..., 0] = (t[..., 0] - left + 0.5) * sx - 0.5
    out[..., 1] = (t[..., 1] - top + 0.5) * sy - 0.5
    return out


def _resize_pose(inpt: PoseKeypoints, size: Any, *args: Any, **kwargs: Any) -> PoseKeypoints:
    h0, w0 = inpt.canvas_size
    canvas = tuple(F.resize(_plain(inpt), size, *args, **kwargs).canvas_size)  # torchvision's size rule
    t = _rescale_pixel_centres(inpt.as_subclass(torch.Tensor), 0, 0, canvas[1] / w0, canvas[0] / h0)
    return tv_tensors.wrap(_finish(t, _missing(inpt), canvas), like=inpt, canvas_size=canvas)


def _resized_crop_pose(
    inpt: PoseKeypoints, top: int, left: int, height: int, width: int, size: Any, *args: Any, **kwargs: Any
) -> PoseKeypoints:
    out = F.resized_crop(_plain(inpt), top, left, height, width, size, *args, **kwargs)
    canvas = tuple(out.canvas_size)
    t = _rescale_pixel_centres(
        inpt.as_subclass(torch.Tensor), left, top, canvas[1] / width, canvas[0] / height
    )
    return tv_tensors.wrap(_finish(t, _missing(inpt), canvas), like=inpt, canvas_size=canvas)


F.register_kernel(F.horizontal_flip, PoseKeypoints)(_hflip_pose)
F.register_kernel(F.resize, PoseKeypoints)(_resize_pose)
F.register_kernel(F.resized_crop, PoseKeypoints)(_resized_crop_pose)
for _fn in (F.vertical_flip, F.crop, F.center_crop, F.pad, F.affine, F.rotate, F.perspective, F.elastic):
    F.register_kernel(_fn, PoseKeypoints)(_wrap_default(_fn))


__all__ = [
    "FLIP_PERMUTATION",
    "KEYPOINT_NAMES",
    "KeypointError",
    "LIMBS",
    "MISSING",
    "NUM_KEYPOINTS",
    "NUM_LIMBS",
    "POSE_CHANNELS",
    "PoseKeypoints",
    "affine_keypoints",
    "as_keypoints",
    "crop_keypoints",
    "default_sigma",
    "draw_skeleton",
    "drop_outside",
    "flip_keypoints",
    "missing_pose",
    "normalize_pose",
    "render_pose_maps",
    "resize_keypoints",
    "skeleton_tensor",
    "torso_length",
    "visible_mask",
]
