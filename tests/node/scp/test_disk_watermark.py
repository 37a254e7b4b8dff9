"""The disk watermark per instance, on a real, tiny file system holding the spool and the database.

Each test mounts a tmpfs (root only; skipped otherwise) as the node's data directory, starts a
listener with a watermark, and leaves room for only a few instances with a filler file.
Below the watermark each C-STORE is refused with 0xA704 before anything of it is written; the
association stays usable, and once the filler is deleted the next C-STORE succeeds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from node.constants import PARTIAL_SUFFIX
from node.disk import free_bytes
from node.scp import statuses
from node.spool import dataset_sha256
from tests.support.dcmtk import echoscu, storescu
from tests.support.dicom_files import TestInstance, make_instance, make_study
from tests.support.listener import VERIFICATION_CONTEXT, Node, start_node
from tests.support.tmpfs import MIB, fill_until, mounted_tmpfs
from training.dicom_export import DX_FOR_PRESENTATION

WATERMARK = 4 * MIB
LOW_DISK = statuses.OUT_OF_RESOURCES_LOW_DISK


@contextmanager
def node_on_tmpfs(tmp_path: Path, size_bytes: int) -> Iterator[tuple[Node, Path]]:
    """A listener whose data directory (spool and SQLite database) is a fresh tmpfs, with the watermark set."""
    with mounted_tmpfs(tmp_path / "disk", size_bytes) as disk:
        node = start_node(disk, min_free_disk_bytes=WATERMARK, database_reserve_bytes=MIB)
        try:
            yield node, disk
        finally:
            node.stop()


def leave_room_for(disk: Path, instances: float, instance_bytes: int) -> Path:
    """Fill the disk so that ``instances`` instances of ``instance_bytes`` fit above the watermark."""
    return fill_until(disk / "filler", free_left=WATERMARK + int(instances * instance_bytes))


def assert_stored_exactly(node: Node, sent: list[TestInstance]) -> None:
    """Every instance in ``sent`` has its row and its file, the data set byte for byte; nothing else is kept."""
    rows = {row.sop_instance_uid: row for row in node.instances()}
    assert sorted(rows) == sorted(m.identity.sop_instance_uid for m in sent)
    for made in sent:
        row = rows[made.identity.sop_instance_uid]
        path = node.spool / row.path
        assert row.size_bytes == path.stat().st_size
        assert dataset_sha256(path) == dataset_sha256(made.path)
    files = [p for p in node.spool.rglob("*") if p.is_file()]
    assert sorted(files) == sorted(node.spool / row.path for row in rows.values())  # no partial or temporary file
    assert not list(node.settings.data_dir.rglob(f"*{PARTIAL_SUFFIX}"))


@pytest.mark.slow
def test_one_association_gets_success_until_the_watermark_then_a704_per_instance(tmp_path: Path) -> None:
    made = make_study(tmp_path / "in", 8, size=512)
    size = made[0].path.stat().st_size
    with node_on_tmpfs(tmp_path, 16 * MIB) as (node, disk):
        filler = leave_room_for(disk, 3.5, size)

        run = storescu(node.port, [m.path for m in made], extra=["--no-halt"])  # go on after a refusal

        assert run.statuses == [statuses.SUCCESS] * 3 + [LOW_DISK] * 5, run.output[-3000:]
        assert free_bytes(disk) >= WATERMARK
        assert_stored_exactly(node, made[:3])
        echo = echoscu(node.port)
        assert echo.returncode == 0 and "Received Echo Response (Success)" in echo.output, echo.output[-3000:]

        filler.unlink()
        assert storescu(node.port, [m.path for m in made[3:]]).statuses == [statuses.SUCCESS] * 5
        assert_stored_exactly(node, made)


@pytest.mark.slow
def test_the_second_instance_is_refused_once_the_first_filled_the_disk_and_succeeds_after_space_is_freed(
    tmp_path: Path,
) -> None:
    first, second = make_study(tmp_path / "in", 2, size=512)
    with node_on_tmpfs(tmp_path, 16 * MIB) as (node, disk):
        filler = leave_room_for(disk, 1.5, first.path.stat().st_size)
        assoc = node.associate([(DX_FOR_PRESENTATION, [ExplicitVRLittleEndian]), VERIFICATION_CONTEXT])
        assert assoc.is_established
        try:
            assert assoc.send_c_store(first.path).Status == statuses.SUCCESS
            assert assoc.send_c_store(second.path).Status == LOW_DISK
            assert [row.sop_instance_uid for row in node.instances()] == [first.identity.sop_instance_uid]
            assert assoc.send_c_echo().Status == statuses.SUCCESS
            filler.unlink()
            assert assoc.send_c_store(second.path).Status == statuses.SUCCESS
        finally:
            assoc.release()
        stored = {row.sop_instance_uid: node.spool / row.path for row in node.instances()}
        assert sorted(stored) == sorted([first.identity.sop_instance_uid, second.identity.sop_instance_uid])
        assert (dcmread(stored[second.identity.sop_instance_uid]).pixel_array == second.pixels).all()
        assert not list(node.settings.data_dir.rglob(f"*{PARTIAL_SUFFIX}"))


@pytest.mark.slow
def test_a_huge_instance_crossing_the_watermark_while_it_arrives_is_dropped_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    huge = make_instance(tmp_path / "huge.dcm", size=2048)  # 8 MiB of pixels
    small = make_instance(tmp_path / "small.dcm", size=64)
    assert huge.path.stat().st_size > 8 * MIB
    with node_on_tmpfs(tmp_path, 32 * MIB) as (node, disk):
        filler = fill_until(disk / "filler", free_left=WATERMARK + 3 * MIB)  # it starts above the watermark
        lowest = [free_bytes(disk)]
        sending = threading.Event()

        def watch() -> None:
            while sending.is_set():
                lowest.append(free_bytes(disk))

        sending.set()
        watcher = threading.Thread(target=watch)
        watcher.start()
        caplog.set_level(logging.WARNING, logger="node.scp")
        try:
            run = storescu(node.port, [huge.path, small.path], extra=["--no-halt"])
        finally:
            sending.clear()
            watcher.join()

        assert run.statuses == [LOW_DISK, statuses.SUCCESS], run.output[-3000:]
        assert node.handle.incoming.dropped_low_disk == 1
        assert any(
            huge.identity.sop_instance_uid in r.getMessage() and "while its data set arrived" in r.getMessage()
            for r in caplog.records
        )
        # Dropped within one check interval (1 MiB) and a PDU past the watermark, far from the last byte.
        assert min(lowest) > WATERMARK - MIB - 256 * 1024
        assert_stored_exactly(node, [small])
        filler.unlink()
        assert storescu(node.port, [huge.path]).statuses == [statuses.SUCCESS]
        assert_stored_exactly(node, [small, huge])
