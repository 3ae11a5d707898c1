"""``PoseAugmentedDataset``: a re-ID dataset with synthetic images of its own identities mixed in.

It wraps a map-style re-ID dataset — torchreid's ``ImageDataset`` (items are dicts; its ``data`` holds
``(path, pid, camid, dsetid)`` tuples) or a plain list of ``(path, pid, camid)`` — and appends
``round(ratio * len(base))`` synthetic items, each of an identity of the base:

- **offline**: images of a folder written by ``posereid generate`` (its manifest names each image's
  source pid; only kept images, i.e. those in ``bounding_box_train``, are used);
- **on the fly**: a real image of the base re-rendered in a new pose by a
  :class:`~posereid.augment.transform.PoseTransferAugment` (always applied on synthetic items).

Index ``i < len(base)`` is the base's item ``i``; index ``len(base) + j`` is synthetic slot ``j``, which
maps to a fixed synthetic image (offline) or a fixed real source image (on the fly) through a permutation
seeded by ``seed`` (cycled when there are more slots than images). Every item carries ``is_synthetic``.

Items are dicts like torchreid's: ``img``, ``pid``, ``camid``, ``impath``, ``dsetid``, ``is_synthetic``.
Synthetic pids are given in the base's pid space (torchreid relabels train pids to ``0..N-1``; the
original pid is read from each base file name, so a synthetic image of person 0002 gets person 0002's
label).
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from posereid.augment.manifest import TRAIN_DIR, manifest_paths, read_manifest_lines
from posereid.augment.transform import PoseTransferAugment
from posereid.models.pose import PoseKeypoints, resize_keypoints
from posereid.reid_integration.market1501 import (
    MarketFormatError,
    load_annotations,
    load_image,
    parse_market_name,
    safe_child,
)

logger = logging.getLogger(__name__)


def _records(base: Any) -> list[tuple]:
    """``(path, pid, camid, ...)`` tuples of a torchreid dataset (``.data``) or a plain list."""
    recs = getattr(base, "data", base)
    if not isinstance(recs, Sequence) or not recs:
        raise TypeError(
            "PoseAugmentedDataset wraps a torchreid ImageDataset or a non-empty list of (path, pid, camid); "
            f"got {type(base).__name__}"
        )
    first = recs[0]
    if not (
        isinstance(first, (tuple, list)) and len(first) >= 3 and isinstance(first[0], (str, os.PathLike))
    ):
        raise TypeError(f"base records must be (path, pid, camid[, ...]) tuples, got {first!r}")
    return list(recs)


def _pid_labels(records: Sequence[tuple]) -> dict[int, int]:
    """Original pid (from the Market file name) → the base's pid label."""
    mapping: dict[int, int] = {}
    parsed = 0
    for rec in records:
        try:
            orig = parse_market_name(os.path.basename(str(rec[0])))[0]
        except MarketFormatError:
            continue
        parsed += 1
        if mapping.setdefault(orig, int(rec[1])) != int(rec[1]):
            raise ValueError(
                f"{rec[0]}: pid {orig} has two labels in the base dataset ({mapping[orig]}, {rec[1]})"
            )
    if parsed == 0:  # not Market names: the base's pids are the identities themselves
        mapping = {int(r[1]): int(r[1]) for r in records}
    elif parsed < len(records):
        # a mix of Market and other names: the others' identities cannot be matched to synthetic pids
        raise ValueError(
            f"base dataset mixes Market-1501 file names with others ({len(records) - parsed} of {len(records)} "
            f"records, e.g. {next(r[0] for r in records if _not_market(r[0]))}); synthetic images are matched "
            "to identities by the pid in Market names, so rename them or use one naming style"
        )
    return mapping


def _not_market(path: Any) -> bool:
    try:
        parse_market_name(os.path.basename(str(path)))
    except MarketFormatError:
        return True
    return False


