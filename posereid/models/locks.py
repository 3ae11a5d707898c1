"""One run per output: the lock that ``generate``, ``train-generator``, ``filter``, ``reid-gain`` and
``annotate`` hold on the folder (or file) they write.

Two runs writing one output both do all the work and interleave their files (two ``generate`` runs on one
folder end with every manifest line twice). Each run therefore holds a lock file in its output while it
works, and a second run on the same output stops at once with :class:`OutputLockedError`, naming the
holder (host, pid, command, start time) and the lock file::

    with output_lock(out, LOCK_NAME, what="posereid train-generator"):
        ...  # write into out

The lock is a :class:`filelock.FileLock`, i.e. ``flock(2)`` on the lock file:

* the kernel drops it when its process dies (a crash, ``kill -9``, a lost node), so the next run takes it
  over at once; there is no pid check, which could not see a process on another host. The lock file stays
  in place, as lock files do;
* it excludes processes on other hosts too when the output is on a shared file system whose clients
  support ``flock`` (NFSv4, Lustre, GPFS, CephFS; Linux NFS clients map it to NFS byte-range locks). On a
  mount without lock support (NFS ``nolock``, some FUSE file systems) it degrades: each host only sees its
  own runs (or filelock falls back to a marker file), so do not point two hosts at one output there;
* separate outputs have separate locks: ``generate`` locks per shard (:func:`shard_lock_name`), so the
  shards of one folder still run in parallel, on one machine or several.

Who holds a lock is written next to it, in ``<lock file>.holder`` (JSON), once the lock is taken, and
deleted on release; a run killed with ``kill -9`` leaves it behind and the next holder overwrites it. A
holder's record may be briefly missing or stale right after a takeover; the message says so rather than
guess.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import sys
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)

#: The lock file of a whole output folder (``train-generator``, ``reid-gain``).
LOCK_NAME = ".lock"
#: The lock file ``filter`` holds in a generated folder.
FILTER_LOCK_NAME = ".filter.lock"
#: Appended to a lock file's name to name the record of its holder.
HOLDER_SUFFIX = ".holder"
#: Longest command line quoted in an error message.
_MAX_COMMAND = 300


class OutputLockedError(RuntimeError):
    """Another run holds the lock of the same output; the message names it and the lock file.

    ``lock_file`` is the lock's path and ``holder`` the holder's record (``host``, ``pid``, ``command``,
    ``started``, ``what``), or ``None`` when none could be read.
    """

    def __init__(self, message: str, *, lock_file: Path | None = None, holder: dict | None = None) -> None:
        super().__init__(message)
        self.lock_file = lock_file
        self.holder = holder


def shard_lock_name(shard: tuple[int, int]) -> str:
    """The lock file of ``generate`` shard ``(i, n)`` in its output folder: ``.lock-shard-<i>-of-<n>``."""
    return f".lock-shard-{int(shard[0])}-of-{int(shard[1])}"


def holder_path(lock_file: str | os.PathLike[str]) -> Path:
    """Where the holder of ``lock_file`` is recorded: ``<lock_file>.holder``."""
    lock_file = Path(lock_file)
    return lock_file.with_name(lock_file.name + HOLDER_SUFFIX)


def read_holder(lock_file: str | os.PathLike[str]) -> dict | None:
    """The recorded holder of ``lock_file`` (a dict), or ``None`` if there is no readable record."""
    try:
        record = json.loads(holder_path(lock_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(record: dict | None) -> str:
    if record is None:
        return "holder not recorded yet"
    parts = [
        f"host {record.get('host', '?')}",
        f"pid {record.get('pid', '?')}",
        f"started {record.get('started', '?')}",
    ]
    command = " ".join(str(record.get("command") or "").split())  # one line
    if command:
        if len(command) > _MAX_COMMAND:
            command = command[: _MAX_COMMAND - 3] + "..."
        parts.append(f"command: {command}")
    return ", ".join(parts)


class OutputLock:
    """An exclusive, non-reentrant lock on one output, held by at most one process at a time.

    Use it as a context manager, or call :meth:`acquire` and :meth:`release`.

    Args:
        lock_file: the lock file (its folder is created if needed).
        what: the command holding it, for messages (e.g. ``"posereid generate"``).
        subject: what is "in use" in the message (default: the lock file's folder).
        advice: what to do instead, ending the message.
        timeout: seconds to wait for a busy lock; ``0`` (default) fails at once, a negative value waits
            for as long as it takes.
        error: the exception raised when the lock is busy (a subclass of :class:`OutputLockedError`).
    """

    def __init__(
        self,
        lock_file: str | os.PathLike[str],
        *,
        what: str,
        subject: str | os.PathLike[str] | None = None,
        advice: str = "wait for it to finish, or use another --out",
        timeout: float = 0.0,
        error: type[OutputLockedError] = OutputLockedError,
    ) -> None:
        self.lock_file = Path(lock_file)
        self.holder_file = holder_path(self.lock_file)
        self.what = what
        self.subject = Path(subject) if subject is not None else self.lock_file.parent
        self.advice = advice
        self.timeout = float(timeout)
        self.error = error
        # not thread-local: whichever thread releases it releases it (filelock's default is per thread)
        self._lock = FileLock(str(self.lock_file), thread_local=False)
        self._held = False

    @property
    def is_held(self) -> bool:
        """True while this object holds the lock."""
        return self._held

    def _busy(self) -> OutputLockedError:
        record = read_holder(self.lock_file)
        what = str(record.get("what") or self.what) if record else self.what
        return self.error(
            f"{self.subject} is in use by another `{what}` ({_describe(record)}; lock file {self.lock_file}): "
            f"{self.advice}",
            lock_file=self.lock_file,
            holder=record,
        )

    def acquire(self) -> OutputLock:
        """Take the lock and record this process as its holder, or raise ``error`` naming the holder."""
        if self._held:
            raise RuntimeError(f"{self.lock_file} is already held by this lock object")
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            if self.timeout == 0:
                raise self._busy() from None
            logger.info("waiting for %s (%s)", self.lock_file, _describe(read_holder(self.lock_file)))
            try:
                self._lock.acquire(timeout=self.timeout)
            except Timeout:
                raise self._busy() from None
        self._held = True
        try:
            self._record()
        except BaseException:
            self.release()
            raise
        return self

    def _record(self) -> None:
        record = {
            "what": self.what,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        }
        # plain write (not a temporary + rename): only the holder writes it, and a reader that catches it
        # half-written reports "holder not recorded yet"
        with open(self.holder_file, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def release(self) -> None:
        """Forget the holder record and release the lock (a no-op when not held)."""
        if not self._held:
            return
        try:
            with suppress(OSError):  # the folder may be gone; the lock goes anyway
                self.holder_file.unlink(missing_ok=True)  # while still locked: never another holder's record
        finally:
            self._held = False
            self._lock.release()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"OutputLock({str(self.lock_file)!r}, what={self.what!r}, held={self._held})"


def output_lock(
    folder: str | os.PathLike[str],
    name: str = LOCK_NAME,
    *,
    what: str,
    advice: str = "wait for it to finish, or use another --out",
    timeout: float = 0.0,
) -> OutputLock:
    """The lock ``folder/name`` of the output ``folder``, to use as ``with output_lock(...):``.

    Entering it creates ``folder`` if needed and takes the lock at once, or raises
    :class:`OutputLockedError` (``folder is in use by another `what` (host, pid, started, command; lock
    file): advice``); with ``timeout`` it waits that long first (negative: no limit). See the module
    docstring for what it guarantees, across hosts included.
    """
    folder = Path(folder)
    return OutputLock(folder / name, what=what, subject=folder, advice=advice, timeout=timeout)


__all__ = [
    "FILTER_LOCK_NAME",
    "HOLDER_SUFFIX",
    "LOCK_NAME",
    "OutputLock",
    "OutputLockedError",
    "holder_path",
    "output_lock",
    "read_holder",
    "shard_lock_name",
]
