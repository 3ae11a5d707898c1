"""The on-disk contract of a ``posereid generate`` folder: names, manifest parts, run config and resume.

:mod:`posereid.augment.generate` runs the generation; this module holds what a folder it writes looks like
and how a killed run is picked up again, so that readers of generated folders
(:mod:`~posereid.augment.dataset`, :mod:`~posereid.augment.filter`) need nothing from the generation loop.

**Layout.** Images go to ``OUT/bounding_box_train/`` (``OUT/rejected/`` when the identity filter rejects
them), one JSON line per image to ``OUT/manifest.jsonl`` (``manifest.shard-i-of-n.jsonl`` for shard
``(i, n)``; :func:`read_manifest` reads all parts), and the run's settings to ``generate_config.json``.
The lock files ``OUT/.lock*`` are those of :class:`~posereid.models.locks.GeneratedFolderLock`, which every
writer of the folder (``generate``, each shard; ``filter``) holds while it works.

**File names.** ``PPPP_cCs9_QFFFFFFBB_KK.jpg``: pid and camera of the source, sequence ``9`` (reserved for
synthetic images: Market-1501 uses s1–s6), a 9-digit frame field that encodes the source's sequence ``Q``,
frame ``FFFFFF`` and box ``BB``, and the output index ``k`` in the box field. Names parse with
:func:`~posereid.reid_integration.market1501.parse_market_name`, are unique per (source image, k), and
cannot equal a real name (6-digit frames, s1–s6); the run also checks against every real file name.

**Crash safety / resume.** Each image is written to ``NAME.tmp-<pid>`` and renamed into place; its
manifest line is appended (and fsynced, :func:`append_manifest_line`) only after that. Killed at any
moment (SIGKILL included) and rerun with the same settings, a run first deletes its temporary leftovers,
drops a torn last manifest line and lines whose image is gone, deletes images that have no line (they are
regenerated, identically) (:func:`reconcile`), and then skips every item already done.
``generate_config.json`` records the settings; resuming with different ones is an error
(:func:`check_run_config`; use a new ``--out``). :class:`GenerateSummary` lives here because the resume
fills in its clean-up counters.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from posereid.models.io_utils import atomic_write, is_temp_file
from posereid.reid_integration.market1501 import (
    MarketFormatError,
    check_file_name,
    format_market_name,
    parse_market_name,
)

logger = logging.getLogger(__name__)

TRAIN_DIR = "bounding_box_train"
REJECTED_DIR = "rejected"
MANIFEST_NAME = "manifest.jsonl"
CONFIG_FILE = "generate_config.json"
#: Market-1501 sequence number reserved for synthetic images (the real data uses s1–s6).
SYNTHETIC_SEQ = 9


class GenerateConfigError(ValueError):
    """A resumed run whose settings differ from the ones the output folder was started with."""


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------
def synthetic_name(source_name: str, k: int) -> str:
    """Name of output ``k`` generated from the real image ``source_name`` (see the module docstring)."""
    pid, cam, seq, frame, bbox = parse_market_name(source_name)
    if not (1 <= seq <= 9 and frame < 10**6 and bbox < 100):
        raise MarketFormatError(
            f"{source_name!r}: source names need seq 1..9, a frame < 1e6 and a box < 100 to encode"
        )
    return format_market_name(pid, cam, SYNTHETIC_SEQ, seq * 10**8 + frame * 100 + bbox, int(k), "jpg")


def parse_synthetic_name(name: str) -> tuple[str, int]:
    """``(source name stem, k)`` of a synthetic name, e.g. ``('0002_c1s1_000451_03', 0)``."""
    pid, cam, seq, code, k = parse_market_name(name)
    if seq != SYNTHETIC_SEQ or code < 10**8:
        raise MarketFormatError(
            f"{name!r} is not a synthetic name (sequence s{SYNTHETIC_SEQ}, 9-digit frame)"
        )
    src_seq, rest = divmod(code, 10**8)
    frame, bbox = divmod(rest, 100)
    return format_market_name(pid, cam, src_seq, frame, bbox)[: -len(".jpg")], k


# --------------------------------------------------------------------------------------------------
# Manifest I/O
# --------------------------------------------------------------------------------------------------
def manifest_part_name(shard: tuple[int, int]) -> str:
    """File name of shard ``(i, n)``'s manifest part: ``manifest.jsonl`` when unsharded."""
    i, n = shard
    return MANIFEST_NAME if n == 1 else f"manifest.shard-{i}-of-{n}.jsonl"