class PoseAugmentedDataset(Dataset):
    """Real items of ``base`` followed by synthetic items of the same identities.

    Args:
        base: torchreid ``ImageDataset`` (train mode) or a list of ``(path, pid, camid)``.
        synthetic_dir: folder written by ``posereid generate`` (offline synthetic images).
        generator_augment: a :class:`PoseTransferAugment` (on-the-fly synthetic images). Exactly one of
            ``synthetic_dir`` / ``generator_augment`` is required.
        ratio: synthetic : real item count (``0.5`` → one synthetic item per two real ones); a finite
            number ``>= 0``.
        seed: seed of the slot → image permutation (an integer ``>= 0``).
        transform: callable on a PIL image for the items this wrapper loads (plain-list base items and
            synthetic items); default: the base's ``transform`` (torchreid's) if it has one.
        annotations: optional ``name → (18, 2)`` keypoints (or PATN CSV path) of the real images, given to
            the generator as source poses on the fly.
        annotation_hw: the ``(H, W)`` frame of ``annotations``; ``None`` (default): the size of the base
            images they annotate (mixed sizes are an error then). A keypoint outside the frame is an
            error naming the file and line.

    Arguments it cannot use raise ``TypeError`` (wrong type) or ``ValueError`` (bad value) naming the
    argument and what it accepts.
    """

    def __init__(
        self,
        base: Any,
        *,
        synthetic_dir: str | os.PathLike[str] | None = None,
        generator_augment: PoseTransferAugment | None = None,
        ratio: float = 0.5,
        seed: int = 0,
        transform: Callable | None = None,
        annotations: Mapping[str, np.ndarray] | str | os.PathLike[str] | None = None,
        annotation_hw: tuple[int, int] | None = None,
    ) -> None:
        if (synthetic_dir is None) == (generator_augment is None):
            raise ValueError("give exactly one of synthetic_dir (offline) or generator_augment (on the fly)")
        if synthetic_dir is not None and not isinstance(synthetic_dir, (str, os.PathLike)):
            raise TypeError(
                f"PoseAugmentedDataset: synthetic_dir must be a folder path, got {type(synthetic_dir).__name__}"
            )
        if generator_augment is not None and not callable(generator_augment):
            raise TypeError(
                "PoseAugmentedDataset: generator_augment must be a PoseTransferAugment (a callable transform), got "
                f"{type(generator_augment).__name__}"
            )
        if not isinstance(ratio, numbers.Real) or isinstance(ratio, (bool, np.bool_)):
            raise TypeError(f"PoseAugmentedDataset: ratio must be a finite number >= 0, got {ratio!r}")
        if not (math.isfinite(ratio) and ratio >= 0):
            raise ValueError(f"PoseAugmentedDataset: ratio must be a finite number >= 0, got {ratio}")
        if not isinstance(seed, numbers.Integral) or isinstance(seed, (bool, np.bool_)):
            raise TypeError(f"PoseAugmentedDataset: seed must be an integer >= 0, got {seed!r}")
        if seed < 0:
            raise ValueError(f"PoseAugmentedDataset: seed must be an integer >= 0, got {seed}")
        if transform is not None and not callable(transform):
            raise TypeError(
                f"PoseAugmentedDataset: transform must be callable or None, got {type(transform).__name__}"
            )
        self.base = base
        self.records = _records(base)
        self.base_is_dataset = hasattr(base, "data")  # torchreid: let it load + transform its own items
        self.transform = transform if transform is not None else getattr(base, "transform", None)
        self.ratio = float(ratio)
        self.seed = int(seed)
        self.num_real = len(self.records)
        self.num_synthetic = int(round(self.ratio * self.num_real))
        self.pid_labels = _pid_labels(self.records)
        self.synthetic: list[tuple[str, int, int]] = []  # offline: (path, pid label, camid)
        self.augment: PoseTransferAugment | None = None
        if synthetic_dir is not None:
            self.synthetic = self._scan_synthetic(Path(synthetic_dir))
            pool = len(self.synthetic)
        else:
            self.augment = copy.copy(generator_augment)
            self.augment.p = 1.0  # a synthetic slot always gets a synthetic image
            pool = self.num_real
        if self.num_synthetic and pool == 0:
            raise ValueError(f"{synthetic_dir}: no synthetic image to mix in (ratio={ratio})")
        self._slots = self._permutation(pool)
        if annotations is not None:
            # the frame of the keypoints comes from the images they annotate (or annotation_hw); rows whose
            # images are not in the base are never used, so a CSV annotating none of them is no error
            annotations, annotation_hw = load_annotations(
                annotations, [r[0] for r in self.records], frame=annotation_hw, required=False
            )
        self.annotations = annotations
        self.annotation_hw = annotation_hw

    # ------------------------------------------------------------------ setup
    def _scan_synthetic(self, folder: Path) -> list[tuple[str, int, int]]:
        parts = manifest_paths(folder)
        if not parts:
            raise FileNotFoundError(
                f"{folder}: no manifest*.jsonl; is this a folder written by `posereid generate`?"
            )
        out: list[tuple[str, int, int]] = []
        for part in parts:
            for lineno, e in read_manifest_lines(part)[0]:
                path = safe_child(folder / TRAIN_DIR, e["name"], source=f"{part} line {lineno}")
                if not path.is_file():  # rejected by the filter, or not generated yet
                    continue
                pid = int(e["source_pid"])
                if pid not in self.pid_labels:
                    raise ValueError(
                        f"{part}: {e['name']} has source pid {pid}, which is not an identity of the base dataset "
                        f"({len(self.pid_labels)} identities); generate from the same train split"
                    )
                out.append((str(path), self.pid_labels[pid], int(e.get("camid", 0))))
        out.sort()
        logger.info(
            "%s: %d synthetic image(s) of %d identities", folder, len(out), len({p for _, p, _ in out})
        )
        return out

    def _permutation(self, pool: int) -> np.ndarray:
        """Slot → pool index: concatenated seeded permutations of the pool (each image once per cycle)."""
        if self.num_synthetic == 0:
            return np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        cycles = -(-self.num_synthetic // pool)
        return np.concatenate([rng.permutation(pool) for _ in range(cycles)])[: self.num_synthetic]

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self.num_real + self.num_synthetic

    def source_of(self, index: int) -> tuple[str, int]:
        """``("real", i)``, ``("offline", j)`` (j-th synthetic image) or ``("on-the-fly", i)`` (real source i)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        if index < self.num_real:
            return "real", index
        slot = int(self._slots[index - self.num_real])
        return ("offline", slot) if self.augment is None else ("on-the-fly", slot)

    def is_synthetic(self, index: int) -> bool:
        return self.source_of(index)[0] != "real"

    def _apply(self, img: Any) -> Any:
        return self.transform(img) if self.transform is not None else img

    def _real(self, i: int) -> dict[str, Any]:
        if self.base_is_dataset:
            item = self.base[i]
            if isinstance(item, dict):
                out = dict(item)
                out["is_synthetic"] = bool(out.get("synthetic", False))
                return out
        rec = self.records[i]
        return {
            "img": self._apply(load_image(rec[0])),
            "pid": int(rec[1]),
            "camid": int(rec[2]),
            "impath": str(rec[0]),
            "dsetid": int(rec[3]) if len(rec) > 3 else 0,
            "is_synthetic": False,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        kind, i = self.source_of(index)
        if kind == "real":
            return self._real(i)
        if kind == "offline":
            path, pid, camid = self.synthetic[i]
            img = load_image(path)
        else:
            rec = self.records[i]
            path, pid, camid = str(rec[0]), int(rec[1]), int(rec[2])
            img = self._render(path)
        return {
            "img": self._apply(img),
            "pid": pid,
            "camid": camid,
            "impath": path,
            "dsetid": 0,
            "is_synthetic": True,
        }

    def _render(self, path: str) -> Any:
        img = load_image(path)
        kps = None if self.annotations is None else self.annotations.get(os.path.basename(path))
        if kps is None or self.annotation_hw is None:
            return self.augment(img)
        kps = resize_keypoints(kps, self.annotation_hw, (img.height, img.width))
        out, _ = self.augment(img, PoseKeypoints(kps, canvas_size=(img.height, img.width)))
        return out


__all__ = ["PoseAugmentedDataset"]
