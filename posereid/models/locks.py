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
* separate outputs have separate locks.

**A generated folder** has more than one kind of writer: ``generate`` (one run per shard, shards meant to
run at once) and ``filter`` (which rewrites every manifest part and moves images). They all go through
:class:`GeneratedFolderLock`, one discipline:

* the folder lock ``OUT/.lock`` is held *exclusive* by a run that rewrites the folder (``filter``; any
  ``--overwrite``-like writer) and *shared* by every ``generate`` run;
* a ``generate`` run of shard ``(i, n)`` also holds its shard lock ``OUT/.lock-shard-i-of-n``
  (exclusive: one run per shard), and is refused while a run of another shard count ``m != n`` holds one
  of its shard locks ``.lock-shard-*-of-m`` (two layouts would write the same images under two manifests);
* all of these are taken, without waiting, while holding the gate ``OUT/.lock-gate`` for a moment, so the
  checks and the takes of two runs starting together never interleave.

So shards ``0/2`` and ``1/2`` run together; ``generate`` with ``--shard 1/3`` beside them, a ``filter``
beside any ``generate``, and a ``generate`` beside a ``filter`` stop at once with
:class:`OutputLockedError` naming the run that holds the folder (from its lock's holder record).
``flock`` has shared locks; where it is missing (Windows) the folder lock is exclusive for everyone, so
shards of one folder then run one after another.

Who holds a lock is written next to it, in ``<lock file>.holder`` (JSON), once the lock is taken, and
deleted on release; a run killed with ``kill -9`` leaves it behind and the next holder overwrites it. A
holder's record may be briefly missing or stale right after a takeover; the message says so rather than
guess.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import socket
import sys
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

try:
    import fcntl
except ImportError:  # Windows: no shared locks (an OutputLock(shared=True) is exclusive there)
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

#: The lock file of a whole output folder (``train-generator``, ``reid-gain``; a generated folder's
#: folder lock, see :class:`GeneratedFolderLock`).
LOCK_NAME = ".lock"
#: Held for a moment while a writer of a generated folder takes its locks (:class:`GeneratedFolderLock`).
GATE_NAME = ".lock-gate"
#: ``filter`` holds a generated folder's folder lock (it had a lock of its own, ``.filter.lock``, that did
#: not exclude ``generate``); kept as a name for code that imports it.
FILTER_LOCK_NAME = LOCK_NAME
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


_SHARD_LOCK = re.compile(r"\.lock-shard-(\d+)-of-(\d+)")


def shard_lock_files(folder: str | os.PathLike[str]) -> list[tuple[Path, tuple[int, int]]]:
    """The shard lock files in ``folder`` (held or not) and their shards ``(i, n)``, in name order."""
    found = []
    for path in sorted(Path(folder).glob(".lock-shard-*-of-*")):
        match = _SHARD_LOCK.fullmatch(path.name)
        if match:
            found.append((path, (int(match[1]), int(match[2]))))
    return found


def is_lock_file(name: str) -> bool:
    """True for the lock files and holder records this module leaves in an output (names ``.lock*``)."""
    return name.startswith(LOCK_NAME)


def held_elsewhere(lock_file: str | os.PathLike[str]) -> bool:
    """True when another lock (another process, or another lock object here) holds ``lock_file``.

    It tries the lock itself without waiting and lets it go at once, so call it only where a competing
    take cannot happen meanwhile (:class:`GeneratedFolderLock` calls it under the folder's gate)."""
    lock_file = Path(lock_file)
    if not lock_file.exists():
        return False
    probe = FileLock(str(lock_file), thread_local=False)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    probe.release()
    return False


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


class _SharedFlock:
    """A shared ``flock`` on a file (several holders; excludes an exclusive :class:`FileLock` on it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, timeout: float = -1) -> None:
        """Take it, waiting up to ``timeout`` seconds (0: not at all, negative: no limit), or raise ``Timeout``."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                if timeout == 0 or (timeout > 0 and time.monotonic() >= deadline):
                    os.close(fd)
                    raise Timeout(self.path) from None
                time.sleep(0.05)
                continue
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return

    def release(self) -> None:
        """Let it go (the file stays, as lock files do)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def _describe(record: dict | None) -> str:
    """``host H, pid P, started S, command: C`` of a holder's record, on one line."""
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


def _busy_error(
    error: type[OutputLockedError],
    subject: Path,
    lock_file: Path,
    record: dict | None,
    what: str,
    advice: str,
    note: str = "",
) -> OutputLockedError:
    """``subject is in use by another `what` (holder; lock file F[; note]): advice``."""
    what = str(record.get("what") or what) if record else what
    note = f"; {note}" if note else ""
    return error(
        f"{subject} is in use by another `{what}` ({_describe(record)}; lock file {lock_file}{note}): {advice}",
        lock_file=lock_file,
        holder=record,
    )


class OutputLock:
    """A non-reentrant lock on one output: exclusive (one process at a time), or shared.

    Use it as a context manager, or call :meth:`acquire` and :meth:`release`.

    Args:
        lock_file: the lock file (its folder is created if needed).
        what: the command holding it, for messages (e.g. ``"posereid generate"``).
        subject: what is "in use" in the message (default: the lock file's folder).
        advice: what to do instead, ending the message.
        timeout: seconds to wait for a busy lock; ``0`` (default) fails at once, a negative value waits
            for as long as it takes.
        error: the exception raised when the lock is busy (a subclass of :class:`OutputLockedError`).
        shared: take it shared: any number of shared holders at once, none while an exclusive holder has it
            (and the other way round). A shared holder writes no holder record (there may be several); a
            refused one names the exclusive holder. Without ``flock`` (Windows) it is exclusive.
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
        shared: bool = False,
    ) -> None:
        self.lock_file = Path(lock_file)
        self.holder_file = holder_path(self.lock_file)
        self.what = what
        self.subject = Path(subject) if subject is not None else self.lock_file.parent
        self.advice = advice
        self.timeout = float(timeout)
        self.error = error
        self.shared = bool(shared)
        # not thread-local: whichever thread releases it releases it (filelock's default is per thread)
        self._lock: FileLock | _SharedFlock = (
            _SharedFlock(str(self.lock_file))
            if self.shared and fcntl is not None
            else FileLock(str(self.lock_file), thread_local=False)
        )
        self._held = False

    @property
    def is_held(self) -> bool:
        """True while this object holds the lock."""
        return self._held

    def _busy(self) -> OutputLockedError:
        record = read_holder(self.lock_file)
        return _busy_error(self.error, self.subject, self.lock_file, record, self.what, self.advice)

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
        if self.shared:  # several holders: none is recorded
            return self
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
            if not self.shared:
                with suppress(OSError):  # the folder may be gone; the lock goes anyway
                    self.holder_file.unlink(missing_ok=True)  # while locked: never another holder's record
        finally:
            self._held = False
            self._lock.release()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        mode = ", shared" if self.shared else ""
        return f"OutputLock({str(self.lock_file)!r}, what={self.what!r}{mode}, held={self._held})"


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


class GeneratedFolderLock:
    """The locks one writer of a generated folder holds (see the module docstring): a ``generate`` run of
    ``shard`` ``(i, n)``, or, with ``shard=None``, a run that rewrites the folder (``filter``) and needs it
    to itself.

    Use it as a context manager, or call :meth:`acquire` and :meth:`release`. Taking it never waits for
    another writer (only, up to ``gate_timeout`` seconds, for another run's moment at the gate): an
    incompatible run holding the folder raises :class:`OutputLockedError` naming it (host, pid, started,
    command) and its lock file.

    Args:
        folder: the generated folder (created if needed).
        what: the command, for messages and the holder records (e.g. ``"posereid generate"``).
        shard: ``(i, n)`` for a ``generate`` run; ``None`` for an exclusive writer.
        gate_timeout: seconds to wait for the gate (held for a moment by a run taking its locks).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        what: str,
        shard: tuple[int, int] | None = None,
        gate_timeout: float = 60.0,
    ) -> None:
        self.folder = Path(folder)
        self.what = what
        self.shard = None if shard is None else (int(shard[0]), int(shard[1]))
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise ValueError(f"shard {shard}: need 0 <= i < n")
        self.gate_timeout = float(gate_timeout)
        self._locks: list[OutputLock] = []

    @property
    def is_held(self) -> bool:
        """True while this object holds its locks."""
        return bool(self._locks)

    def _lock(self, name: str, advice: str, *, shared: bool = False) -> OutputLock:
        return OutputLock(
            self.folder / name, what=self.what, subject=self.folder, advice=advice, shared=shared
        )

    def running_shards(self) -> list[tuple[Path, tuple[int, int]]]:
        """The shard locks of ``generate`` runs holding the folder now (call it with the gate held)."""
        return [(path, shard) for path, shard in shard_lock_files(self.folder) if held_elsewhere(path)]

    def acquire(self) -> GeneratedFolderLock:
        """Take the locks, or raise :class:`OutputLockedError` naming the run in the way."""
        if self._locks:
            raise RuntimeError(f"{self.folder} is already held by this lock object")
        self.folder.mkdir(parents=True, exist_ok=True)
        gate = OutputLock(
            self.folder / GATE_NAME, what=self.what, subject=self.folder, timeout=self.gate_timeout,
            advice="it is stuck taking its locks; stop it, or use another --out",
        )  # fmt: skip
        with gate:
            self._locks = self._take_shard() if self.shard is not None else self._take_folder()
        return self

    def _take_folder(self) -> list[OutputLock]:
        """Exclusive: no ``generate`` run and no other exclusive writer."""
        lock = self._lock(LOCK_NAME, "wait for it to finish, or use another --dir")
        try:
            lock.acquire()
        except OutputLockedError as exc:
            running = self.running_shards()
            if not running:
                raise  # another exclusive writer: its record names it
            path, _ = running[0]
            note = f"{len(running)} generate runs in all" if len(running) > 1 else ""
            raise _busy_error(
                OutputLockedError, self.folder, path, read_holder(path), "posereid generate",
                "wait for it to finish (a folder is filtered once generation is done)", note,
            ) from exc  # fmt: skip
        return [lock]

    def _take_shard(self) -> list[OutputLock]:
        """Shared folder lock, no run of another shard count, then this shard's own lock."""
        assert self.shard is not None
        i, n = self.shard
        folder_lock = self._lock(LOCK_NAME, "wait for it to finish, or use another --out", shared=True)
        folder_lock.acquire()  # refused while a filter (an exclusive writer) holds the folder, naming it
        try:
            for path, (_, m) in self.running_shards():
                if m != n:
                    raise _busy_error(
                        OutputLockedError, self.folder, path, read_holder(path), self.what,
                        f"it writes this folder as {m} shard(s), this run as {n}: run all shards of a folder with "
                        f"one count (--shard k/{m}), wait for it to finish, or use another --out",
                    )  # fmt: skip
            shard_lock = self._lock(
                shard_lock_name(self.shard), "wait for it to finish, or use another --out or --shard"
            )
            shard_lock.acquire()
        except BaseException:
            folder_lock.release()
            raise
        return [folder_lock, shard_lock]

    def release(self) -> None:
        """Release every lock taken (a no-op when not held)."""
        locks, self._locks = self._locks, []
        for lock in reversed(locks):
            lock.release()

    def __enter__(self) -> GeneratedFolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"GeneratedFolderLock({str(self.folder)!r}, what={self.what!r}, shard={self.shard}, held={self.is_held})"


__all__ = [
    "FILTER_LOCK_NAME",
    "GATE_NAME",
    "HOLDER_SUFFIX",
    "LOCK_NAME",
    "GeneratedFolderLock",
    "OutputLock",
    "OutputLockedError",
    "held_elsewhere",
    "holder_path",
    "is_lock_file",
    "output_lock",
    "read_holder",
    "shard_lock_files",
    "shard_lock_name",
]