def manifest_paths(out_dir: str | os.PathLike[str]) -> list[Path]:
    """All manifest parts of a generated folder (``manifest.jsonl`` and ``manifest.shard-*.jsonl``)."""
    out = Path(out_dir)
    return sorted(p for p in out.glob("manifest*.jsonl") if p.is_file() and not is_temp_file(p))


#: Manifest fields holding image names (joined with folders by readers): each must be a plain file name.
NAME_FIELDS = ("name", "source", "target_source")


def read_manifest_file(
    path: str | os.PathLike[str], *, drop_partial_last: bool = True
) -> tuple[list[dict], int]:
    """Entries of one manifest part and the number of dropped torn lines.

    A killed run can leave a torn last line (no newline): it is dropped with ``drop_partial_last``, else
    an error. Any other invalid line raises :class:`ValueError` naming the file and line, and so does a
    name (``name``, ``source``, ``target_source``) that is not a plain file name
    (:class:`~posereid.reid_integration.market1501.UnsafeNameError`, e.g. ``../x.jpg`` or ``/abs/x.jpg``).
    """
    numbered, dropped = read_manifest_lines(path, drop_partial_last=drop_partial_last)
    return [e for _, e in numbered], dropped


def read_manifest_lines(
    path: str | os.PathLike[str], *, drop_partial_last: bool = True
) -> tuple[list[tuple[int, dict]], int]:
    """Like :func:`read_manifest_file`, with each entry's line number: ``([(line, entry), ...], dropped)``
    (for messages that name the line of an entry)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    entries: list[tuple[int, dict]] = []
    dropped = 0
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = lineno == len(lines)  # text after the final newline: a torn append
        try:
            entry = json.loads(raw.decode("utf-8"))
            if not isinstance(entry, dict) or "name" not in entry:
                raise ValueError("not an object with a 'name'")
        except (ValueError, UnicodeDecodeError) as exc:
            if last and drop_partial_last:
                dropped += 1
                logger.info("%s line %d: dropping a torn last line", path, lineno)
                continue
            raise ValueError(f"{path} line {lineno}: invalid manifest line ({exc})") from None
        if last and not drop_partial_last:
            raise ValueError(
                f"{path} line {lineno}: last line has no newline (run `posereid generate` to reconcile)"
            )
        if last:  # valid JSON but unterminated: the append was cut before its newline; redo it
            dropped += 1
            continue
        for key in NAME_FIELDS:
            if key == "name" or entry.get(key) is not None:
                check_file_name(entry[key], source=f"{path} line {lineno} ({key})")
        entries.append((lineno, entry))
    return entries, dropped


def write_manifest_file(path: str | os.PathLike[str], entries: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite a manifest part atomically (tmp + fsync + rename)."""
    with atomic_write(path, "w", encoding="utf-8", newline="\n") as fh:
        for e in entries:
            fh.write(json.dumps(e, separators=(",", ":")) + "\n")


