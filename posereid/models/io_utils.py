"""Small I/O helpers shared by every package: atomic writes and hashing.

Temporary names: ``NAME.tmp-<pid>`` (:func:`atomic_write`) or ``.NAME.tmp-<pid>SUFFIX`` (:func:`atomic_save`,
hidden, the saver sees the suffix). When that would be longer than the file system allows (``NAME`` near
255 bytes), ``NAME`` is cut and ends in ``~`` and 16 hex digits of its SHA-256, so every legal ``NAME``
can be written and a leftover is still recognised by :func:`is_temp_file`.

A write that fails with an :class:`OSError` (a full disk, a quota, an I/O error) raises an ``OSError`` of
the same ``errno`` that names the file being written; the file is left as it was and no temporary file
stays behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Permissions of a newly created file under this process's umask. Some savers (safetensors) create
# their file 0600; a checkpoint on a shared disk should be readable like any other output.
_FILE_MODE = 0o666 & ~_umask()


#: Longest file name (bytes) assumed when the file system does not say (ext4, xfs, btrfs, tmpfs: 255).
NAME_MAX = 255
TEMP_MARK = ".tmp-"
#: Messages of non-``OSError`` savers (safetensors, Rust I/O) for a full disk.
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "StorageFull")


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def temp_sibling(path: str | os.PathLike[str], *, hidden: bool = False, keep_suffix: bool = False) -> Path:
    """The temporary name of ``path`` for this process (see the module docstring): ``NAME.tmp-<pid>``,
    with ``hidden`` a leading dot and with ``keep_suffix`` ``path``'s suffix at the end; ``NAME`` is
    shortened (cut + hash) when the whole would exceed the folder's longest file name."""
    path = Path(path)
    name, pid = path.name, os.getpid()
    prefix = "." if hidden else ""
    suffix = path.suffix if keep_suffix else ""
    tmp = f"{prefix}{name}{TEMP_MARK}{pid}{suffix}"
    limit = _name_max(path.parent) if path.parent.is_dir() else NAME_MAX
    if len(tmp.encode()) > limit:
        tag = "~" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        room = limit - len(f"{prefix}{tag}{TEMP_MARK}{pid}{suffix}".encode())
        cut = name.encode("utf-8", "surrogateescape")[: max(room, 0)].decode("utf-8", "ignore")
        tmp = f"{prefix}{cut}{tag}{TEMP_MARK}{pid}{suffix}"
    return path.with_name(tmp)


def write_error(exc: BaseException, path: Path, tmp: Path) -> OSError | None:
    """The error to raise for ``exc`` met while writing ``path`` through the temporary ``tmp``: an
    ``OSError`` naming ``path`` (same errno) when ``exc`` names no file or only ``tmp``, or an ``ENOSPC``
    one for a saver's own disk-full error; ``None`` to raise ``exc`` as it is. For writers that manage
    their own temporary file (``raise write_error(exc, path, tmp) or exc``)."""
    if isinstance(exc, OSError):
        if exc.errno is None or (exc.filename is not None and str(exc.filename) != str(tmp)):
            return None  # e.g. PIL's "cannot write mode P as JPEG", or another file's error
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))
    if any(t in str(exc) for t in _DISK_FULL_TEXT):  # e.g. safetensors' SafetensorError
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


@contextlib.contextmanager
def _into_place(path: Path, tmp: Path) -> Iterator[None]:
    """Run the body that writes ``tmp``, then move it onto ``path``; on any failure no temporary file stays
    and a write error (e.g. a full disk) becomes an ``OSError`` naming ``path``."""
    try:
        yield
        os.replace(tmp, path)
    except Exception as exc:
        named = write_error(exc, path, tmp)
        if named is None:
            raise
        raise named from exc
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_kwargs) -> Iterator:
    """Open a temporary sibling of ``path`` for writing and move it into place only on success.

    A job killed mid-write leaves at most a ``*.tmp-<pid>`` file, never a truncated ``path``; a failed
    write (e.g. a full disk) raises an ``OSError`` naming ``path`` and leaves no temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    with _into_place(path, tmp), open(tmp, mode, **open_kwargs) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_save(path: str | os.PathLike[str], save_fn: Callable[[Path], object]) -> None:
    """Call ``save_fn(tmp_path)`` (e.g. ``image.save`` or ``safetensors.torch.save_file``) then rename.

    The temporary name keeps the suffix (savers infer the format from it) but starts with a dot, so a
    leftover is a hidden file that glob patterns such as torchreid's ``*.jpg`` never match. A failed
    write (e.g. a full disk) raises an ``OSError`` naming ``path`` and leaves no temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, hidden=True, keep_suffix=True)
    with _into_place(path, tmp):
        save_fn(tmp)
        os.chmod(tmp, _FILE_MODE)


def is_temp_file(path: str | os.PathLike[str]) -> bool:
    """True for leftovers of :func:`atomic_write` / :func:`atomic_save` (safe to delete on resume)."""
    return TEMP_MARK in Path(path).name


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
