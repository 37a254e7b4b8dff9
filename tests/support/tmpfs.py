"""A tiny real file system for disk-full tests: a tmpfs mounted for the test, and a filler file.

Mounting needs root (the CI runs as root); elsewhere the test is skipped with that reason.

Example::

    with mounted_tmpfs(tmp_path / "disk", 16 * MIB) as disk:
        filler = fill_until(disk / "filler", free_left=0)   # the disk is now full
        ...
        filler.unlink()                                      # room again
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from node.disk import free_bytes

MIB = 1024 * 1024


@contextmanager
def mounted_tmpfs(directory: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size_bytes`` on ``directory`` (created) for the block; always unmounted after.

    Close everything open on it (stop listeners, dispose engines) before the block ends; a busy
    file system is detached lazily so that no mount outlives the test.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for a disk-full test needs root (the CI runs as root)")
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(directory)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True, capture_output=True, timeout=30)


def fill_until(path: Path, *, free_left: int) -> Path:
    """Grow the file ``path`` until ``free_left`` bytes (rounded to pages) are free on its file system.

    With ``free_left=0`` it writes until the disk refuses (ENOSPC): the disk is then full to the
    last page. Returns ``path``.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        need = free_bytes(path.parent) - free_left
        if need > 0:
            os.posix_fallocate(fd, os.fstat(fd).st_size, need)
        block = b"\0" * 4096
        while free_left == 0:
            try:
                os.write(fd, block)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return path
