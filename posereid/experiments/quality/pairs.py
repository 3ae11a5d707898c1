"""Test pairs of ``posereid evaluate-generator``: which (source → target pose) pairs are scored, loaded.

Used by :mod:`~posereid.experiments.quality.evaluate` (which imports this module, never the reverse): reading
the PATN annotation and pairs CSVs (or falling back to same-pid pairs of the test split), skipping and
counting unusable pairs, drawing a seeded subset and loading its images and keypoints at the generator's
image size into an :class:`EvalPairs`. Every public name here is also importable from
:mod:`posereid.experiments.quality`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from posereid.models.images import pil_to_tensor01
from posereid.models.pose import missing_pose, resize_keypoints
from posereid.reid_integration.market1501 import (
    BadInputPolicy,
    ImageReadError,
    Market1501,
    MarketRecord,
    load_annotations,
    load_image,
    read_pairs_csv,
    read_patn_csv,
)

#: the evaluation's logger, as before the split, so the "skipped … pair(s)" lines keep their name.
logger = logging.getLogger(__name__)

ANNOTATIONS_NAME, PAIRS_NAME = "market-annotation-test.csv", "market-pairs-test.csv"


@dataclass
class EvalPairs:
    """The selected test pairs, with images and keypoints at the generator's image size."""

    names: list[tuple[str, str]]
    source: torch.Tensor
    target: torch.Tensor
    source_kps: np.ndarray
    target_kps: np.ndarray
    source_pid: np.ndarray
    source_camid: np.ndarray
    target_camid: np.ndarray
    total: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    origin: str = ""

    def __len__(self) -> int:
        return len(self.names)


def _find_default(root: Path, data_root: Path, name: str) -> Path | None:
    for cand in (data_root / name, root / name, data_root.parent / name):
        if cand.is_file():
            return cand
    return None


