"""Data side of generator training: records, the same-identity pair dataset and the step batch sampler.

Split out of :mod:`posereid.models.training` (which imports this module, never the reverse) so the loop
and the data each stay readable. Every random draw here comes from seeds, not global state: item ``k`` of
epoch ``e`` (source choice, flip) from ``(seed, e, k)`` and each epoch's order from ``(seed, 1, e)``, which
is what makes a resumed run repeat an uninterrupted one. Every public name here is also importable from
:mod:`posereid.models.training`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from posereid.models.images import pil_to_tensor01
from posereid.models.pose import as_keypoints, flip_keypoints, resize_keypoints

#: the training logger, as before the split, so the "PosePairDataset: skipped …" lines keep their name.
logger = logging.getLogger("posereid.models.training")


class ImageLoadError(OSError):
    """A training image that cannot be read (the message names the file)."""


@dataclass
class PoseRecord:
    """One training image: an image (path, PIL, or uint8 ``HxWx3`` array), its identity and its COCO-18
    ``(18, 2)`` (x, y) keypoints in the image's own pixel frame (``-1`` missing)."""

    image: str | Path | Image.Image | np.ndarray
    pid: int
    keypoints: np.ndarray
    name: str | None = None


def _record_name(rec: PoseRecord, index: int) -> str:
    return rec.name or (Path(rec.image).name if isinstance(rec.image, (str, Path)) else str(index))


