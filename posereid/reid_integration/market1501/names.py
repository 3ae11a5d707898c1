"""Market-1501 file names and names read from files.

Market-1501 names its files ``PPPP_cCsS_FFFFFF_BB.jpg``: person id (``-1`` = junk, ``0000`` =
distractor), 1-based camera, sequence, frame and detection box; :class:`MarketRecord` is one parsed
image (its ``camid`` 0-based, like torchreid's).

**Names read from files are untrusted.** Every image name read from a PATN CSV, a pairs CSV, a generation
manifest or a pose bank must be a plain file name (:func:`check_file_name`), and code that joins such a
name with a folder does it through :func:`safe_child`, which also refuses a symlink that leads outside the
folder. Both raise :class:`UnsafeNameError` naming the file, the line and the offending name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath


class MarketFormatError(ValueError):
    """A file name, CSV row or folder that does not follow the Market-1501 / PATN format."""


class UnsafeNameError(MarketFormatError):
    """A name read from a file (CSV, manifest, pose bank) that is not a plain file name inside its folder:
    a path with separators, ``..``, an absolute path, or a symlink that resolves outside the folder."""


#: Extensions treated as images when scanning a split folder (other files, e.g. ``Thumbs.db``, are ignored).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

#: Frame numbers of the 9-digit form: synthetic names carry ``seq * 10**8 + frame * 100 + bbox`` of their
#: source there (:func:`posereid.augment.manifest.synthetic_name`); real names have 6 digits.
SYNTHETIC_FRAME_RANGE = (10**8, 10**9)

# ASCII digits only and fixed widths (``\d`` would take any Unicode digit, ``+`` any width): one tuple has
# one spelling, so two different files can never parse to the same (pid, cam, seq, frame, bbox).
_NAME_RE = re.compile(
    r"(-1|[0-9]{4})_c([1-9])s([0-9])_([0-9]{6}|[1-9][0-9]{8})_([0-9]{2})\.(?i:jpg|jpeg|png)",
    re.ASCII,
)


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
        """A junk image (pid ``-1``): torchreid drops it from every split."""
        return self.pid == -1

    @property
    def is_distractor(self) -> bool:
        """A distractor (pid ``0``): a gallery image of nobody in the query set."""
        return self.pid == 0

    @property
    def has_identity(self) -> bool:
        """Neither junk nor a distractor (pid > 0): an image of a labelled person, what re-ID trains on."""
        return self.pid > 0


def parse_market_name(name: str) -> tuple[int, int, int, int, int]:
    """Parse ``'0002_c1s1_000451_03.jpg'`` → ``(pid, cam, seq, frame, bbox)`` with ``cam`` 1-based.

    ``pid`` is ``-1`` for junk and ``0`` for distractors. The name must follow the format exactly: ASCII
    digits, pid ``-1`` or 4 digits, camera ``1``-``9``, a 1-digit sequence, a 6-digit frame (or a 9-digit
    one starting ``1``-``9``, as synthetic names write), a 2-digit box, and ``.jpg``/``.jpeg``/``.png`` in
    any case. So :func:`format_market_name` gives back the same name (extension lower-cased), and two
    different names never parse to one tuple unless they differ only in the extension. Anything else
    (``c1s01``, a 7-digit frame, a full-width digit, ``C1S1``) raises :class:`MarketFormatError`.
    """
    base = os.path.basename(str(name))
    m = _NAME_RE.fullmatch(base)
    if m is None:
        raise MarketFormatError(
            f"{name!r} is not a Market-1501 file name (expected PPPP_cCsS_FFFFFF_BB.jpg in ASCII digits: "
            "pid 4 digits or -1, camera 1-9, sequence 1 digit, frame 6 digits (9 in a synthetic name), "
            "box 2 digits, e.g. '0002_c1s1_000451_03.jpg')"
        )
    pid, cam, seq, frame, bbox = (int(g) for g in m.groups()[:5])
    return pid, cam, seq, frame, bbox


def format_market_name(
    pid: int, cam: int, seq: int = 1, frame: int = 0, bbox: int = 1, ext: str = "jpg"
) -> str:
    """Build a Market-1501 file name; ``cam`` is 1-based. ``format_market_name(2, 1, 1, 451, 3)`` →
    ``'0002_c1s1_000451_03.jpg'``; ``pid=-1`` gives ``'-1_c1s1_…'`` like the official junk images.

    Only values the format can spell are taken (``ValueError`` otherwise): pid -1..9999, cam 1..9, seq
    0..9, frame 0..999999 or a 9-digit synthetic frame (:data:`SYNTHETIC_FRAME_RANGE`), bbox 0..99; so
    :func:`parse_market_name` reads back exactly these values.
    """
    pid, cam, seq, frame, bbox = (int(v) for v in (pid, cam, seq, frame, bbox))
    if not -1 <= pid <= 9999:
        raise ValueError(f"pid must be -1..9999 (-1 junk, 0 distractor, 4 digits), got {pid}")
    if not 1 <= cam <= 9:
        raise ValueError(f"cam must be 1..9 (1-based, one digit), got {cam}")
    if not 0 <= seq <= 9:
        raise ValueError(f"seq must be 0..9 (one digit), got {seq}")
    lo, hi = SYNTHETIC_FRAME_RANGE
    if not (0 <= frame < 10**6 or lo <= frame < hi):
        raise ValueError(f"frame must be 0..999999 (6 digits) or a 9-digit synthetic frame, got {frame}")
    if not 0 <= bbox <= 99:
        raise ValueError(f"bbox must be 0..99 (two digits), got {bbox}")
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


__all__ = [
    "IMAGE_EXTENSIONS",
    "SYNTHETIC_FRAME_RANGE",
    "MarketFormatError",
    "MarketRecord",
    "UnsafeNameError",
    "check_file_name",
    "format_market_name",
    "parse_market_name",
    "safe_child",
]
