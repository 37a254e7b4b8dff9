"""The durable spool: received instances as DICOM Part 10 files on local disk.

Layout, relative to the spool root (``settings.spool_dir``)::

    <StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm

Every component is a validated UID (:func:`node.dicom_uids.is_valid_uid`, lenient form), so no
header text ever reaches a path. Files are readable by the service account only
(:data:`FILE_MODE`, directories :data:`DIRECTORY_MODE`). A file is written atomically: the bytes go to a temporary
``.part`` file in the same directory, the file is fsync'ed, renamed over its final name and the
directory is fsync'ed. A crash leaves either the old state or the complete file, never a torn
one; stale ``.part`` files from a crash are removed by :meth:`Spool.remove_partials`.
:func:`write_atomically` does this for any file (the output files use it too).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from node.constants import DICOM_SUFFIX, PARTIAL_SUFFIX
from node.dicom_uids import require_uid
from node.disk import free_bytes

log = logging.getLogger(__name__)

#: Permissions of spooled and output files: the service account only (they hold patient data).
FILE_MODE = 0o600
#: Permissions of the directories the node creates for them.
DIRECTORY_MODE = 0o700


@dataclass(frozen=True)
class SpooledFile:
    """A file durable in the spool.

    ``relative_path`` is POSIX-style and relative to the spool root; it is what the database
    stores in ``instances.path``.
    """

    path: Path
    relative_path: str
    size_bytes: int


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(directory: Path) -> None:
    """Create ``directory`` and its missing parents (:data:`DIRECTORY_MODE`), fsync'ing each parent that gained an entry."""
    missing: list[Path] = []
    current = Path(directory)
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:
            continue  # another thread created it at the same moment
        _fsync_directory(path.parent)


def write_atomically(final: Path, write: Callable[[BinaryIO], object]) -> int:
    """Write a file durably and atomically: temporary file, fsync, rename, fsync of the directory.

    Parameters
    ----------
    final:
        The file's path; its directory (and parents) are created when missing. An existing
        file is replaced atomically.
    write:
        Writes the whole content to the binary file object it is given.

    Returns
    -------
    int
        The file's size in bytes.

    The file gets :data:`FILE_MODE`. On any error (``OSError`` from the disk, or whatever
    ``write`` raises) the temporary file is removed and the error propagates; ``final`` is
    then untouched.
    """
    directory = final.parent
    make_directories(directory)
    temporary = directory / f".{final.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
        os.replace(temporary, final)
    except BaseException:
        try:
            temporary.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)
    return size


class Spool:
    """The spool directory tree under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # --- paths ------------------------------------------------------------------------
    @staticmethod
    def relative_path(study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> str:
        """``<study>/<series>/<sop>.dcm`` after validating each UID; raise ``ValueError`` otherwise."""
        parts = (
            require_uid(study_instance_uid, "Study Instance UID", strict=False),
            require_uid(series_instance_uid, "Series Instance UID", strict=False),
            require_uid(sop_instance_uid, "SOP Instance UID", strict=False) + DICOM_SUFFIX,
        )
        return str(PurePosixPath(*parts))

    def path_of(self, relative_path: str) -> Path:
        """Absolute path of a spool-relative path as stored in the database."""
        relative = PurePosixPath(relative_path)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"spool path {relative_path!r} must be relative and stay inside the spool")
        return self.root.joinpath(*relative.parts)

    # --- writing ----------------------------------------------------------------------
    def write(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
        chunks: Iterable[bytes | memoryview],
    ) -> SpooledFile:
        """Write ``chunks`` (the whole Part 10 file, in order) durably to the instance's path.

        Replaces an existing file of the same instance atomically. Raises ``ValueError`` for a
        UID that is not valid and ``OSError`` when the disk refuses (``ENOSPC``, ``EIO``, ...);
        in both cases nothing is left behind.
        """
        relative = self.relative_path(study_instance_uid, series_instance_uid, sop_instance_uid)
        final = self.path_of(relative)

        def write_chunks(handle: BinaryIO) -> None:
            for chunk in chunks:
                handle.write(chunk)

        size = write_atomically(final, write_chunks)
        return SpooledFile(final, relative, size)

    def adopt(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str, durable_file: Path
    ) -> SpooledFile:
        """Move a complete, already fsync'ed file (on the spool's file system) to the instance's path.

        The rename replaces an existing file atomically and the directory is fsync'ed, as in
        :meth:`write`. Raises ``ValueError`` for an invalid UID (the file is left where it is)
        and ``OSError`` when the move fails.
        """
        relative = self.relative_path(study_instance_uid, series_instance_uid, sop_instance_uid)
        final = self.path_of(relative)
        make_directories(final.parent)
        size = durable_file.stat().st_size
        os.replace(durable_file, final)
        _fsync_directory(final.parent)
        return SpooledFile(final, relative, size)

    def remove(self, relative_path: str) -> None:
        """Remove a spooled file (used when its database row could not be committed)."""
        path = self.path_of(relative_path)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_directory(path.parent)

    # --- housekeeping -------------------------------------------------------------------
    def ensure_root(self) -> None:
        """Create the spool root if needed."""
        make_directories(self.root)

    def remove_partials(self) -> int:
        """Delete ``.part`` files a crash left behind; return how many. Call before listening."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for path in self.root.rglob(f"*{PARTIAL_SUFFIX}"):
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.warning("removed %d partial spool file(s) left by an interrupted write", removed)
        return removed

    def free_bytes(self) -> int:
        """Free bytes available to this process on the spool's file system (one ``statvfs``)."""
        return free_bytes(self.root)


def dataset_sha256(path: Path) -> str:
    """sha256 of a spool file's data set bytes, after its File Meta Information (PS3.10 7.1).

    Two senders of the same instance produce different meta (the Source AE Title), so the
    comparison of content is on the data set alone. The meta's length is read from its first
    element, (0002,0000) File Meta Information Group Length, which the node always writes.
    """
    with open(path, "rb") as handle:
        head = handle.read(144)
        if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
            raise ValueError(f"{path.name} does not start with a File Meta Information Group Length")
        group_length = int.from_bytes(head[140:144], "little")
        handle.seek(144 + group_length)
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class KeyedLocks:
    """One lock per key (a SOP Instance UID), created on demand and dropped when unused.

    Associations storing the same SOP Instance UID at once take turns from the duplicate
    check to the committed row, so exactly one of them stores it.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)
