"""Extract COCO-18 keypoints for a folder of images into a PATN annotation CSV (the library of ``posereid
annotate``, whose command line is in :mod:`posereid.reid_integration.cli`).

Keys are bare file names, like PATN's ``market-annotation-*.csv`` (with ``recursive=True`` two images of
the same name in different sub-folders are an error, not a silent overwrite). Coordinates are in each
image's own pixel frame: for Market-1501 crops that is PATN's 128×64 frame; images of other sizes keep
their own size (read such a CSV with ``read_patn_csv(path, image_hw=None)`` or with their size).

Unreadable images are logged and counted and get no row; images without a detected person get an all
``-1`` row and are counted.

Runs are resumable, because annotating Market-1501 takes hours:

* every row goes to the progress file ``<out>.partial`` (see :func:`partial_path`) as soon as its image is
  done: a PATN header, then one complete ``name:keypoints_y:keypoints_x`` line per image, flushed to the
  OS after each line (so Ctrl-C or ``kill -9`` loses nothing) and ``fsync``'d every ``sync_every``
  rows and when the run stops (so a power cut loses at most that many);
* the CSV at ``out`` is written atomically (temporary sibling, ``os.replace``) only when every image is
  done, then the progress file is deleted. It is never half-written, and it is byte-identical to the
  CSV of an uninterrupted run;
* running the same command again reuses the rows of ``<out>.partial`` and of an existing ``out`` CSV and
  annotates only the other images (so a finished run is a no-op, and images added to the folder later
  are annotated on their own). A last line without its newline (a kill mid-write) is dropped and its
  image annotated again. No-person rows are reused like any other row (they are never retried);
  unreadable files have no row, so they are tried again on every run (a fixed file gets annotated);
* ``overwrite=True`` (``--overwrite``) deletes ``out`` and ``<out>.partial`` first and annotates every
  image again: use it after changing the estimator's settings (e.g. ``--min-visibility``), which the
  files do not record. A reused file with rows for images that are not in the folder (an ``--out`` meant
  for another folder) is an error, never merged or silently dropped;
* a second run on the same output stops at once with :class:`AnnotateLockedError`, naming the first run
  (host, pid, command, start time): runs hold the lock file ``<out>.lock`` (:func:`lock_path`; the shared
  output lock of :mod:`posereid.models.locks`, i.e. ``flock``, which NFS clients carry across hosts
  sharing the disk). The lock dies with its process, so the run after a crash or a ``kill -9`` takes it
  over at once; the file itself stays, as lock files do.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm.auto import tqdm

from posereid.models.io_utils import is_temp_file
from posereid.models.locks import OutputLock, OutputLockedError
from posereid.models.pose import visible_mask
from posereid.models.pose_estimation import PoseEstimator
from posereid.reid_integration.market1501 import (
    IMAGE_EXTENSIONS,
    PATN_HEADER,
    BadInputPolicy,
    ImageReadError,
    MarketFormatError,
    format_patn_row,  # the PATN row format, shared so progress lines are the CSV's rows
    load_image,
    parse_patn_row,
    read_patn_csv,
    write_patn_csv,
)

logger = logging.getLogger(__name__)

#: Appended to the output CSV's name to name the progress file of an unfinished run.
PARTIAL_SUFFIX = ".partial"


class AnnotateLockedError(OutputLockedError, OSError):
    """Another run holds the progress file of the same output CSV (an ``OSError`` too, as before)."""


@dataclass(frozen=True)
class AnnotateSummary:
    """What :func:`annotate_folder` did."""

    folder: Path
    out_csv: Path
    images: int  # image files found
    processed: int  # rows written (= images decoded and run through the estimator, now or in a run resumed)
    no_person: int  # rows where no person was found (all -1)
    unreadable: int  # files that could not be decoded (no row, logged)
    bad_names: int  # names a PATN CSV cannot hold (contain ':' or a line break), skipped and logged
    seconds: float
    reused: int = 0  # of ``processed``: rows taken from ``<out>.partial`` or an existing CSV, not re-run

    @property
    def annotated(self) -> int:
        """Images run through the estimator in this call."""
        return self.processed - self.reused

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / max(self.annotated, 1)

    def __str__(self) -> str:
        reused = f" ({self.reused} reused from an earlier run)" if self.reused else ""
        return (
            f"annotated {self.processed}/{self.images} images from {self.folder} -> {self.out_csv}{reused}: "
            f"{self.no_person} without a person, {self.unreadable} unreadable (skipped), "
            f"{self.bad_names} bad names (skipped); {self.ms_per_image:.1f} ms/image"
        )


def partial_path(out_csv: str | os.PathLike[str]) -> Path:
    """The progress file of an unfinished run writing ``out_csv``: ``<out_csv>.partial``."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.name + PARTIAL_SUFFIX)


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