def _load_rgb(image: Any, where: str) -> Image.Image:
    """PIL RGB from a path, a PIL image or a uint8 array; unreadable files raise :class:`ImageLoadError`."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ValueError(
                f"{where}: array images must be uint8 HxWx3 or HxW, got {image.dtype} {image.shape}"
            )
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    path = Path(image)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: no such file ({where})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path}: cannot decode image ({where}): {exc}") from None


class PosePairDataset(Dataset):
    """Pairs ``(source, target)`` of images of the same identity, resized to the model's ``image_size``.

    Args:
        records: the images (:class:`PoseRecord`).
        image_size: ``(H, W)`` of the model; images are resized (bilinear) and keypoints rescaled.
        pairs: explicit ``(source, target)`` pairs as record indices or record names (a PATN pairs CSV).
            Pairs naming an unknown record or two different identities are skipped and counted in
            :attr:`skipped`. With ``both_directions`` each pair is also used reversed (deduplicated).
            Without ``pairs``, item ``k`` takes target ``k`` and a random *other* image of its identity as
            the source, drawn afresh every epoch.
        singletons: without ``pairs``, identities with one image are ``"skip"``-ped (default: a self
            pair teaches copying, not pose transfer) or paired with ``"self"``. Skips are logged.
        flip_prob: probability of a horizontal flip applied to BOTH images and skeletons (L/R swapped).
        seed: all randomness of item ``k`` in epoch ``e`` comes from ``(seed, e, k)``.

    Index with ``(epoch, k)`` (what the training loop does) or with ``k`` (uses :meth:`set_epoch`'s epoch).
    Items are dicts: ``source``/``target`` ``(3, H, W)`` float in ``[0, 1]``, ``source_kps``/``target_kps``
    ``(18, 2)`` float32, ``pid`` int.
    """

    def __init__(
        self,
        records: Sequence[PoseRecord],
        image_size: tuple[int, int],
        *,
        pairs: Sequence[tuple[int, int]] | Sequence[tuple[str, str]] | None = None,
        both_directions: bool = True,
        singletons: Literal["skip", "self"] = "skip",
        flip_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        if singletons not in ("skip", "self"):
            raise ValueError(f"singletons must be 'skip' or 'self', got {singletons!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.records = list(records)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.flip_prob = float(flip_prob)
        self.seed = int(seed)
        self.epoch = 0
        self.skipped: dict[str, int] = defaultdict(int)
        self._kps = [
            as_keypoints(r.keypoints, source=f"record {i} ({_record_name(r, i)})")
            for i, r in enumerate(records)
        ]
        if bad := [i for i, k in enumerate(self._kps) if k.shape != (18, 2)]:
            raise ValueError(
                f"record {bad[0]} ({_record_name(self.records[bad[0]], bad[0])}): keypoints must be (18, 2)"
            )
        self.pairs: list[tuple[int, int]] | None = None
        self._targets: list[int] = []
        self._partners: dict[int, list[int]] = {}
        if pairs is not None:
            self.pairs = self._resolve_pairs(pairs, both_directions)
        else:
            self._build_auto(singletons)
        if len(self) == 0:
            raise ValueError(f"no training pairs (records={len(self.records)}, skipped={dict(self.skipped)})")

    def _resolve_pairs(self, pairs: Sequence[tuple[Any, Any]], both: bool) -> list[tuple[int, int]]:
        by_name: dict[str, int] = {}
        for i, r in enumerate(self.records):
            by_name.setdefault(_record_name(r, i), i)
        out: dict[tuple[int, int], None] = {}
        for a, b in pairs:
            ij = []
            for x in (a, b):
                if isinstance(x, (int, np.integer)):
                    if not 0 <= int(x) < len(self.records):
                        raise IndexError(f"pair index {x} out of range for {len(self.records)} records")
                    ij.append(int(x))
                else:
                    ij.append(by_name.get(str(x), -1))
            if -1 in ij:
                self.skipped["pair with an unknown image"] += 1
                continue
            i, j = ij
            if self.records[i].pid != self.records[j].pid:
                self.skipped["pair of two identities"] += 1
                continue
            out[(i, j)] = None
            if both:
                out[(j, i)] = None
        for why, n in self.skipped.items():
            logger.warning("PosePairDataset: skipped %d %s", n, why)
        return list(out)

    def _build_auto(self, singletons: str) -> None:
        groups: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(self.records):
            groups[int(r.pid)].append(i)
        for idx in groups.values():
            for i in idx:
                others = [j for j in idx if j != i]
                if not others:
                    if singletons == "skip":
                        self.skipped["image of a single-image identity"] += 1
                        continue
                    others = [i]
                self._targets.append(i)
                self._partners[i] = others
        self._targets.sort()
        for why, n in self.skipped.items():
            logger.warning("PosePairDataset: skipped %d %s", n, why)

    def __len__(self) -> int:
        return len(self.pairs) if self.pairs is not None else len(self._targets)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used when indexing with a plain integer."""
        self.epoch = int(epoch)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, k = key if isinstance(key, tuple) else (self.epoch, key)
        return self.get(int(k), epoch=int(epoch))

    def get(self, k: int, *, epoch: int = 0, flip: bool | None = None) -> dict[str, Any]:
        """Item ``k`` of ``epoch``; ``flip`` overrides the random flip (``None`` = draw it)."""
        if not 0 <= k < len(self):
            raise IndexError(f"item {k} out of range for {len(self)} pairs")
        rng = np.random.default_rng([self.seed, epoch, k])
        if self.pairs is not None:
            s, t = self.pairs[k]
        else:
            t = self._targets[k]
            partners = self._partners[t]
            s = partners[int(rng.integers(len(partners)))]
        draw = bool(rng.random() < self.flip_prob)
        flip = draw if flip is None else flip
        (src, src_kps), (tgt, tgt_kps) = self._load(s, flip), self._load(t, flip)
        return dict(
            source=src, target=tgt, source_kps=src_kps, target_kps=tgt_kps, pid=int(self.records[t].pid)
        )

    def _load(self, i: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        rec = self.records[i]
        im = _load_rgb(rec.image, f"record {i} ({_record_name(rec, i)})")
        h, w = self.image_size
        kps = resize_keypoints(self._kps[i], (im.height, im.width), (h, w))
        if (im.height, im.width) != (h, w):
            im = im.resize((w, h), Image.Resampling.BILINEAR)
        if flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            kps = flip_keypoints(kps, w)
        return pil_to_tensor01(im), torch.from_numpy(kps)


class _StepBatchSampler(torch.utils.data.Sampler):
    """Infinite ``(epoch, k)`` batches; micro-batch ``m`` of rank ``r`` covers global sample positions
    ``[(m·world + r)·B, … + B)``, each epoch a fresh permutation seeded by ``(seed, epoch)``."""

    def __init__(self, n: int, batch_size: int, seed: int, start_micro: int, rank: int, world: int) -> None:
        self.n, self.b, self.seed = n, batch_size, seed
        self.start, self.rank, self.world = start_micro, rank, world
        self._perm_epoch, self._perm = -1, np.arange(0)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, 1, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        m = self.start
        while True:
            first = (m * self.world + self.rank) * self.b
            batch = []
            for pos in range(first, first + self.b):
                epoch, k = divmod(pos, self.n)
                batch.append((epoch, int(self._order(epoch)[k])))
            yield batch
            m += 1


__all__ = ["ImageLoadError", "PosePairDataset", "PoseRecord"]
