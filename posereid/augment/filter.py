"""Identity-consistency filter for generated people (the library of ``posereid filter``, whose command
line is in :mod:`posereid.augment.cli`).

A generated image is useful for re-ID training only if it still looks like its source identity (the
literature reports that unfiltered synthetic images can hurt). Each image is scored with a re-ID feature
extractor against per-identity centroids of the REAL train images:

- ``similarity``: cosine similarity to its own identity's centroid;
- ``margin``: that similarity minus the highest similarity to any OTHER identity's centroid (negative →
  the image looks more like someone else).

Images are kept by a threshold on either score or by keeping the top fraction. ``posereid filter``
re-scores an existing generated folder without regenerating: rejected images are moved to
``<dir>/rejected/`` (outside ``bounding_box_train`` so torchreid never reads them; a later run with a
looser threshold moves them back) and every manifest part is rewritten atomically with ``filter_score``,
``filter_margin`` and ``kept``. Re-running is idempotent, so an interrupted run is finished by running it
again. It has the folder to itself (:class:`~posereid.models.locks.GeneratedFolderLock`): it stops at once,
naming the holder, while a ``generate`` (any shard) or another ``filter`` writes the folder, and a
``generate`` started while it runs stops the same way. Manifest names are untrusted: a name that is not a plain file name, or a symlink leading out of
the folder, stops the run before anything is read or moved, with an error naming the manifest, the line
and the name.

An unreadable image (a generated one, or a real reference image) follows the batch policy of every
command (:class:`~posereid.reid_integration.market1501.BadInputPolicy`): it is skipped (a generated one
is neither scored, moved nor its manifest line changed), counted in :class:`FilterSummary` and the printed
summary; with ``--strict`` (``strict=True``) the run stops at the first one with an error naming it,
before anything is moved or rewritten.

The feature extractor is any callable ``images (B, 3, H, W) float in [0, 1] -> (B, D) features``; the
command loads :class:`posereid.reid_integration.torchreid_plugin.ReidFeatureExtractor` from a local
re-ID checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as TF
from PIL import Image
from tqdm.auto import tqdm

from posereid.augment.manifest import (
    REJECTED_DIR,
    TRAIN_DIR,
    manifest_paths,
    read_manifest_lines,
    write_manifest_file,
)
from posereid.models.images import pil_to_tensor01
from posereid.models.locks import GeneratedFolderLock
from posereid.reid_integration.evaluate import IdentityCentroids
from posereid.reid_integration.market1501 import (
    BadInputPolicy,
    ImageReadError,
    Market1501,
    load_image,
    safe_child,
)

logger = logging.getLogger(__name__)

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
ScoreName = Literal["similarity", "margin"]


class FilterError(ValueError):
    """Bad filter input: an unknown identity, a missing image, or an invalid threshold."""


@dataclass
class FilterSummary:
    """What :func:`filter_folder` did."""

    scored: int = 0
    kept: int = 0
    rejected: int = 0
    moved_to_rejected: int = 0
    restored: int = 0
    missing_images: int = 0
    unlisted_images: int = 0
    unreadable_images: int = 0  # generated images that cannot be decoded: skipped, not scored
    skipped_references: int = 0  # real train images skipped (unreadable, stray file in the folder)
    threshold: float | None = None
    score: str = "similarity"
    mean_similarity: float | None = None
    mean_margin: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _to_batch(
    images: torch.Tensor | Sequence[Image.Image | torch.Tensor], size: tuple[int, int]
) -> torch.Tensor:
    """``(B, 3, H, W)`` float in [0, 1] at ``size`` from a tensor batch or a list of PIL / tensors."""
    if isinstance(images, torch.Tensor):
        batch = images if images.ndim == 4 else images[None]
        batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
    else:
        items = []
        for im in images:
            if isinstance(im, Image.Image):
                t = pil_to_tensor01(im)[None]
            else:
                t = (im.float() / 255.0 if im.dtype == torch.uint8 else im.float())[None]
            if tuple(t.shape[-2:]) != tuple(size):
                t = TF.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
            items.append(t[0])
        batch = torch.stack(items)
    if tuple(batch.shape[-2:]) != tuple(size):
        batch = TF.interpolate(batch, size=size, mode="bilinear", antialias=True, align_corners=False)
    return batch.clamp(0, 1)


class IdentityFilter:
    """Score images by re-ID feature similarity to their identity's real-image centroid.

    Args:
        extractor: callable ``(B, 3, H, W) float [0, 1] -> (B, D)`` (normalised here, so any features do).
        image_size: ``(H, W)`` every image is resized to before extraction (one batch, one size).
        batch_size: images per extractor call.
        progress: show a progress bar while extracting features (``False``: nothing on stderr).
    """

    def __init__(
        self,
        extractor: FeatureFn,
        *,
        image_size: tuple[int, int] = (128, 64),
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        self.extractor = extractor
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size = int(batch_size)
        self.progress = bool(progress)
        self.reference: IdentityCentroids | None = None
        #: real images :meth:`fit` / :meth:`fit_market` skipped (unreadable, stray entries), and why.
        self.skipped_references = 0
        self.reference_errors: list[str] = []

    @property
    def pids(self) -> np.ndarray | None:
        """Identities with a centroid (sorted), or ``None`` before :meth:`fit`."""
        return None if self.reference is None else self.reference.pids

    @property
    def centroids(self) -> torch.Tensor | None:
        """``(P, D)`` normalised centroids (float64), or ``None`` before :meth:`fit`."""
        return None if self.reference is None else self.reference.centroids

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def features(self, images: torch.Tensor | Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        """L2-normalised ``(B, D)`` float32 CPU features."""
        batch = _to_batch(images, self.image_size)
        outs = []
        for i in range(0, len(batch), self.batch_size):
            f = torch.as_tensor(self.extractor(batch[i : i + self.batch_size])).float().cpu()
            if f.ndim != 2 or f.shape[0] != len(batch[i : i + self.batch_size]):
                raise FilterError(f"feature extractor returned shape {tuple(f.shape)}, expected (B, D)")
            outs.append(TF.normalize(f, dim=1))
        return torch.cat(outs) if outs else torch.zeros(0, 0)

    def readable_features(
        self, paths: Sequence[str | os.PathLike[str]], bad: BadInputPolicy, *, desc: str = "features"
    ) -> tuple[torch.Tensor, list[int]]:
        """Features of the readable files among ``paths`` and their indices in ``paths``; an unreadable
        file goes to ``bad`` (skipped and counted, or raised naming it when ``bad.strict``)."""
        outs, kept = [], []
        batches = range(0, len(paths), self.batch_size)
        for i in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not self.progress):
            ims = []
            for j in range(i, min(i + self.batch_size, len(paths))):
                try:
                    ims.append(load_image(paths[j], size=self.image_size))
                except ImageReadError as exc:
                    bad.skip_or_raise(exc)
                    continue
                kept.append(j)
            if ims:
                outs.append(self.features(ims))
        return (torch.cat(outs) if outs else torch.zeros(0, 0)), kept

    # ------------------------------------------------------------------ centroids
    def fit(
        self, paths: Sequence[str | os.PathLike[str]], pids: Sequence[int], *, strict: bool = False
    ) -> IdentityFilter:
        """Compute one centroid per identity from real images (paths and their pids).

        An unreadable image is skipped and counted in :attr:`skipped_references` (``strict``: raised)."""
        if len(paths) != len(pids) or not paths:
            raise FilterError(
                f"fit needs matching non-empty paths and pids, got {len(paths)} and {len(pids)}"
            )
        bad = BadInputPolicy(strict)
        feats, kept = self.readable_features(paths, bad, desc="real centroids")
        bad.warn("real reference images", logger)
        self.skipped_references += bad.skipped
        self.reference_errors.extend(bad.errors)
        if not kept:
            raise FilterError(f"none of the {len(paths)} real reference images could be read")
        self.set_centroids_from_features(feats, [pids[j] for j in kept])
        return self

    def fit_market(self, market_root: str | os.PathLike[str], *, strict: bool = False) -> IdentityFilter:
        """Centroids of the real ``bounding_box_train`` images of a Market-1501 folder (pids > 0).

        Stray entries of the folder and unreadable images are skipped and counted in
        :attr:`skipped_references` (``strict``: the first one raises, naming the file)."""
        market = Market1501(market_root, strict=strict)
        self.skipped_references += market.skipped["train"]
        self.reference_errors.extend(market.errors)
        recs = [r for r in market.train if r.has_identity]
        if not recs:
            raise FilterError(f"{market_root}: no real train image with a pid > 0 to build centroids from")
        return self.fit([r.path for r in recs], [r.pid for r in recs], strict=strict)

    def set_centroids_from_features(self, features: torch.Tensor, pids: Sequence[int]) -> None:
        """Centroids from real-image features and their pids (pids ≤ 0, junk and distractors, make none)."""
        try:
            self.reference = IdentityCentroids(features, np.asarray(pids, dtype=np.int64))
        except ValueError as exc:
            raise FilterError(str(exc)) from None

    # ------------------------------------------------------------------ scoring
    def score_features(self, features: torch.Tensor, pids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(similarity, margin)`` arrays for normalised features of images claimed to be ``pids``."""
        if self.reference is None:
            raise FilterError("IdentityFilter has no centroids; call fit() / fit_market() first")
        unknown = sorted({int(p) for p in pids} - {int(p) for p in self.reference.pids})
        if unknown:
            raise FilterError(f"identities {unknown[:10]} have no real train image to compare with")
        sim, other = self.reference.similarities(features, np.asarray(pids, dtype=np.int64))
        other = np.nan_to_num(other, nan=-1.0)  # a single identity: nothing to be confused with
        return sim, sim - other

    def score(
        self, images: torch.Tensor | Sequence[Image.Image | torch.Tensor], pids: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(similarity, margin)`` of images (tensor batch or list of PIL) claimed to show ``pids``."""
        return self.score_features(self.features(images), pids)


def select(
    scores: np.ndarray, *, threshold: float | None = None, keep_top: float | None = None
) -> tuple[np.ndarray, float | None]:
    """Keep mask for ``scores``: ``score >= threshold``, or the top ``keep_top`` fraction (ties kept).

    Returns ``(keep, threshold_used)``; with neither option every image is kept.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if threshold is not None and keep_top is not None:
        raise FilterError("give either a threshold or keep_top, not both")
    if keep_top is not None:
        if not 0.0 < keep_top <= 1.0:
            raise FilterError(f"keep_top must be a fraction in (0, 1], got {keep_top}")
        if len(scores) == 0:
            return np.zeros(0, bool), None
        n_keep = max(1, int(round(keep_top * len(scores))))
        threshold = float(np.sort(scores)[::-1][n_keep - 1])
    if threshold is None:
        return np.ones(len(scores), bool), None
    return scores >= threshold, float(threshold)


def load_extractor(checkpoint: str | os.PathLike[str], device: str | torch.device | None = None) -> FeatureFn:
    """A :class:`~posereid.reid_integration.torchreid_plugin.ReidFeatureExtractor` from a local
    posereid re-ID checkpoint (``save_reid_checkpoint``; the model resizes images to its own input size)."""
    from posereid.reid_integration.torchreid_plugin import ReidFeatureExtractor

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"{checkpoint}: re-ID checkpoint not found (train one with `posereid train-reid`)"
        )
    return ReidFeatureExtractor.from_checkpoint(checkpoint, device=device)