def _bad_name_reason(name: str) -> str | None:
    """Why ``name`` cannot be a PATN key (one ``:``-separated field of one UTF-8 line), or None."""
    if ":" in name:
        return "':' is the PATN separator and cannot be in a name"
    if any(c in name for c in "\r\n\0"):
        return "a line break or NUL cannot be in a name"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    return None


def lock_path(out_csv: str | os.PathLike[str]) -> Path:
    """The lock file of runs writing ``out_csv``: ``<out_csv>.lock`` (left in place, as file locks are)."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.name + ".lock")


class _Journal:
    """The append-only progress file: a PATN header, then one complete row per line.

    Only lines that end in ``\\n`` count: a torn last line is cut off the file before anything is
    appended, so a new row never continues it.
    """

    def __init__(self, path: Path, lock: Path, *, sync_every: int, discard: bool = False) -> None:
        self.path = path
        self.sync_every = max(int(sync_every), 1)
        self._unsynced = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        # held from before the progress file is opened until after it is closed (or deleted); the kernel
        # drops it when its process dies, so a killed run's lock never blocks the next one
        self._lock = OutputLock(lock, what="posereid annotate", subject=path, error=AnnotateLockedError)
        self._lock.acquire()  # at once, or AnnotateLockedError naming the other run and the lock file
        try:
            self._fh: BinaryIO = open(path, "a+b")  # closed in close()
        except BaseException:
            self._lock.release()
            raise
        try:
            if discard:
                self._fh.truncate(0)
            self.rows = self._load()  # rows of earlier runs (name → PATN ints), file order
        except BaseException:
            self._fh.close()
            self._lock.release()
            raise
        self.appended = 0

    def _load(self) -> dict[str, np.ndarray]:
        self._fh.seek(0)
        data = self._fh.read()
        end = data.rfind(b"\n") + 1  # everything after the last newline is an unfinished write
        if end < len(data):
            logger.warning(
                "%s: dropping a truncated last line (%d bytes) left by an interrupted run; "
                "its image is annotated again",
                self.path,
                len(data) - end,
            )
            self._fh.truncate(end)
            self._sync()
        lines = data[:end].split(b"\n")[:-1]
        if not lines:
            self._fh.write(f"{PATN_HEADER}\n".encode())
            self._sync()
            return {}
        if lines[0] != PATN_HEADER.encode():
            raise MarketFormatError(
                f"{self.path} line 1: not a `posereid annotate` progress file (expected header "
                f"{PATN_HEADER!r}); move it away or pass --overwrite"
            )
        rows: dict[str, np.ndarray] = {}
        errors: list[str] = []
        for lineno, raw in enumerate(lines[1:], start=2):
            where = f"{self.path} line {lineno}"
            try:
                if b"\0" in raw:  # zero-filled blocks after an OS crash
                    raise MarketFormatError(f"{where}: NUL bytes")
                name, kps = parse_patn_row(raw.decode("utf-8"), where, None)
            except (MarketFormatError, UnicodeDecodeError) as exc:
                errors.append(str(exc))
                continue
            rows[name] = kps
        if errors:
            logger.warning(
                "%s: ignoring %d malformed line(s), their images are annotated again; first: %s",
                self.path,
                len(errors),
                errors[0],
            )
        return rows

    def append(self, name: str, kps: np.ndarray, source: str) -> None:
        """Add one row as one complete line, handed to the OS at once (fsync'd every ``sync_every``)."""
        line = format_patn_row(name, kps, source=source) + "\n"
        self._fh.write(line.encode("utf-8"))
        self._fh.flush()
        self.appended += 1
        self._unsynced += 1
        if self._unsynced >= self.sync_every:
            self._sync()

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._unsynced = 0

    def close(self, *, remove: bool) -> None:
        """Release the file; ``remove`` deletes it (the CSV is complete, or nothing was ever saved)."""
        try:
            if remove:
                self.path.unlink(missing_ok=True)  # while locked, so no other run is appending to it
            else:
                self._sync()
        finally:
            try:
                self._fh.close()
            finally:
                self._lock.release()


def _reject_foreign(rows: dict[str, np.ndarray], names: set[str], source: Path, folder: Path) -> None:
    """Refuse to reuse a file with rows for images that are not in the folder (written for another one)."""
    foreign = [n for n in rows if n not in names]
    if foreign:
        raise MarketFormatError(
            f"{source} has rows for {len(foreign)} image(s) that are not in {folder} (e.g. {foreign[0]!r}); "
            "was it written for another folder? Choose another --out, or pass --overwrite to annotate "
            "this folder from scratch"
        )


def annotate_folder(
    folder: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    estimator: Callable[[object], np.ndarray] | None = None,
    recursive: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    sync_every: int = 256,
    strict: bool = False,
) -> AnnotateSummary:
    """Run a pose estimator over every image in ``folder`` and write a PATN CSV to ``out_csv``; resumable.

    Progress is saved in ``<out_csv>.partial`` as it goes; calling again with the same arguments after an
    interruption (or after new images were added) annotates only the images that have no row yet in that
    file or in an existing ``out_csv`` (see the module docstring). The CSV is the same, byte for byte, as
    an uninterrupted run's.

    Args:
        estimator: callable ``PIL RGB image → (18, 2)`` (x, y) keypoints; default a new
            :class:`~posereid.models.pose_estimation.PoseEstimator` (needs ``posereid[pose]``), closed
            when done.
        recursive: include sub-folders.
        progress: show a tqdm bar.
        overwrite: delete ``out_csv`` and its progress file first and annotate every image again.
        sync_every: ``fsync`` the progress file after this many new rows (each row is flushed at once).
        strict: stop at the first unreadable image or bad name (the rows so far stay in the progress
            file) instead of skipping it and counting it in the summary (the default).

    Raises:
        MissingExtraError: no ``estimator`` given and mediapipe is not installed.
        MarketFormatError: ``out_csv`` or its progress file is not a PATN file, or has rows for images
            that are not in ``folder``.
        AnnotateLockedError: another run is writing the same ``out_csv``.
    """
    folder, out_csv = Path(folder), Path(out_csv)
    files = list_images(folder, recursive=recursive)
    names = {p.name for p in files}
    own = estimator is None
    est = PoseEstimator() if own else estimator
    journal: _Journal | None = None
    started = completed = False
    rows: dict[str, np.ndarray] = {}
    reused = unreadable = bad_names = 0
    bad = BadInputPolicy(strict)
    start = time.perf_counter()
    try:
        journal = _Journal(
            partial_path(out_csv), lock_path(out_csv), sync_every=sync_every, discard=overwrite
        )
        if overwrite:
            out_csv.unlink(missing_ok=True)
        previous = read_patn_csv(out_csv, image_hw=None) if out_csv.exists() else {}
        _reject_foreign(previous, names, out_csv, folder)
        _reject_foreign(journal.rows, names, journal.path, folder)
        done: dict[str, np.ndarray] = {**previous, **journal.rows}
        reused = len(done)
        if reused:
            logger.info(
                "%s: reusing %d row(s) from an earlier run (%d from %s, %d from %s); %d image(s) left",
                folder,
                reused,
                len(previous),
                out_csv,
                len(journal.rows),
                journal.path,
                len(files) - reused,
            )
        todo = [p for p in files if p.name not in done]
        started = True
        for path in tqdm(todo, desc="annotate", unit="img", disable=not progress):
            reason = _bad_name_reason(path.name)
            if reason is not None:
                bad.skip_or_raise(MarketFormatError(f"{path}: {reason}"), "bad name(s)")
                bad_names += 1
                logger.warning("skipping %s: %s", path, reason)
                continue
            try:
                image = load_image(path)
            except ImageReadError as exc:
                bad.skip_or_raise(exc, "unreadable image(s)")
                unreadable += 1
                logger.warning("skipping unreadable image: %s", exc)
                continue
            kps = est(image)
            journal.append(path.name, kps, source=f"{path}: the estimator's output")
            done[path.name] = kps  # write_patn_csv rounds it exactly as the journal line did
        rows = {p.name: done[p.name] for p in files if p.name in done}  # listing order, as in one pass
        if journal.appended or journal.rows or list(previous) != list(rows):
            write_patn_csv(out_csv, rows)  # atomic: a kill here leaves the old file (or none) and the journal
        completed = True
    finally:
        if own:
            est.close()  # type: ignore[union-attr]
        if journal is not None:
            saved = len(journal.rows) + journal.appended
            journal.close(remove=completed or saved == 0)
            if started and not completed and saved:
                logger.warning(
                    "%s: stopped before the end; %d row(s) are saved in %s, run the same command again "
                    "to resume",
                    folder,
                    saved,
                    journal.path,
                )
    seconds = time.perf_counter() - start
    no_person = sum(not visible_mask(kps).any() for kps in rows.values())
    if unreadable or bad_names:
        logger.warning("%s: skipped %d unreadable image(s) and %d bad name(s)", folder, unreadable, bad_names)
    return AnnotateSummary(
        folder=folder,
        out_csv=out_csv,
        images=len(files),
        processed=len(rows),
        no_person=no_person,
        unreadable=unreadable,
        bad_names=bad_names,
        seconds=seconds,
        reused=reused,
    )


__all__ = [
    "PARTIAL_SUFFIX",
    "AnnotateLockedError",
    "AnnotateSummary",
    "annotate_folder",
    "list_images",
    "lock_path",
    "partial_path",
]
