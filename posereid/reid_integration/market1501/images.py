"""Reading images: every decoder failure becomes an :class:`ImageReadError` that names the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageReadError(OSError):
    """An image file that cannot be decoded (missing, empty, truncated, not an image)."""


def _open_decoded(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image, turning every decoder failure into :class:`ImageReadError`."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: empty file (0 bytes)")
        with Image.open(path) as im:
            im.load()  # full decode: raises on truncated data (torchreid's read_image would loop forever)
            if im.width == 0 or im.height == 0:
                raise ImageReadError(f"{path}: image has zero size {im.width}x{im.height}")
            return im
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file PIL can identify") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({exc})") from None


def check_image(path: str | os.PathLike[str]) -> None:
    """Decode ``path`` fully; raise :class:`ImageReadError` naming the file if it is unreadable."""
    _open_decoded(path)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("I", "I;16", "I;16B", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def load_image(path: str | os.PathLike[str], *, size: tuple[int, int] | None = None) -> Image.Image:
    """Load an image as PIL RGB (grayscale, palette, RGBA, 16-bit are converted; alpha is dropped).

    Args:
        size: optional ``(H, W)`` to resize to (bilinear).

    Raises:
        ImageReadError: missing, empty, truncated or undecodable file (the message names it).
    """
    im = _to_rgb(_open_decoded(path))
    if size is not None:
        h, w = int(size[0]), int(size[1])
        if (im.height, im.width) != (h, w):
            im = im.resize((w, h), Image.Resampling.BILINEAR)
    return im


__all__ = ["ImageReadError", "check_image", "load_image"]
