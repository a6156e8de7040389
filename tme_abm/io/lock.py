"""Exclusive locks for writers: one process at a time writes a run file or runs a sweep
into a folder.

A lock is an ``fcntl.flock`` on a lock file beside what it guards, held for the writer's
whole life; the kernel releases it when the process ends, however it ends, so a killed
run leaves no stale lock. The lock file records who holds it, for the message a second
writer gets, and may hold a reserve of disk space for its writer (released when the
writer meets a full disk, so that it can still close its file properly).
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import os
import socket
import sys
from pathlib import Path


class LockedError(RuntimeError):
    """Another process holds the lock (the message names it)."""


def held(path: str | Path) -> bool:
    """Whether a writer holds the lock of ``path`` (its ``<path>.lock``) now."""
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class WriterLock:
    """The exclusive lock on ``path``'s lock file (``<path>.lock``, or ``lock_name``
    inside a folder).

    Args:
        path: what the lock guards (a run file, or a sweep folder).
        what: what a refusal says the holder is doing ("another run is writing it").
        reserve: bytes of disk the lock file holds (allocated, zeros after the
            holder's line) until :meth:`release_reserve`.
    """

    def __init__(self, path: str | Path, what: str, lock_name: str | None = None, reserve: int = 0):
        self.path = Path(path)
        self.what = what
        self.reserve = reserve
        self.lock_path = self.path / lock_name if lock_name else self.path.with_name(self.path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        """Take the lock or raise :class:`LockedError` naming the process that holds it."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace").strip("\0 \n") or "holder unknown"
                os.close(fd)
                raise LockedError(f"{self.path}: {self.what} ({holder}); wait for it to finish, or choose "
                                  f"another output") from None
            # the previous holder may have removed the file between our open and our lock
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        info = f"pid {os.getpid()} on {socket.gethostname()} since {started} ({' '.join(sys.argv)[:300]})"
        os.ftruncate(fd, 0)
        self._info_bytes = os.write(fd, info.encode())
        self._fd = fd
        if self.reserve:
            try:
                os.posix_fallocate(fd, self._info_bytes, self.reserve)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    self.release()
                    raise
                # a file system that cannot allocate ahead: the lock holds no reserve there
        return self

    def release_reserve(self) -> None:
        """Give the reserved disk space back (the lock is still held)."""
        if self._fd is not None:
            os.ftruncate(self._fd, self._info_bytes)

    def release(self) -> None:
        """Remove the lock file and drop the lock (removed first, while still held, so no
        other process can hold a lock on a file that is then deleted)."""
        if self._fd is None:
            return
        try:
            self.lock_path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