# --------------------------------------------------------------------------------------------------
# Re-filter an existing generated folder
# --------------------------------------------------------------------------------------------------
def filter_folder(
    gen_dir: str | os.PathLike[str],
    market_root: str | os.PathLike[str],
    identity_filter: IdentityFilter,
    *,
    threshold: float | None = None,
    keep_top: float | None = None,
    score: ScoreName = "similarity",
    mode: Literal["move", "manifest-only"] = "move",
    strict: bool = False,
) -> FilterSummary:
    """Score every generated image listed in the manifest(s) of ``gen_dir`` and apply the decision.

    Centroids come from the real train images of ``market_root`` unless ``identity_filter`` already has
    some. ``mode="move"`` moves rejected images to ``gen_dir/rejected/`` (and kept ones back);
    ``"manifest-only"`` only records the scores and the ``kept`` flag. An unreadable image (generated or
    real) is skipped and counted in the summary; ``strict=True`` raises at the first one, naming it,
    before anything is moved or rewritten.

    The run holds ``gen_dir`` to itself (:class:`~posereid.models.locks.GeneratedFolderLock` without a
    shard): while a ``generate`` or another ``filter`` writes the folder it raises
    :class:`~posereid.models.locks.OutputLockedError` naming that run, and a ``generate`` started meanwhile
    stops the same way.
    """
    gen_dir = Path(gen_dir)
    # the folder to itself; a missing folder gets no lock (and the error from the body, not a new folder)
    lock = GeneratedFolderLock(gen_dir, what="posereid filter") if gen_dir.is_dir() else nullcontext()
    with lock:
        if score not in ("similarity", "margin"):
            raise FilterError(f"score must be 'similarity' or 'margin', got {score!r}")
        if mode not in ("move", "manifest-only"):
            raise FilterError(f"mode must be 'move' or 'manifest-only', got {mode!r}")
        train_dir, rej_dir = gen_dir / TRAIN_DIR, gen_dir / REJECTED_DIR
        parts = manifest_paths(gen_dir)
        if not parts:
            raise FilterError(
                f"{gen_dir}: no manifest*.jsonl (is this a folder written by `posereid generate`?)"
            )
        summary = FilterSummary(threshold=threshold, score=score)

        # every name is checked (plain file name, no symlink out of the folder) before anything is read or
        # moved: a crafted manifest aborts the run with the file, line and name, leaving the folder as it was
        part_lines = {p: read_manifest_lines(p, drop_partial_last=False)[0] for p in parts}
        part_entries = {p: [e for _, e in numbered] for p, numbered in part_lines.items()}
        located: list[tuple[Path, int, Path]] = []  # (part, index in part, current file)
        listed: set[str] = set()
        for part, numbered in part_lines.items():
            for i, (lineno, e) in enumerate(numbered):
                listed.add(e["name"])
                where = f"{part} line {lineno}"
                candidates = [safe_child(d, e["name"], source=where) for d in (train_dir, rej_dir)]
                here = next((c for c in candidates if c.is_file()), None)
                if here is None:
                    summary.missing_images += 1
                    logger.warning(
                        "%s: %s is listed but missing from %s and %s", part, e["name"], train_dir, rej_dir
                    )
                    continue
                located.append((part, i, here))
        on_disk = {p.name for d in (train_dir, rej_dir) if d.is_dir() for p in d.glob("*.jpg")}
        summary.unlisted_images = len(on_disk - listed)
        if summary.unlisted_images:
            logger.warning(
                "%s: %d image(s) have no manifest line (not scored; run `posereid generate` again to reconcile)",
                gen_dir,
                summary.unlisted_images,
            )

        if identity_filter.centroids is None:
            identity_filter.fit_market(market_root, strict=strict)
        summary.skipped_references = identity_filter.skipped_references
        pids = [int(part_entries[part][i]["source_pid"]) for part, i, _ in located]
        known = {int(p) for p in identity_filter.pids}
        for (part, i, _), pid in zip(located, pids):
            if pid not in known:
                raise FilterError(
                    f"{part}: {part_entries[part][i]['name']} has source_pid {pid}, which has no real train image "
                    f"in {market_root} (synthetic images must keep a real identity's pid)"
                )
        bad = BadInputPolicy(strict)
        feats, readable = identity_filter.readable_features([f for _, _, f in located], bad, desc="generated")
        bad.warn(f"{gen_dir}: generated images", logger)
        summary.unreadable_images = bad.skipped  # skipped: not scored, not moved, manifest line unchanged
        located, pids = [located[j] for j in readable], [pids[j] for j in readable]
        sim, margin = identity_filter.score_features(feats, pids) if located else (np.zeros(0), np.zeros(0))
        keep, summary.threshold = select(
            sim if score == "similarity" else margin, threshold=threshold, keep_top=keep_top
        )
        summary.scored = len(located)
        summary.kept, summary.rejected = int(keep.sum()), int((~keep).sum())
        if len(located):
            summary.mean_similarity, summary.mean_margin = float(sim.mean()), float(margin.mean())

        for (part, i, path), k, s, m in zip(located, keep, sim, margin):
            entry = part_entries[part][i]
            entry.update(filter_score=round(float(s), 6), filter_margin=round(float(m), 6), kept=bool(k))
            if mode == "move":
                dest_dir = train_dir if k else rej_dir
                if path.parent != dest_dir:
                    dest_dir.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(path), str(dest_dir / path.name))  # same filesystem: an atomic rename
                    if k:
                        summary.restored += 1
                    else:
                        summary.moved_to_rejected += 1
        for part, entries in part_entries.items():
            write_manifest_file(part, entries)
        logger.info("filter %s: %s", gen_dir, summary)
        return summary


__all__ = ["FilterError", "FilterSummary", "IdentityFilter", "filter_folder", "load_extractor", "select"]
