"""Market-1501 folder I/O: file names, folders, images, PATN keypoint CSVs and pair CSVs.

Market-1501 names its files ``PPPP_cCsS_FFFFFF_BB.jpg``: person id (``-1`` = junk, ``0000`` =
distractor), 1-based camera, sequence, frame and detection box. :class:`Market1501` parses a folder laid
out like the official release (``bounding_box_train``, ``query``, ``bounding_box_test``, ``gt_bbox``);
:class:`MarketWriter` writes one that torchreid's own ``Market1501`` dataset loads.

Keypoints are ``(18, 2)`` float32 **(x, y)** arrays (COCO-18 order, ``-1`` missing, see
:mod:`posereid.models.pose`). The PATN annotation CSV stores **y first**; only :func:`read_patn_csv` and
:func:`write_patn_csv` know that.

Every reader raises an error that names the file (and line); every writer writes a temporary sibling and
moves it into place, so a killed job never leaves a half-written file.

**Names read from files are untrusted.** Every image name read from a PATN CSV, a pairs CSV, a generation
manifest or a pose bank must be a plain file name (:func:`check_file_name`), and code that joins such a
name with a folder does it through :func:`safe_child`, which also refuses a symlink that leads outside the
folder. Both raise :class:`UnsafeNameError` naming the file, the line and the offending name.

**The keypoint frame comes from the data.** The ``(H, W)`` frame of a PATN CSV's coordinates is the size
of the images it annotates (:func:`annotation_frame`; images of mixed sizes are an error unless a frame is
given explicitly, e.g. by ``--annotation-size HxW``, :func:`add_annotation_size_arg`), and a keypoint
outside that frame is an error naming the file and line, or a counted skip (:func:`load_annotations`) —
never silently squeezed or dropped.

**One bad input never stops a batch.** Every batch command (``annotate``, ``train-generator``,
``generate``, ``filter``, ``train-reid``, ``evaluate-generator``) treats an unreadable image, a malformed
row or a stray file (a non-Market name, a broken symlink or a symlink loop in a split folder) the same
way, through :class:`BadInputPolicy`: skip it, count it, log one warning naming an example, and report
the count in the command's summary; ``--strict`` (:func:`add_strict_arg`, one help text for every
command) stops at the first one instead, with an error naming the file.
"""

from __future__ import annotations

import argparse
import csv
import errno
import io
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from posereid.models.images import tensor01_to_pil
from posereid.models.io_utils import atomic_save, atomic_write, is_temp_file
from posereid.models.pose import NUM_KEYPOINTS, as_keypoints

logger = logging.getLogger(__name__)


class MarketFormatError(ValueError):
    """A file name, CSV row or folder that does not follow the Market-1501 / PATN format."""


class ImageReadError(OSError):
    """An image file that cannot be decoded (missing, empty, truncated, not an image)."""


class UnsafeNameError(MarketFormatError):
    """A name read from a file (CSV, manifest, pose bank) that is not a plain file name inside its folder:
    a path with separators, ``..``, an absolute path, or a symlink that resolves outside the folder."""


#: split name → folder name inside a Market-1501 data directory.
SPLIT_DIRS: dict[str, str] = {
    "train": "bounding_box_train",
    "query": "query",
    "gallery": "bounding_box_test",
    "gt_bbox": "gt_bbox",
}
#: Extensions treated as images when scanning a split folder (other files, e.g. ``Thumbs.db``, are ignored).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: Sub-folder the official archive unpacks to; :class:`Market1501` and torchreid both look for it.
RELEASE_DIR = "Market-1501-v15.09.15"

#: The frame of the official PATN Market-1501 annotations (and of Market-1501's crops).
PATN_FRAME: tuple[int, int] = (128, 64)
PATN_HEADER = "name:keypoints_y:keypoints_x"
PAIRS_HEADER = ("from", "to")