def append_manifest_line(path: Path, entry: Mapping[str, Any]) -> None:
    """Append ``entry`` as one JSON line to the manifest part ``path`` and fsync it (after its image is in
    place, so a kill never leaves a line without its image)."""
    with open(path, "a", encoding="utf-8", newline="\n") as fh:
        fh.write(json.dumps(entry, separators=(",", ":")) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_manifest(out_dir: str | os.PathLike[str]) -> list[dict]:
    """Entries of all manifest parts of ``out_dir`` (one per image name, parts in name order)."""
    seen: dict[str, dict] = {}
    for part in manifest_paths(out_dir):
        for e in read_manifest_file(part)[0]:
            seen.setdefault(e["name"], e)
    return list(seen.values())


@dataclass
class GenerateSummary:
    """What :func:`generate_offline` did (counts are for this shard)."""

    shard: str
    planned: int = 0
    already_done: int = 0
    generated: int = 0
    rejected: int = 0
    failed_items: int = 0
    removed_temp_files: int = 0
    dropped_manifest_lines: int = 0
    removed_orphan_images: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    manifest: str = ""
    failures: list[str] = field(default_factory=list)
    #: the sampling setting used (``steps``, ``sampler``, ``guidance``: the checkpoint's where none was given)
    sampling: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Resume bookkeeping
# --------------------------------------------------------------------------------------------------
def check_run_config(out_dir: Path, config: dict) -> None:
    """Record ``config`` in ``out_dir/generate_config.json``, or, when the folder already has one, raise
    :class:`GenerateConfigError` if any setting differs (a resume must use the same settings)."""
    path = out_dir / CONFIG_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise GenerateConfigError(
                f"{path}: unreadable ({exc}); delete it only if the folder is empty"
            ) from None
        diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
        if diff:
            listed = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise GenerateConfigError(
                f"{out_dir} was started with other settings ({listed}); resume with the same settings "
                "or write to a new --out"
            )
        return
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)


def _pid_alive(text: str) -> bool:
    try:
        os.kill(int(text.split(".")[0]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def reconcile(out_dir: Path, part: Path, mine: set[str], summary: GenerateSummary) -> set[str]:
    """Clean leftovers of a killed run of this shard; return the names already done (any shard).

    ``part`` is this shard's manifest part and ``mine`` the names this shard is planned to write; the
    clean-up counts go into ``summary``.
    """
    dirs = [out_dir / TRAIN_DIR, out_dir / REJECTED_DIR]
    for d in [*dirs, out_dir]:
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if not is_temp_file(p):
                continue
            base = p.name.split(".tmp-")[0]
            own_meta = d == out_dir and base in (part.name, f"samples{part.stem[len('manifest') :]}.png")
            stale_config = d == out_dir and base == CONFIG_FILE and not _pid_alive(p.name.split(".tmp-")[1])
            if base in mine or own_meta or stale_config:
                p.unlink()
                summary.removed_temp_files += 1
    on_disk = {p.name for d in dirs if d.is_dir() for p in d.iterdir() if p.suffix == ".jpg"}
    entries, torn = read_manifest_file(part)
    kept, seen = [], set()
    for e in entries:
        if e["name"] in on_disk and e["name"] not in seen:
            kept.append(e)
            seen.add(e["name"])
    dropped = torn + len(entries) - len(kept)
    if dropped:
        write_manifest_file(part, kept)
        summary.dropped_manifest_lines += dropped
    listed = set(seen)
    for other in manifest_paths(out_dir):
        if other != part:
            listed.update(e["name"] for e in read_manifest_file(other)[0])
    for name in sorted((on_disk & mine) - listed):  # image written, line not: regenerate it
        for d in dirs:
            if (d / name).exists():
                (d / name).unlink()
        summary.removed_orphan_images += 1
    if summary.removed_orphan_images or summary.removed_temp_files or dropped:
        logger.info(
            "resumed %s: removed %d temp file(s), %d orphan image(s), dropped %d manifest line(s)",
            out_dir, summary.removed_temp_files, summary.removed_orphan_images, dropped,
        )  # fmt: skip
    return listed & on_disk


__all__ = [
    "CONFIG_FILE",
    "MANIFEST_NAME",
    "NAME_FIELDS",
    "REJECTED_DIR",
    "SYNTHETIC_SEQ",
    "TRAIN_DIR",
    "GenerateConfigError",
    "GenerateSummary",
    "append_manifest_line",
    "check_run_config",
    "manifest_part_name",
    "manifest_paths",
    "parse_synthetic_name",
    "read_manifest",
    "read_manifest_file",
    "read_manifest_lines",
    "reconcile",
    "synthetic_name",
    "write_manifest_file",
]