def _load_resized(
    path: Path, kps: np.ndarray | None, size: tuple[int, int], frame: tuple[int, int] | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """The image at ``size`` and its keypoints rescaled from ``frame`` (``None``: the image's own size)."""
    im = load_image(path)
    native = (im.height, im.width)
    if native != size:
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # as load_image(size=...)
    t = pil_to_tensor01(im)
    k = missing_pose() if kps is None else resize_keypoints(kps, frame or native, size)
    return t, k


def load_eval_pairs(
    market_root: str | os.PathLike[str],
    image_size: tuple[int, int],
    *,
    pairs: str | os.PathLike[str] | None = None,
    annotations: str | os.PathLike[str] | None = None,
    n_pairs: int | None = 200,
    seed: int = 0,
    market: Market1501 | None = None,
    strict: bool = False,
    annotation_hw: tuple[int, int] | None = None,
) -> EvalPairs:
    """Select test pairs and load their images and keypoints at ``image_size``.

    ``annotations`` (PATN CSV; default ``market-annotation-test.csv`` beside the data) gives the target
    poses. ``pairs`` (default ``market-pairs-test.csv`` there, else every ordered same-pid pair of the
    test split) lists ``(from, to)`` names. Pairs naming an image not in the folder, or whose target has
    no annotation, are skipped and counted. ``n_pairs`` of the rest are drawn with ``seed`` (kept in file
    order), so two runs with the same seed score the same pairs. A drawn pair whose source or target
    image cannot be read is then skipped and counted (``skipped["unreadable_image"]``; so is a stray
    entry of the folder, ``skipped["stray_file_in_data"]``); with ``strict`` the first one raises,
    naming the file.

    ``annotation_hw`` is the ``(H, W)`` frame of the annotation CSV's coordinates (``--annotation-size``);
    ``None``: each image's own size. Given, the keypoints are rescaled from it, and a row with a keypoint
    outside it is skipped and counted (``strict``: raises, naming the file and line), as
    :func:`~posereid.reid_integration.market1501.load_annotations` checks it; its target then counts as
    ``no_target_pose``.
    """
    root = Path(market_root)
    market = market or Market1501(root, strict=strict)
    if annotations is None:
        found = _find_default(root, market.root, ANNOTATIONS_NAME)
        if found is None:
            raise FileNotFoundError(
                f"no keypoint annotations: {ANNOTATIONS_NAME} not found in {market.root} or {root}; pass "
                "--annotations CSV (a PATN annotation CSV; `posereid annotate` writes one with mediapipe)"
            )
        annotations = found
    kps = read_patn_csv(annotations, image_hw=None)
    if annotation_hw is not None:
        kps, annotation_hw = load_annotations(
            kps, market, frame=annotation_hw, on_error="raise" if strict else "skip"
        )
    records: dict[str, MarketRecord] = {}
    for split in ("gallery", "query", "train"):
        for rec in market.split(split):
            records.setdefault(rec.name, rec)
    if pairs is None and (found := _find_default(root, market.root, PAIRS_NAME)) is not None:
        pairs = found
    if pairs is not None:
        candidates, origin = read_pairs_csv(pairs), str(pairs)
    else:
        by_pid: dict[int, list[str]] = {}
        for rec in sorted(market.query + market.gallery, key=lambda r: r.name):
            if rec.has_identity and rec.name in kps:
                by_pid.setdefault(rec.pid, []).append(rec.name)
        candidates = [(a, b) for names in by_pid.values() for a in names for b in names if a != b]
        origin = "same-pid pairs of the test split (query + gallery)"
    skipped = {
        "image_not_found": 0,
        "no_target_pose": 0,
        "different_pid": 0,
        "unreadable_image": 0,
        "stray_file_in_data": market.total_skipped,
    }
    valid = []
    for a, b in candidates:
        if a not in records or b not in records:
            skipped["image_not_found"] += 1
        elif b not in kps or not (kps[b] >= 0).all(-1).any():
            skipped["no_target_pose"] += 1
        elif records[a].pid != records[b].pid:
            skipped["different_pid"] += 1
        else:
            valid.append((a, b))
    for why, n in skipped.items():
        if n:
            logger.warning("%s: skipped %d pair(s): %s", origin, n, why.replace("_", " "))
    if not valid:
        raise ValueError(
            f"{origin}: no usable pair (skipped: {skipped}); check --data / --pairs / --annotations"
        )
    if n_pairs is not None and len(valid) > n_pairs:
        idx = np.sort(np.random.default_rng(seed).choice(len(valid), size=n_pairs, replace=False))
        valid = [valid[i] for i in idx]
    src, tgt, skp, tkp = [], [], [], []
    bad, loaded = BadInputPolicy(strict), []
    for a, b in tqdm(valid, desc="loading pairs", leave=False, disable=len(valid) < 64):
        try:
            s, sk = _load_resized(records[a].path, kps.get(a), image_size, annotation_hw)
            t, tk = _load_resized(records[b].path, kps[b], image_size, annotation_hw)
        except ImageReadError as exc:
            bad.skip_or_raise(exc, "pair(s) with an unreadable image")
            continue
        src.append(s), tgt.append(t), skp.append(sk), tkp.append(tk)
        loaded.append((a, b))
    bad.warn(origin, logger)
    skipped["unreadable_image"] = bad.skipped
    valid = loaded
    if not valid:
        raise ValueError(f"{origin}: no pair with readable images (skipped: {skipped}); check --data")
    return EvalPairs(
        names=valid,
        source=torch.stack(src),
        target=torch.stack(tgt),
        source_kps=np.stack(skp),
        target_kps=np.stack(tkp),
        source_pid=np.array([records[a].pid for a, _ in valid]),
        source_camid=np.array([records[a].camid for a, _ in valid]),
        target_camid=np.array([records[b].camid for _, b in valid]),
        total=len(candidates),
        skipped=skipped,
        origin=origin,
    )


__all__ = ["ANNOTATIONS_NAME", "PAIRS_NAME", "EvalPairs", "load_eval_pairs"]