_NAME_RE = re.compile(r"^(-1|\d+)_c(\d)s(\d+)_(\d+)_(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------
# File names
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MarketRecord:
    """One image of a Market-1501 folder. ``camid`` is 0-based (like torchreid); the file name's is 1-based."""

    path: Path
    pid: int
    camid: int
    seq: int
    frame: int
    bbox: int
    split: str

    @property
    def name(self) -> str:
        """The file name (the key of PATN annotation and pair CSVs)."""
        return self.path.name

    @property
    def is_junk(self) -> bool:
        return self.pid == -1

    @property
    def is_distractor(self) -> bool:
        return self.pid == 0


def parse_market_name(name: str) -> tuple[int, int, int, int, int]:
    """Parse ``'0002_c1s1_000451_03.jpg'`` → ``(pid, cam, seq, frame, bbox)`` with ``cam`` 1-based.

    ``pid`` is ``-1`` for junk and ``0`` for distractors. Raises :class:`MarketFormatError` otherwise.
    """
    base = os.path.basename(str(name))
    m = _NAME_RE.match(base)
    if m is None:
        raise MarketFormatError(
            f"{name!r} is not a Market-1501 file name (expected PPPP_cCsS_FFFFFF_BB.jpg, "
            "e.g. '0002_c1s1_000451_03.jpg')"
        )
    pid, cam, seq, frame, bbox = (int(g) for g in m.groups()[:5])
    if cam < 1:
        raise MarketFormatError(f"{name!r}: camera must be 1..9 (the file name's camera is 1-based)")
    return pid, cam, seq, frame, bbox


def format_market_name(
    pid: int, cam: int, seq: int = 1, frame: int = 0, bbox: int = 1, ext: str = "jpg"
) -> str:
    """Build a Market-1501 file name; ``cam`` is 1-based. ``format_market_name(2, 1, 1, 451, 3)`` →
    ``'0002_c1s1_000451_03.jpg'``; ``pid=-1`` gives ``'-1_c1s1_…'`` like the official junk images."""
    pid, cam, seq, frame, bbox = (int(v) for v in (pid, cam, seq, frame, bbox))
    if pid < -1:
        raise ValueError(f"pid must be >= -1 (-1 junk, 0 distractor), got {pid}")
    if not 1 <= cam <= 9:
        raise ValueError(f"cam must be 1..9 (1-based, one digit), got {cam}")
    if seq < 0 or frame < 0 or bbox < 0:
        raise ValueError(f"seq, frame and bbox must be >= 0, got seq={seq} frame={frame} bbox={bbox}")
    ext = ext.lstrip(".").lower()
    if f".{ext}" not in IMAGE_EXTENSIONS:
        raise ValueError(f"ext must be one of {IMAGE_EXTENSIONS}, got {ext!r}")
    pid_str = "-1" if pid == -1 else f"{pid:04d}"
    return f"{pid_str}_c{cam}s{seq}_{frame:06d}_{bbox:02d}.{ext}"


# --------------------------------------------------------------------------------------------------
# Names read from files
# --------------------------------------------------------------------------------------------------
def check_file_name(name: object, *, source: str) -> str:
    """Return ``name`` if it is a plain file name (no folder part), else raise :class:`UnsafeNameError`.

    Refused: non-strings, empty names, ``.`` / ``..``, names with ``/`` or ``\\`` or NUL, absolute paths
    and Windows drive names. ``source`` says where the name was read (e.g. ``"FILE line N"``) and starts
    the error message.
    """
    if not isinstance(name, str) or not name:
        raise UnsafeNameError(f"{source}: image name {name!r} is not a non-empty string")
    if (
        name in (".", "..")
        or any(c in name for c in "/\\\0")
        or os.path.isabs(name)
        or PureWindowsPath(name).drive
    ):
        raise UnsafeNameError(
            f"{source}: image name {name!r} is not a plain file name (a path, '..' or an absolute name "
            "would reach outside its folder)"
        )
    return name


def safe_child(root: str | os.PathLike[str], name: object, *, source: str) -> Path:
    """``root / name`` for a ``name`` read from a file, guaranteed to stay inside ``root``.

    ``name`` must be a plain file name (:func:`check_file_name`), and the path must resolve inside
    ``root`` with symlinks followed (a symlink in ``root`` that points elsewhere is refused; ``root``
    itself may be a symlink). The file need not exist. Raises :class:`UnsafeNameError` naming ``source``
    (the file and line the name came from), the name and, for a symlink, where it leads.
    """
    check_file_name(name, source=source)
    root = Path(root)
    path = root / str(name)
    try:
        real_root, real = root.resolve(), path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise UnsafeNameError(f"{source}: image name {name!r} in {root} cannot be resolved ({exc})") from None
    if real == real_root or not real.is_relative_to(real_root):
        raise UnsafeNameError(
            f"{source}: image name {name!r} resolves to {real}, outside {root} (a symlink leading out of "
            "the folder); refusing to read or move it"
        )
    return path


# --------------------------------------------------------------------------------------------------
# Bad inputs in batch commands: skip, count and report, or stop (--strict)
# --------------------------------------------------------------------------------------------------
#: the help of ``--strict``, the same in every batch command.
STRICT_HELP = (
    "stop at the first unreadable image or malformed row (or stray file in a Market folder), with an "
    "error naming the file, instead of skipping it, counting it and reporting the count in the summary "
    "(the default)"
)


def add_strict_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--strict`` (:data:`STRICT_HELP`) to a batch command's parser."""
    parser.add_argument("--strict", action="store_true", help=STRICT_HELP)


class BadInputPolicy:
    """What a batch command does with one bad input, the same everywhere (see the module docstring).

    Call :meth:`skip_or_raise` with the error of each bad input (an error that names the file, and the
    line for a row): with ``strict`` it is raised at once; otherwise it is counted per ``kind``
    (:attr:`counts`, :attr:`skipped`), its message kept (:attr:`errors`, the first ``max_errors``) and
    logged at debug level. :meth:`warn` then logs one warning for the whole batch naming an example, and
    the command puts :attr:`skipped` (or :meth:`describe`) in its summary.
    """

    def __init__(self, strict: bool = False, *, max_errors: int = 20) -> None:
        self.strict = bool(strict)
        self.max_errors = int(max_errors)
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []

    def skip_or_raise(self, exc: BaseException, kind: str = "unreadable image(s)") -> None:
        """Raise ``exc`` if strict, else count it under ``kind`` and go on (the caller skips the input)."""
        if self.strict:
            raise exc
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.errors) < self.max_errors:
            self.errors.append(str(exc))
        logger.debug("skipping: %s", exc)

    @property
    def skipped(self) -> int:
        """How many inputs were skipped."""
        return sum(self.counts.values())

    def describe(self) -> str:
        """``"2 unreadable image(s), 1 file(s) with a bad name"``, or ``"none"``."""
        return ", ".join(f"{n} {kind}" for kind, n in self.counts.items()) or "none"

    def warn(self, where: str, log: logging.Logger | None = None) -> None:
        """One warning for the batch (if anything was skipped), naming the first bad input."""
        if self.skipped:
            (log or logger).warning(
                "%s: skipped %s (--strict stops at the first instead); e.g. %s",
                where,
                self.describe(),
                self.errors[0],
            )


