"""PIL images ↔ ``(3, H, W)`` float tensors in ``[0, 1]``: the one conversion every package uses.

Built on torchvision's public v2 functionals. Float → 8 bit rounds to the nearest level (torchvision's
own ``to_dtype(..., scale=True)`` truncates ``x · 255.999`` instead), so an image saved and read back
moves by at most half a level.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F


def pil_to_tensor01(image: Image.Image) -> torch.Tensor:
    """``(3, H, W)`` float32 in ``[0, 1]`` from a PIL image of any mode (converted to RGB first)."""
    return F.to_dtype(F.pil_to_tensor(image.convert("RGB")), torch.float32, scale=True)


def tensor01_to_uint8(image: torch.Tensor) -> torch.Tensor:
    """``uint8`` tensor of the same shape from floats in ``[0, 1]`` (clamped, rounded); uint8 passes through."""
    if image.dtype == torch.uint8:
        return image
    return (image.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def tensor01_to_pil(image: torch.Tensor) -> Image.Image:
    """RGB PIL image from a ``(3, H, W)`` or ``(1, H, W)`` tensor, float in ``[0, 1]`` or uint8."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (3, H, W) or (1, H, W) image tensor, got shape {tuple(image.shape)}")
    return F.to_pil_image(tensor01_to_uint8(image).detach().cpu().expand(3, -1, -1).contiguous(), mode="RGB")


__all__ = ["pil_to_tensor01", "tensor01_to_pil", "tensor01_to_uint8"]
