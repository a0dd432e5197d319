"""The writer lock of an index directory: one writer at a time, released when it exits."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from shared.index_store.errors import IndexLockedError

LOCK_FILE = "writer.lock"


class WriterLock:
    """An exclusive ``flock`` on ``INDEX_DIR/writer.lock``.

    The kernel drops the lock when the holder exits, even on SIGKILL, so a killed writer never
    leaves a stale lock behind.
    """

    def __init__(self, index_dir: str | Path) -> None:
        self.path = Path(index_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``IndexLockedError`` naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise IndexLockedError(
                f"index directory {self.path.parent} is locked by another writer (pid {holder}); "
                f"wait for it to finish or use another --index-dir"
            ) from error
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def is_held_by_other(self) -> bool:
        """Return True when another process holds the lock (the check takes and drops it).

        The lock file is opened read-only, because ``flock`` needs no write access, so readers
        such as ``indexer status`` also work on an index on a read-only file system.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def holder_pid(self) -> int | None:
        """Return the pid the current or last holder wrote into the lock file, or None."""
        try:
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