def _listed_file(entry: os.DirEntry, path: Path) -> bool:
    """Whether a folder entry is a file to read: False for a folder; :class:`ImageReadError` naming the
    entry for a broken symlink, a symlink loop or an entry that cannot be examined."""
    try:
        if entry.is_file():
            return True
        if entry.is_symlink():
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            raise ImageReadError(f"{path}: broken symbolic link (its target {target!r} does not exist)")
        return False
    except ImageReadError:
        raise
    except OSError as exc:  # is_file() follows symlinks and raises ELOOP / EACCES / …
        what = "symbolic link loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise ImageReadError(f"{path}: cannot be read ({what})") from None


# --------------------------------------------------------------------------------------------------
# Folder parser
# --------------------------------------------------------------------------------------------------
def resolve_data_dir(root: str | os.PathLike[str]) -> Path:
    """The folder that holds the split folders: ``root`` itself, ``root/Market-1501-v15.09.15``,
    ``root/market1501/Market-1501-v15.09.15`` or ``root/market1501`` (torchreid's layouts)."""
    root = Path(root).expanduser()
    candidates = [root, root / RELEASE_DIR, root / "market1501" / RELEASE_DIR, root / "market1501"]
    for cand in candidates:
        if any((cand / d).is_dir() for d in SPLIT_DIRS.values()):
            return cand
    raise MarketFormatError(
        f"{root}: no Market-1501 split folder found (looked for {', '.join(SPLIT_DIRS.values())} in "
        f"{', '.join(str(c) for c in candidates)})"
    )


