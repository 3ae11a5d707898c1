"""Writing a Market-1501-format folder that torchreid's own ``Market1501`` dataset loads."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from posereid.models.images import tensor01_to_pil
from posereid.models.io_utils import atomic_save, temp_sibling, write_error
from posereid.reid_integration.market1501.folder import SPLIT_DIRS
from posereid.reid_integration.market1501.images import _to_rgb
from posereid.reid_integration.market1501.names import (
    IMAGE_EXTENSIONS,
    MarketFormatError,
    format_market_name,
    parse_market_name,
)


def _as_pil(image: Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    """PIL RGB from PIL, uint8 ``HxWx3`` / ``HxW`` numpy, or a ``(3, H, W)`` tensor (float in [0, 1] or uint8)."""
    if isinstance(image, Image.Image):
        return _to_rgb(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"tensor image must be (3, H, W) or (1, H, W), got {tuple(t.shape)}")
        if t.is_floating_point():
            if not torch.isfinite(t).all():
                raise ValueError("tensor image contains NaN or inf")
        elif t.dtype != torch.uint8:
            raise ValueError(f"integer tensor images must be uint8, got {t.dtype}")
        return tensor01_to_pil(t)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"numpy images must be uint8 HxWx3 (or HxW), got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return Image.fromarray(arr, "L").convert("RGB")
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"numpy images must be HxWx3 (or HxW), got shape {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


class MarketWriter:
    """Write images into a Market-1501-format data directory (``root/bounding_box_train/…``).

    ``frame=None`` numbers frames per ``(split, pid, cam, seq)`` after the highest one already on disk,
    so names never collide with earlier runs. Each file is written to a temporary sibling and linked
    into place without overwriting (a concurrent writer that took the name makes us try the next frame).

    torchreid's own ``Market1501`` globs ``*.jpg`` and asserts ``0 <= pid <= 1501`` and cameras ``1..6``
    (junk ``-1`` is dropped); stay inside those ranges for folders meant for it.

    Args:
        root: the data directory (pass ``<torchreid root>/market1501/Market-1501-v15.09.15`` to make a
            folder torchreid's ``Market1501(root=<torchreid root>)`` loads).
        quality: JPEG quality.
        ext: ``"jpg"`` (what torchreid globs) or ``"png"``.
    """

    def __init__(self, root: str | os.PathLike[str], *, quality: int = 95, ext: str = "jpg") -> None:
        self.root = Path(root)
        self.quality = int(quality)
        self.ext = ext.lstrip(".").lower()
        if f".{self.ext}" not in IMAGE_EXTENSIONS:
            raise ValueError(f"ext must be one of {IMAGE_EXTENSIONS}, got {ext!r}")
        self.written = 0
        self._next_frame: dict[str, dict[tuple[int, int, int], int]] = {}

    def split_dir(self, split: str) -> Path:
        if split not in SPLIT_DIRS:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLIT_DIRS)}")
        return self.root / SPLIT_DIRS[split]

    def _frames(self, split: str) -> dict[tuple[int, int, int], int]:
        if split not in self._next_frame:
            nxt: dict[tuple[int, int, int], int] = defaultdict(int)
            folder = self.split_dir(split)
            if folder.is_dir():
                for entry in os.scandir(folder):
                    try:
                        pid, cam, seq, frame, _ = parse_market_name(entry.name)
                    except MarketFormatError:
                        continue
                    nxt[(pid, cam, seq)] = max(nxt[(pid, cam, seq)], frame + 1)
            self._next_frame[split] = nxt
        return self._next_frame[split]

    def _save(self, im: Image.Image, target: Path) -> None:
        fmt = "JPEG" if target.suffix.lower() in (".jpg", ".jpeg") else "PNG"
        kwargs = {"quality": self.quality} if fmt == "JPEG" else {}
        im.save(target, format=fmt, **kwargs)

    def _place_new(self, im: Image.Image, target: Path) -> bool:
        """Write ``target`` atomically only if it does not exist; False if the name is taken."""
        if target.exists():
            return False
        # hidden temp name: a leftover of a killed writer never matches torchreid's `*.jpg` glob
        tmp = temp_sibling(target, hidden=True, keep_suffix=True)
        try:
            try:
                self._save(im, tmp)
            except Exception as exc:  # a full disk names the image, not its temporary file
                named = write_error(exc, target, tmp)
                if named is None:
                    raise
                raise named from exc
            try:
                os.link(tmp, target)  # atomic, never overwrites
            except FileExistsError:
                return False
            except OSError:  # filesystem without hard links: best effort check-then-rename
                if target.exists():
                    return False
                os.replace(tmp, target)
            return True
        finally:
            if tmp.exists():
                tmp.unlink()

    def add(
        self,
        split: str,
        image: Image.Image | np.ndarray | torch.Tensor,
        pid: int,
        cam: int,
        *,
        seq: int = 1,
        frame: int | None = None,
        bbox: int = 1,
        name: str | None = None,
        overwrite: bool = False,
    ) -> str:
        """Write one image and return its file name.

        Args:
            split: ``train``, ``query``, ``gallery`` or ``gt_bbox``.
            image: PIL image, uint8 ``HxWx3`` array, or ``(3, H, W)`` float tensor in ``[0, 1]``.
            pid: person id (``-1`` junk, ``0`` distractor). cam: 1-based camera.
            frame: ``None`` → next free frame number for ``(pid, cam, seq)``.
            name: explicit file name (must be a Market name agreeing with ``pid``/``cam``).
            overwrite: replace an existing file of an explicit ``name``/``frame`` instead of raising
                :class:`FileExistsError`.
        """
        folder = self.split_dir(split)
        folder.mkdir(parents=True, exist_ok=True)
        im = _as_pil(image)
        if name is not None:
            p, c, s, f, b = parse_market_name(name)
            if (p, c) != (int(pid), int(cam)):
                raise ValueError(f"name {name!r} has pid {p} cam {c}, but pid={pid} cam={cam} were given")
            self._note_frame(split, p, c, s, f)
            return self._write_fixed(im, folder / name, overwrite)
        if frame is not None:
            fname = format_market_name(pid, cam, seq, frame, bbox, self.ext)
            self._note_frame(split, int(pid), int(cam), int(seq), int(frame))
            return self._write_fixed(im, folder / fname, overwrite)
        frames = self._frames(split)
        key = (int(pid), int(cam), int(seq))
        while True:
            fname = format_market_name(pid, cam, seq, frames[key], bbox, self.ext)
            frames[key] += 1
            if self._place_new(im, folder / fname):
                self.written += 1
                return fname

    def _note_frame(self, split: str, pid: int, cam: int, seq: int, frame: int) -> None:
        frames = self._frames(split)
        frames[(pid, cam, seq)] = max(frames[(pid, cam, seq)], frame + 1)

    def _write_fixed(self, im: Image.Image, target: Path, overwrite: bool) -> str:
        if overwrite:
            atomic_save(target, lambda tmp: self._save(im, tmp))
        elif not self._place_new(im, target):
            raise FileExistsError(f"{target} already exists (pass overwrite=True to replace it)")
        self.written += 1
        return target.name


__all__ = ["MarketWriter"]
