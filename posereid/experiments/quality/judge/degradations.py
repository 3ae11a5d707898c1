"""Image degradations for the pose judge: the random ones of training (like a generator's output) and
the fixed blur + noise of the report's robustness row."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter


def jpeg_round_trip(img: np.ndarray, quality: int) -> np.ndarray:
    """A uint8 ``HxWx3`` image encoded as JPEG at ``quality`` and decoded again."""
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
        out = jpeg_round_trip(out, int(rng.integers(25, 96)))
    return out


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


__all__ = ["blur_images", "degrade", "jpeg_round_trip"]