class Market1501:
    """A Market-1501-format folder parsed into :class:`MarketRecord` lists.

    Args:
        root: the data directory or a parent (see :func:`resolve_data_dir`).
        strict: the batch policy (:class:`BadInputPolicy`) for a stray entry in a split folder: an image
            file whose name is not a Market name, a broken symlink, a symlink loop or an entry that cannot
            be examined. By default it is skipped and counted in :attr:`skipped` (per split; the messages
            in :attr:`errors`), with one warning per folder naming an example; ``strict=True`` raises
            :class:`MarketFormatError` (bad name) or :class:`ImageReadError` (unreadable entry) naming
            the file.

    Splits whose folder is absent are empty lists (``gt_bbox`` is often not shipped). Records are sorted
    by file name, so two parses of the same folder give the same order.
    """

    def __init__(self, root: str | os.PathLike[str], *, strict: bool = False) -> None:
        self.root = resolve_data_dir(root)
        self.strict = strict
        self.skipped: dict[str, int] = {}
        self.errors: list[str] = []
        self.train: list[MarketRecord] = []
        self.query: list[MarketRecord] = []
        self.gallery: list[MarketRecord] = []
        self.gt_bbox: list[MarketRecord] = []
        for split, folder in SPLIT_DIRS.items():
            setattr(self, split, self._scan(split, self.root / folder))

    @property
    def total_skipped(self) -> int:
        """Entries skipped in all split folders."""
        return sum(self.skipped.values())

    def _scan(self, split: str, folder: Path) -> list[MarketRecord]:
        self.skipped[split] = 0
        if not folder.is_dir():
            return []
        bad = BadInputPolicy(self.strict)
        records: list[MarketRecord] = []
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if is_temp_file(entry.name) or not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                continue  # Thumbs.db, manifests, sub-folders, …
            path = folder / entry.name
            try:
                if not _listed_file(entry, path):
                    continue  # a folder named like an image
            except ImageReadError as exc:
                bad.skip_or_raise(exc, "unreadable entry(ies)")
                continue
            try:
                pid, cam, seq, frame, bbox = parse_market_name(entry.name)
            except MarketFormatError as exc:
                bad.skip_or_raise(MarketFormatError(f"{path}: {exc}"), "file(s) with a bad name")
                continue
            records.append(MarketRecord(path, pid, cam - 1, seq, frame, bbox, split))
        self.skipped[split] = bad.skipped
        self.errors.extend(bad.errors)
        bad.warn(str(folder))
        return records

    def split(self, name: str) -> list[MarketRecord]:
        """Records of ``'train'``, ``'query'``, ``'gallery'`` or ``'gt_bbox'``."""
        if name not in SPLIT_DIRS:
            raise KeyError(f"unknown split {name!r}; choose from {', '.join(SPLIT_DIRS)}")
        return getattr(self, name)

    def summary(self) -> dict[str, dict[str, int]]:
        """Per split: ``images`` (all files, junk included), ``identities`` (distinct pids > 0),
        ``cameras`` (distinct cameras of non-junk images), ``junk`` (pid -1), ``distractors`` (pid 0) and
        ``skipped`` (stray entries skipped by the default, non-strict, scan).

        torchreid drops junk, so its count is ``images - junk`` and its pid count is ``identities`` plus
        one when there are distractors.
        """
        out: dict[str, dict[str, int]] = {}
        for split in SPLIT_DIRS:
            recs = self.split(split)
            out[split] = {
                "images": len(recs),
                "identities": len({r.pid for r in recs if r.pid > 0}),
                "cameras": len({r.camid for r in recs if r.pid != -1}),
                "junk": sum(r.pid == -1 for r in recs),
                "distractors": sum(r.pid == 0 for r in recs),
                "skipped": self.skipped[split],
            }
        return out

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self.split(s))}" for s in SPLIT_DIRS)
        return f"Market1501({str(self.root)!r}, {sizes})"


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# PATN annotation CSV
# --------------------------------------------------------------------------------------------------
class PatnAnnotations(dict):
    """``name → (18, 2)`` float32 (x, y) keypoints, plus :attr:`skipped` rows and their :attr:`errors`.

    When read from a file, :attr:`path` is that file and :attr:`lines` maps each name to its line number
    (so later checks, e.g. of the keypoint frame, can name the line).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skipped: int = 0
        self.errors: list[str] = []
        self.path: Path | None = None
        self.lines: dict[str, int] = {}

    def where(self, name: str, default: str = "annotations") -> str:
        """``"FILE line N"`` of ``name``'s row (or ``default`` for annotations not read from a file)."""
        if self.path is not None and name in self.lines:
            return f"{self.path} line {self.lines[name]}"
        return str(self.path) if self.path is not None else default


