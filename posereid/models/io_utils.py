"""Small I/O helpers shared by every package: atomic writes and hashing."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Permissions of a newly created file under this process's umask. Some savers (safetensors) create
# their file 0600; a checkpoint on a shared disk should be readable like any other output.
_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_kwargs) -> Iterator:
    """Open a temporary sibling of ``path`` for writing and move it into place only on success.

    A job killed mid-write leaves at most a ``*.tmp-<pid>`` file, never a truncated ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(path: str | os.PathLike[str], save_fn) -> None:
    """Call ``save_fn(tmp_path)`` (e.g. ``image.save`` or ``safetensors.torch.save_file``) then rename.

    The temporary name keeps the suffix (savers infer the format from it) but starts with a dot, so a
    leftover is a hidden file that glob patterns such as torchreid's ``*.jpg`` never match.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        save_fn(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def is_temp_file(path: str | os.PathLike[str]) -> bool:
    """True for leftovers of :func:`atomic_write` / :func:`atomic_save` (safe to delete on resume)."""
    return ".tmp-" in Path(path).name


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
