"""The Market-1501 folder parser: :class:`Market1501` reads a folder laid out like the official release
(``bounding_box_train``, ``query``, ``bounding_box_test``, ``gt_bbox``) into :class:`MarketRecord` lists;
a stray entry follows the batch policy (:class:`BadInputPolicy`)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from posereid.models.io_utils import is_temp_file
from posereid.reid_integration.market1501.images import ImageReadError
from posereid.reid_integration.market1501.names import (
    IMAGE_EXTENSIONS,
    MarketFormatError,
    MarketRecord,
    parse_market_name,
)
from posereid.reid_integration.market1501.policy import BadInputPolicy

#: split name → folder name inside a Market-1501 data directory.
SPLIT_DIRS: dict[str, str] = {
    "train": "bounding_box_train",
    "query": "query",
    "gallery": "bounding_box_test",
    "gt_bbox": "gt_bbox",
}
#: Sub-folder the official archive unpacks to; :class:`Market1501` and torchreid both look for it.
RELEASE_DIR = "Market-1501-v15.09.15"


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


def find_annotations(data: str | os.PathLike[str], split: str = "train") -> Path:
    """``market-annotation-<split>.csv`` in ``data``, its Market data dir, or their parents: where every
    command looks for the keypoints when ``--annotations`` is left out."""
    data = Path(data)
    name = f"market-annotation-{split}.csv"
    cands: list[Path] = [data, data.parent]
    try:
        d = resolve_data_dir(data)
        cands += [d, d.parent, d.parent.parent]
    except ValueError:
        pass
    for c in cands:
        if (c / name).is_file():
            return c / name
    raise FileNotFoundError(
        f"no {name} found in {', '.join(dict.fromkeys(str(c) for c in cands))}; pass --annotations "
        "(a PATN CSV, e.g. from `posereid annotate`)"
    )


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
            file whose name is not a Market name (:func:`parse_market_name`: the exact format) or differs
            from an earlier one's only in the extension (the later one in name order), a broken symlink, a symlink loop or an entry that cannot
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
        seen: dict[tuple[int, int, int, int, int], str] = {}
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
            key = (pid, cam, seq, frame, bbox)
            if key in seen:  # names that differ only in the extension: one image to every reader
                bad.skip_or_raise(
                    MarketFormatError(
                        f"{path}: same pid, camera, sequence, frame and box as {seen[key]!r} (the names "
                        "differ only in the extension); keep one of them"
                    ),
                    "file(s) duplicating another's name",
                )
                continue
            seen[key] = entry.name
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
                "identities": len({r.pid for r in recs if r.has_identity}),
                "cameras": len({r.camid for r in recs if not r.is_junk}),
                "junk": sum(r.is_junk for r in recs),
                "distractors": sum(r.is_distractor for r in recs),
                "skipped": self.skipped[split],
            }
        return out

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self.split(s))}" for s in SPLIT_DIRS)
        return f"Market1501({str(self.root)!r}, {sizes})"


__all__ = ["RELEASE_DIR", "SPLIT_DIRS", "Market1501", "find_annotations", "resolve_data_dir"]
