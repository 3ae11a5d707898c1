"""Extract COCO-18 keypoints for a folder of images into a PATN annotation CSV (``posereid annotate``).

Keys are bare file names, like PATN's ``market-annotation-*.csv`` (with ``recursive=True`` two images of
the same name in different sub-folders are an error, not a silent overwrite). Coordinates are in each
image's own pixel frame: for Market-1501 crops that is PATN's 128×64 frame; images of other sizes keep
their own size (read such a CSV with ``read_patn_csv(path, image_hw=None)`` or with their size).

Unreadable images are logged and counted and get no row; images without a detected person get an all
``-1`` row and are counted. The CSV is written atomically once every image is done.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from posereid.models.io_utils import is_temp_file
from posereid.models.pose import visible_mask
from posereid.models.pose_estimation import MissingExtraError, PoseEstimator
from posereid.reid_integration.market1501 import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    MarketFormatError,
    load_image,
    write_patn_csv,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnotateSummary:
    """What :func:`annotate_folder` did."""

    folder: Path
    out_csv: Path
    images: int  # image files found
    processed: int  # decoded and run through the estimator (= rows written)
    no_person: int  # processed images where no person was found (all -1 rows)
    unreadable: int  # files that could not be decoded (no row, logged)
    bad_names: int  # names a PATN CSV cannot hold (contain ':'), skipped and logged
    seconds: float

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / max(self.processed, 1)

    def __str__(self) -> str:
        return (
            f"annotated {self.processed}/{self.images} images from {self.folder} -> {self.out_csv}: "
            f"{self.no_person} without a person, {self.unreadable} unreadable (skipped), "
            f"{self.bad_names} bad names (skipped); {self.ms_per_image:.1f} ms/image"
        )


def list_images(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Image files (``.jpg/.jpeg/.png``) in ``folder``, sorted; temporary files are ignored.

    Raises :class:`MarketFormatError` if ``recursive`` finds two files with the same name (their PATN
    keys would collide).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a directory")
    it = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(
        p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not is_temp_file(p)
    )
    seen: dict[str, Path] = {}
    for p in files:
        if p.name in seen:
            raise MarketFormatError(
                f"{p} and {seen[p.name]} have the same file name; PATN CSVs are keyed by name, "
                "so annotate the folders separately"
            )
        seen[p.name] = p
    return files


def annotate_folder(
    folder: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    estimator: Callable[[object], np.ndarray] | None = None,
    recursive: bool = False,
    progress: bool = True,
) -> AnnotateSummary:
    """Run a pose estimator over every image in ``folder`` and write a PATN CSV to ``out_csv``.

    Args:
        estimator: callable ``PIL RGB image → (18, 2)`` (x, y) keypoints; default a new
            :class:`~posereid.models.pose_estimation.PoseEstimator` (needs ``posereid[pose]``), closed
            when done.
        recursive: include sub-folders.
        progress: show a tqdm bar.

    Raises:
        MissingExtraError: no ``estimator`` given and mediapipe is not installed.
    """
    folder, out_csv = Path(folder), Path(out_csv)
    files = list_images(folder, recursive=recursive)
    own = estimator is None
    est = PoseEstimator() if own else estimator
    rows: dict[str, np.ndarray] = {}
    no_person = unreadable = bad_names = 0
    start = time.perf_counter()
    try:
        for path in tqdm(files, desc="annotate", unit="img", disable=not progress):
            if ":" in path.name:
                bad_names += 1
                logger.warning("skipping %s: ':' is the PATN separator and cannot be in a name", path)
                continue
            try:
                image = load_image(path)
            except ImageReadError as exc:
                unreadable += 1
                logger.warning("skipping unreadable image: %s", exc)
                continue
            kps = np.asarray(est(image), dtype=np.float32)
            if not visible_mask(kps).any():
                no_person += 1
            rows[path.name] = kps
    finally:
        if own:
            est.close()  # type: ignore[union-attr]
    seconds = time.perf_counter() - start
    write_patn_csv(out_csv, rows)
    if unreadable or bad_names:
        logger.warning("%s: skipped %d unreadable image(s) and %d bad name(s)", folder, unreadable, bad_names)
    return AnnotateSummary(folder, out_csv, len(files), len(rows), no_person, unreadable, bad_names, seconds)


# --------------------------------------------------------------------------------------------------
# CLI: posereid annotate DIR --out CSV
# --------------------------------------------------------------------------------------------------
def add_annotate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="folder of person images")
    parser.add_argument("--out", type=Path, required=True, metavar="CSV", help="PATN annotation CSV to write")
    parser.add_argument("--recursive", action="store_true", help="also annotate images in sub-folders")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--min-visibility",
        type=float,
        default=0.5,
        help="BlazePose visibility below which a joint is missing",
    )


def run_annotate(args: argparse.Namespace) -> int:
    try:
        estimator = PoseEstimator(min_visibility=args.min_visibility)
    except MissingExtraError as exc:
        print(f"posereid annotate: error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = annotate_folder(
            args.dir, args.out, estimator=estimator, recursive=args.recursive, progress=not args.no_progress
        )
    except (NotADirectoryError, MarketFormatError) as exc:
        print(f"posereid annotate: error: {exc}", file=sys.stderr)
        return 2
    finally:
        estimator.close()
    print(summary)
    return 0


__all__ = ["AnnotateSummary", "add_annotate_args", "annotate_folder", "list_images", "run_annotate"]