def _parse_int_list(text: str, where: str, what: str) -> list[int]:
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise MarketFormatError(f"{where}: {what} must be a bracketed list like [12, -1, ...], got {text!r}")
    parts = [p.strip() for p in text[1:-1].split(",")]
    if parts == [""]:
        parts = []
    if len(parts) != NUM_KEYPOINTS:
        raise MarketFormatError(f"{where}: {what} has {len(parts)} values, expected {NUM_KEYPOINTS}")
    try:
        return [int(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not re.fullmatch(r"[+-]?\d+", p))
        raise MarketFormatError(f"{where}: {what} value {bad!r} is not an integer") from None


def parse_patn_row(line: str, where: str, image_hw: tuple[int, int] | None) -> tuple[str, np.ndarray]:
    """Parse one PATN row ``name:[y0, ..., y17]:[x0, ..., x17]`` into ``(name, (18, 2) float32 (x, y))``.

    Shared by :func:`read_patn_csv` and the progress file of ``posereid annotate``, so both read rows the
    same way.

    Args:
        line: the row, without its line break.
        where: prefix of error messages (e.g. ``"FILE line N"``).
        image_hw: ``(H, W)`` frame the joints must lie in; ``None`` skips the range check.

    Returns:
        ``(name, keypoints)`` with ``-1`` for a joint missing in either list.

    Raises:
        MarketFormatError: a malformed row, naming ``where``.
    """
    fields = line.split(":")
    if len(fields) != 3:
        raise MarketFormatError(
            f"{where}: expected 3 ':'-separated fields (name:keypoints_y:keypoints_x), got {len(fields)}"
        )
    name = fields[0].strip()
    if not name:
        raise MarketFormatError(f"{where}: empty image name")
    check_file_name(name, source=where)
    ys = np.array(_parse_int_list(fields[1], where, "keypoints_y"), dtype=np.int64)
    xs = np.array(_parse_int_list(fields[2], where, "keypoints_x"), dtype=np.int64)
    for arr, axis in ((ys, "y"), (xs, "x")):
        if (arr < -1).any():
            raise MarketFormatError(f"{where}: {axis} value {int(arr[arr < -1][0])} < -1 (-1 means missing)")
    missing = (xs == -1) | (ys == -1)
    if image_hw is not None:
        h, w = image_hw
        bad = ~missing & ((ys >= h) | (xs >= w))
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise MarketFormatError(
                f"{where}: joint {j} at (x={xs[j]}, y={ys[j]}) is outside the {h}x{w} image"
            )
    kps = np.stack([xs, ys], axis=-1).astype(np.float32)
    kps[missing] = -1.0
    return name, kps


def read_patn_csv(
    path: str | os.PathLike[str],
    *,
    image_hw: tuple[int, int] | None = (128, 64),
    on_error: Literal["raise", "skip"] = "raise",
) -> PatnAnnotations:
    """Read a PATN annotation CSV (``market-annotation-{train,test}.csv``).

    Format: separator ``:``, header ``name:keypoints_y:keypoints_x``, then one row per image with two
    lists of 18 ints (y first, then x), ``-1`` for a missing joint.

    Args:
        image_hw: ``(H, W)`` frame the coordinates must lie in (``None`` skips the range check).
        on_error: ``"raise"`` → :class:`MarketFormatError` naming the file and line; ``"skip"`` → the row is
            logged and counted in the result's ``skipped`` / ``errors``.

    Returns:
        :class:`PatnAnnotations` (a dict ``name → (18, 2)`` float32 (x, y), in file order).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    out = PatnAnnotations()
    out.path = path
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError as exc:
        raise MarketFormatError(f"{path}: not a UTF-8 text file ({exc})") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != PATN_HEADER:
        got = lines[0].strip()[:80] if lines else "an empty file"
        raise MarketFormatError(f"{path} line 1: expected header {PATN_HEADER!r}, got {got!r}")
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            name, kps = parse_patn_row(line, where, image_hw)
            if name in out:
                raise MarketFormatError(f"{where}: duplicate image name {name!r}")
        except MarketFormatError as exc:
            if on_error == "raise":
                raise
            out.skipped += 1
            out.errors.append(str(exc))
            logger.debug("skipping row: %s", exc)
            continue
        out[name] = kps
        out.lines[name] = lineno
    if out.skipped:
        logger.warning("%s: skipped %d bad row(s); first: %s", path, out.skipped, out.errors[0])
    return out


def format_int_list(values: np.ndarray) -> str:
    """A PATN keypoint list, e.g. ``[12, -1, 40]``: the values as ints, comma + space separated, bracketed.

    The inverse of the list parsing in :func:`parse_patn_row`; shared with ``posereid annotate`` so its
    progress lines are byte-identical to the rows of :func:`write_patn_csv`.
    """
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


def format_patn_row(name: str, kps: object, *, source: str) -> str:
    """One PATN CSV line (without its newline) for ``name`` → ``(18, 2)`` (x, y) keypoints.

    Coordinates are rounded to the nearest integer pixel; missing joints (any negative or non-finite
    coordinate) become ``-1``. The one place that defines a row, so that ``posereid annotate``'s progress
    lines and :func:`write_patn_csv`'s rows are the same bytes. ``source`` names the file in errors.
    """
    if not name or any(c in name for c in ":\r\n"):
        raise MarketFormatError(f"{source}: image name {name!r} is empty or contains ':' or a line break")
    check_file_name(name, source=source)
    arr = as_keypoints(kps, source=f"{source}: keypoints of {name!r}")
    if arr.shape != (NUM_KEYPOINTS, 2):
        raise MarketFormatError(f"{source}: keypoints of {name!r} must be (18, 2), got {arr.shape}")
    ints = np.rint(arr).astype(np.int64)
    ints[(arr < 0).any(-1)] = -1
    return f"{name}:{format_int_list(ints[:, 1])}:{format_int_list(ints[:, 0])}"


def write_patn_csv(path: str | os.PathLike[str], annotations: Mapping[str, np.ndarray]) -> None:
    """Write ``name → (18, 2)`` (x, y) keypoints as a PATN CSV (y list first); atomic.

    Coordinates are rounded to the nearest integer pixel; missing joints (any negative or non-finite
    coordinate) are written as ``-1``. Names containing ``:`` or a line break are rejected.
    """
    rows = [PATN_HEADER] + [format_patn_row(name, kps, source=str(path)) for name, kps in annotations.items()]
    with atomic_write(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(rows) + "\n")


# --------------------------------------------------------------------------------------------------
# The keypoint frame of an annotation file
# --------------------------------------------------------------------------------------------------
#: Where :func:`annotation_frame` looks for the images a CSV annotates: a Market-1501 folder (its train,
#: query and gallery splits; ``gt_bbox`` holds uncropped boxes of other sizes), a plain folder of images,
#: a parsed :class:`Market1501`, or image paths / :class:`MarketRecord` s.
ImageSource = str | os.PathLike[str] | Market1501 | Iterable[str | os.PathLike[str] | MarketRecord]
_FRAME_SPLITS = ("train", "query", "gallery")


def parse_hw(text: str) -> tuple[int, int]:
    """``"128x64"`` → ``(128, 64)``: the argparse type of ``--annotation-size``."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 128x64, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return h, w


def add_annotation_size_arg(parser: argparse.ArgumentParser, *, what: str = "the annotation CSV") -> None:
    """Add ``--annotation-size HxW`` (``args.annotation_size``: ``(H, W)`` or ``None`` = from the data)."""
    parser.add_argument(
        "--annotation-size",
        type=parse_hw,
        default=None,
        metavar="HxW",
        help=f"frame of the keypoint coordinates of {what} (default: the size of the images it annotates; "
        "required when those have mixed sizes)",
    )


def _image_paths(images: ImageSource) -> tuple[list[Path], str]:
    """Candidate image files of an :data:`ImageSource` and a description of it for messages."""
    if isinstance(images, Market1501):
        return [r.path for s in _FRAME_SPLITS for r in images.split(s)], str(images.root)
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            return [], str(folder)
        try:
            root = resolve_data_dir(folder)
            dirs = [root / SPLIT_DIRS[s] for s in _FRAME_SPLITS]
        except MarketFormatError:
            root, dirs = folder, [folder]
        paths = [
            Path(e.path)
            for d in dirs
            if d.is_dir()
            for e in os.scandir(d)
            if e.name.lower().endswith(IMAGE_EXTENSIONS) and not is_temp_file(e.name)
        ]
        return paths, str(root)
    paths = [r.path if isinstance(r, MarketRecord) else Path(r) for r in images]
    return paths, f"{len(paths)} given image(s)"


def _image_hw(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` from the image header, or ``None`` when unreadable (reported where it is loaded)."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def annotation_frame(
    names: Iterable[str],
    images: ImageSource,
    *,
    explicit: tuple[int, int] | None = None,
    source: str = "annotations",
    default: tuple[int, int] | None = None,
    required: bool = True,
) -> tuple[int, int] | None:
    """The ``(H, W)`` frame of the keypoints of an annotation file: ``explicit`` if given, else the common
    size of the images it annotates.

    Args:
        names: the image names of the annotation rows (matched to image files by file name; never joined
            with a folder).
        images: where the annotated images are (an :data:`ImageSource`).
        explicit: a frame given by the user (``--annotation-size`` / ``annotation_hw=``); returned as is.
        source: the annotation file, for messages.
        default: returned (with a warning) when none of ``names`` is an image of ``images``.
        required: without a ``default``, ``True`` raises when no annotated image is found; ``False``
            returns ``None`` (the annotations then annotate nothing there).

    Raises:
        MarketFormatError: the annotated images have different sizes (the message lists sizes and files;
            pass an explicit frame), or no annotated image was found and neither ``default`` nor
            ``required=False`` allows it.
    """
    if explicit is not None:
        h, w = (int(explicit[0]), int(explicit[1]))
        if h < 1 or w < 1:
            raise ValueError(f"{source}: annotation frame must be positive, got {explicit!r}")
        return h, w
    wanted = set(names)
    paths, where = _image_paths(images)
    by_size: dict[tuple[int, int], list[Path]] = defaultdict(list)
    for p in sorted(paths):
        if p.name in wanted:
            hw = _image_hw(p)
            if hw is not None:
                by_size[hw].append(p)
    if not by_size:
        if default is not None:
            logger.warning(
                "%s: none of its %d image(s) found in %s to take the keypoint frame from; assuming %dx%d "
                "(pass --annotation-size HxW / annotation_hw= to say so)",
                source, len(wanted), where, default[0], default[1],
            )  # fmt: skip
            return int(default[0]), int(default[1])
        if not required:
            return None
        raise MarketFormatError(
            f"{source}: cannot tell the frame of its keypoints: none of its {len(wanted)} image name(s) is a "
            f"readable image in {where}; pass --annotation-size HxW (annotation_hw=)"
        )
    if len(by_size) > 1:
        listed = "; ".join(
            f"{h}x{w}: {len(ps)} image(s), e.g. {', '.join(str(p) for p in ps[:3])}"
            for (h, w), ps in sorted(by_size.items(), key=lambda kv: -len(kv[1]))
        )
        raise MarketFormatError(
            f"{source}: the images it annotates have different sizes ({listed}), so the frame of its "
            "keypoints is ambiguous; pass --annotation-size HxW (annotation_hw=) to give it"
        )
    ((frame, ps),) = by_size.items()
    logger.debug(
        "%s: keypoint frame %dx%d (the size of the %d image(s) it annotates)", source, *frame, len(ps)
    )
    return frame


#: how far an image's size may be from its keypoints' frame before it is refused (scale, aspect ratio)
MAX_FRAME_SCALE = 8.0
MAX_ASPECT_CHANGE = 0.25


def image_size_problem(hw: tuple[int, int], frame: tuple[int, int]) -> str | None:
    """Why an ``hw`` image cannot be used with keypoints in ``frame`` (``None`` when it can).

    A 1x1 crop leaves no joint after rescaling, a 4000x2000 one blows a 128x64 generation up to megabytes,
    and a crop of another aspect ratio bends the skeleton: such images are skipped and counted by batch
    commands (or refused with this reason), never silently squeezed.
    """
    (h, w), (fh, fw) = hw, frame
    scale = max(h / fh, w / fw, fh / max(h, 1), fw / max(w, 1))
    if min(h, w) < 8 or scale > MAX_FRAME_SCALE:
        return f"image size {h}x{w} is too far from the keypoint frame {fh}x{fw} (more than {MAX_FRAME_SCALE:g}x)"
    aspect = (h / w) / (fh / fw)
    if abs(aspect - 1.0) > MAX_ASPECT_CHANGE:
        return f"image size {h}x{w} has another aspect ratio than the keypoint frame {fh}x{fw}"
    return None


def check_in_frame(
    annotations: Mapping[str, np.ndarray],
    frame: tuple[int, int],
    *,
    on_error: Literal["raise", "skip"] = "raise",
    origin: str = "",
    source: str = "annotations",
) -> PatnAnnotations:
    """Check that every visible keypoint lies in ``frame`` = ``(H, W)`` (after rounding to a pixel).

    A row with a joint outside raises :class:`MarketFormatError` naming the file and line (``on_error=
    "raise"``) or is dropped, logged and counted in the result's ``skipped`` / ``errors`` (``"skip"``);
    it is never clamped or rescaled. ``origin`` says where the frame came from (appended to messages).
    Returns the annotations that pass (a :class:`PatnAnnotations`; the input is returned when all pass).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    ann = annotations if isinstance(annotations, PatnAnnotations) else PatnAnnotations(annotations)
    if not ann:
        return ann
    h, w = int(frame[0]), int(frame[1])
    names = list(ann)
    kps = np.stack([as_keypoints(ann[n], source=ann.where(n, source)) for n in names])
    vis = (kps >= 0).all(-1)
    outside = vis & ((kps[..., 0] >= w - 0.5) | (kps[..., 1] >= h - 0.5))
    bad_rows = np.flatnonzero(outside.any(-1))
    if len(bad_rows) == 0:
        return ann
    errors = []
    for i in bad_rows:
        j = int(np.flatnonzero(outside[i])[0])
        x, y = (float(v) for v in kps[i, j])
        errors.append(
            f"{ann.where(names[i], source)}: joint {j} of {names[i]!r} at (x={x:g}, y={y:g}) is outside the "
            f"{h}x{w} frame{origin}"
        )
    if on_error == "raise":
        more = f" ({len(errors) - 1} more row(s) like it)" if len(errors) > 1 else ""
        raise MarketFormatError(errors[0] + more)
    drop = {names[i] for i in bad_rows}
    out = PatnAnnotations((n, k) for n, k in ann.items() if n not in drop)
    out.path, out.lines = ann.path, {n: v for n, v in ann.lines.items() if n not in drop}
    out.skipped, out.errors = ann.skipped + len(errors), [*ann.errors, *errors]
    logger.warning(
        "%s: skipped %d row(s) with a keypoint outside the %dx%d frame; first: %s",
        ann.path or source, len(errors), h, w, errors[0],
    )  # fmt: skip
    return out


def load_annotations(
    annotations: str | os.PathLike[str] | Mapping[str, np.ndarray],
    images: ImageSource,
    *,
    frame: tuple[int, int] | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    default_frame: tuple[int, int] | None = None,
    required: bool = True,
) -> tuple[PatnAnnotations, tuple[int, int] | None]:
    """Read a PATN CSV (or take a ``name → (18, 2)`` mapping), find its keypoint frame from the data, and
    check every keypoint lies in it. The one way commands should read annotations they rescale.

    Args:
        annotations: PATN CSV path or mapping (e.g. an earlier :func:`read_patn_csv` result).
        images: where the annotated images are (see :func:`annotation_frame`).
        frame: an explicit ``(H, W)`` (``--annotation-size``); ``None`` → from the images.
        on_error: malformed rows and rows with a keypoint outside the frame raise naming the file and line
            (``"raise"``) or are skipped, logged and counted in ``skipped`` / ``errors`` (``"skip"``).
        default_frame, required: see :func:`annotation_frame`.

    Returns:
        ``(annotations, frame)``; ``frame`` is ``None`` only with ``required=False`` when no annotated image
        was found (then nothing is checked: the rows annotate no image of ``images``).
    """
    if isinstance(annotations, Mapping):
        ann = annotations if isinstance(annotations, PatnAnnotations) else PatnAnnotations(annotations)
    else:
        ann = read_patn_csv(annotations, image_hw=None, on_error=on_error)
    source = str(ann.path) if ann.path is not None else "annotations"
    hw = annotation_frame(
        ann.keys(), images, explicit=frame, source=source, default=default_frame, required=required
    )
    if hw is None:
        return ann, None
    if frame is not None:
        origin = " given by --annotation-size / annotation_hw"
    else:
        origin = (
            " of the images it annotates (pass --annotation-size HxW if its coordinates use another frame)"
        )
    return check_in_frame(ann, hw, on_error=on_error, origin=origin, source=source), hw


# --------------------------------------------------------------------------------------------------
# Pairs CSV
# --------------------------------------------------------------------------------------------------
def read_pairs_csv(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Read a PATN pairs CSV (``market-pairs-{train,test}.csv``: header ``from,to``)."""
    path = Path(path)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != PAIRS_HEADER:
            raise MarketFormatError(f"{path} line 1: expected header 'from,to', got {header!r}")
        pairs: list[tuple[str, str]] = []
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise MarketFormatError(
                    f"{path} line {reader.line_num}: expected 2 non-empty columns 'from,to', got {row!r}"
                )
            where = f"{path} line {reader.line_num}"
            pairs.append(
                (check_file_name(row[0].strip(), source=where), check_file_name(row[1].strip(), source=where))
            )
    return pairs


def write_pairs_csv(path: str | os.PathLike[str], pairs: Iterable[tuple[str, str]]) -> None:
    """Write ``(from, to)`` name pairs with header ``from,to``; atomic."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PAIRS_HEADER)
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
            raise MarketFormatError(f"{path}: pair {i} must be two non-empty names, got {pair!r}")
        for name in pair:
            check_file_name(name, source=f"{path}: pair {i}")
        writer.writerow(pair)
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(buf.getvalue())


# --------------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------------
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
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}{target.suffix}")
        try:
            self._save(im, tmp)
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


__all__ = [
    "BadInputPolicy",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "Market1501",
    "MarketFormatError",
    "MarketRecord",
    "MarketWriter",
    "PatnAnnotations",
    "PATN_FRAME",
    "RELEASE_DIR",
    "SPLIT_DIRS",
    "STRICT_HELP",
    "UnsafeNameError",
    "add_annotation_size_arg",
    "add_strict_arg",
    "annotation_frame",
    "check_file_name",
    "check_image",
    "check_in_frame",
    "image_size_problem",
    "format_int_list",
    "format_patn_row",
    "format_market_name",
    "load_annotations",
    "load_image",
    "parse_hw",
    "parse_market_name",
    "parse_patn_row",
    "read_pairs_csv",
    "read_patn_csv",
    "resolve_data_dir",
    "safe_child",
    "write_pairs_csv",
    "write_patn_csv",
]
