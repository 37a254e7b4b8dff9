"""Free disk space: how much there is, whether an error means "disk full", and the database's reserve.

The spool, the outputs and the SQLite database share the data directory's file system. The
listener stops storing above a watermark (``settings.min_free_disk_bytes``), but other programs
on the same disk can still fill it to the last byte, and then SQLite cannot even record that a
job failed: the job and its study would stay ``running``. :class:`DiskReserve` keeps a
preallocated file next to the database (``<database file>.reserve``) and gives its space back
the moment the disk is nearly full, or a database write fails for lack of space, so that the
next write (the one recording the failure) has room. It is created again once the disk has room
to spare.

Why a reserve file rather than a watermark alone: a watermark only holds back this node's own
writes; a reserve is space nobody else can take, handed to the database exactly when it needs it.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import sqlite3
import threading
from pathlib import Path

from node.constants import PARTIAL_SUFFIX

log = logging.getLogger(__name__)

#: SQLite's primary result code for "database or disk is full" (SQLITE_FULL).
SQLITE_FULL = 13


def free_bytes(path: Path) -> int:
    """Free bytes available to this process on the file system holding ``path`` (or its nearest existing parent).

    One ``statvfs`` call (microseconds), cheap enough to make before every write.
    """
    target = Path(path)
    while not target.exists() and target != target.parent:
        target = target.parent
    return shutil.disk_usage(target).free


def is_disk_full(error: OSError) -> bool:
    """Whether ``error`` means the disk or quota is full (as opposed to another I/O failure)."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def is_disk_full_error(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, means the disk is full.

    Recognises ``OSError`` ENOSPC/EDQUOT and SQLite's SQLITE_FULL ("database or disk is full"),
    also when wrapped by SQLAlchemy (``DBAPIError.orig``) or chained (``__cause__``).
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and is_disk_full(current):
            return True
        if isinstance(current, sqlite3.Error):
            code = getattr(current, "sqlite_errorcode", None)
            if code is not None and code & 0xFF == SQLITE_FULL:
                return True
            if "database or disk is full" in str(current):
                return True
        original = getattr(current, "orig", None)
        if isinstance(original, BaseException) and id(original) not in seen:
            current = original
            continue
        current = current.__cause__ or current.__context__
    return False


class DiskReserve:
    """A preallocated file whose space is released when the disk is nearly full, and restored later.

    Parameters
    ----------
    path:
        The reserve file; it must be on the file system that needs the headroom (next to the
        SQLite database).
    size_bytes:
        How much space to hold back. The reserve is released when free space drops below this
        (or on :meth:`release`), and created again when at least :attr:`restore_at_bytes` are free,
        so that creating it still leaves more than ``size_bytes`` free (no release/restore loop).

    Thread-safe; several processes may keep a reserve at the same path (the file is replaced
    atomically, and deleting a deleted file is not an error).
    """

    #: Restore when this many times ``size_bytes`` are free.
    RESTORE_FACTOR = 3

    def __init__(self, path: Path, size_bytes: int) -> None:
        if size_bytes <= 0:
            raise ValueError("a disk reserve needs a size above 0 bytes")
        self.path = Path(path)
        self.size_bytes = size_bytes
        self.restore_at_bytes = self.RESTORE_FACTOR * size_bytes
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        """Whether the reserve file exists at its full size."""
        try:
            return self.path.stat().st_size >= self.size_bytes
        except FileNotFoundError:
            return False

    def check(self) -> None:
        """Before a database write: release the reserve when the disk is nearly full, restore it when there is room.

        Costs one ``statvfs`` and one ``stat`` when nothing changes. Never raises: a reserve that
        cannot be created is logged and tried again on a later check.
        """
        try:
            free = free_bytes(self.path.parent)
        except OSError:
            return
        if free < self.size_bytes:
            if self.path.exists():
                self.release(f"only {free} bytes free")
            return
        if free >= self.restore_at_bytes and not self.held:
            self._restore()

    def release(self, reason: str) -> bool:
        """Delete the reserve file so that its space is free for the database; return whether it was there."""
        with self._lock:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
            except OSError as error:
                log.error("cannot release the disk reserve %s: %s", self.path, error.strerror)
                return False
        log.warning(
            "disk nearly full (%s): released the %d-byte reserve %s so that the database can record what "
            "happens; it is created again once %d bytes are free. Free space in the data directory.",
            reason,
            self.size_bytes,
            self.path,
            self.restore_at_bytes,
        )
        return True

    def _restore(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is creating it
        temporary = self.path.with_name(f"{self.path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size_bytes)  # blocks allocated, not a sparse file
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            log.warning("cannot create the disk reserve %s (%s); trying again later", self.path, error.strerror)
            return
        finally:
            self._lock.release()
        log.info("disk reserve %s of %d bytes in place", self.path, self.size_bytes)
