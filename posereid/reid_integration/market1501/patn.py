"""PATN keypoint annotation CSVs and pair CSVs.

Keypoints are ``(18, 2)`` float32 **(x, y)** arrays (COCO-18 order, ``-1`` missing, see
:mod:`posereid.models.pose`). The PATN annotation CSV stores **y first**; only :func:`read_patn_csv` and
:func:`write_patn_csv` (through :func:`parse_patn_row` / :func:`format_patn_row`, which ``posereid
annotate`` shares) know that. Pairs CSVs (``market-pairs-{train,test}.csv``) list ``from,to`` names.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from posereid.models.io_utils import atomic_write
from posereid.models.pose import NUM_KEYPOINTS, as_keypoints
from posereid.reid_integration.market1501.names import MarketFormatError, check_file_name

logger = logging.getLogger(__name__)

#: The frame of the official PATN Market-1501 annotations (and of Market-1501's crops).
PATN_FRAME: tuple[int, int] = (128, 64)
PATN_HEADER = "name:keypoints_y:keypoints_x"
PAIRS_HEADER = ("from", "to")


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
    # ASCII digits only: int() would also take '７' or '1_0'
    bad = next((p for p in parts if not re.fullmatch(r"[+-]?[0-9]+", p)), None)
    if bad is not None:
        raise MarketFormatError(f"{where}: {what} value {bad!r} is not an integer")
    return [int(p) for p in parts]


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


__all__ = [
    "PAIRS_HEADER",
    "PATN_FRAME",
    "PATN_HEADER",
    "PatnAnnotations",
    "format_int_list",
    "format_patn_row",
    "parse_patn_row",
    "read_pairs_csv",
    "read_patn_csv",
    "write_pairs_csv",
    "write_patn_csv",
]
