"""Disk exhaustion: one association fills a small tmpfs spool past the free-disk watermark.

Each case mounts its own tmpfs (``mount -t tmpfs -o size=N``, root only) as the spool of an
in-process listener (:func:`tests.support.listener.start_node`) with ``min_free_disk_bytes`` set,
and sends instances on one association until well past the watermark. Expected: Success while
there is room, then :data:`node.scp.statuses.OUT_OF_RESOURCES_LOW_DISK` for every further
instance (never a Success after it, never 0xA701 "spool write failed"), the association still
answers C-ECHO, nothing partial is left (no ``.part`` files, a file for every Success and
none other), the disk never fills up, and a new association is rejected transiently
(:data:`node.scp.statuses.REJECT_LOW_DISK`) when free space is under the watermark, or accepted
with its next instance refused again when the refusals kept free space just above it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian

from node.constants import PARTIAL_SUFFIX
from node.scp import statuses
from tests.hostile.cases import DISK, CaseContext, HostileCase
from tests.support.dicom_files import test_pixels
from tests.support.listener import VERIFICATION_CONTEXT, start_node
from training.dicom_export import DX_FOR_PRESENTATION, RadiographIdentity, radiograph_dataset

MIB = 1024 * 1024
#: Listeners start one at a time (creating the schema with Alembic is not thread-safe).
_START = threading.Lock()


@dataclass(frozen=True)
class DiskOutcome:
    """What one filling association saw, and what the spool held afterwards."""

    statuses: tuple[int, ...]
    echo: int | None
    #: A new association afterwards: ("rejected", result, source, reason), or ("accepted", answer to one more instance)
    second_association: tuple[Any, ...]
    free_after: int  #: free bytes under the spool when the new association was requested
    stored_uids: frozenset[str]  #: SOP Instance UIDs answered Success
    spool_uids: frozenset[str]  #: SOP Instance UIDs of the .dcm files in the spool
    partials: tuple[str, ...]
    min_free_bytes: int  #: the least free space seen after an answer


@dataclass(frozen=True)
class FilledToTheWatermark:
    """Expected of a :class:`DiskOutcome`: Success, then the low-disk status for the rest (see the module docstring)."""

    watermark: int
    instance_bytes: int

    def mismatch(self, observed: Any) -> str | None:
        if not isinstance(observed, DiskOutcome):
            return f"expected a disk outcome, observed {observed!r}"
        low = statuses.OUT_OF_RESOURCES_LOW_DISK
        answers = list(observed.statuses)
        problems = []
        first_low = answers.index(low) if low in answers else len(answers)
        if first_low == 0:
            problems.append("no instance was stored before the watermark")
        if first_low == len(answers):
            problems.append(f"no 0x{low:04X} although the disk passed the watermark: {[hex(a) for a in answers]}")
        if answers[:first_low] != [statuses.SUCCESS] * first_low or answers[first_low:] != [low] * (len(answers) - first_low):
            problems.append(f"answers are not Success... then 0x{low:04X}...: {[hex(a) for a in answers]}")
        if observed.echo != statuses.SUCCESS:
            problems.append(f"C-ECHO on the same association answered {observed.echo!r}")
        # Under the watermark a new association is rejected; above it (the refusals look ahead by
        # the instance's size) it is accepted and the next instance of that size is refused too.
        if observed.free_after < self.watermark:
            wanted: tuple[Any, ...] = ("rejected", *statuses.REJECT_LOW_DISK[:3])
        else:
            wanted = ("accepted", low)
        if observed.second_association != wanted:
            problems.append(f"a new association with {observed.free_after} bytes free got {observed.second_association!r}, not {wanted!r}")
        if observed.spool_uids != observed.stored_uids:
            problems.append(f"spool holds {len(observed.spool_uids)} instances for {len(observed.stored_uids)} Success answers")
        if observed.partials:
            problems.append(f"partial files left: {observed.partials}")
        # The listener checks free space every MiB of a data set and before each one starts.
        floor = self.watermark - self.instance_bytes - 2 * MIB
        if observed.min_free_bytes < floor:
            problems.append(f"free space fell to {observed.min_free_bytes} bytes, under {floor}")
        return "; ".join(problems) or None


def _free(path: Path) -> int:
    return shutil.disk_usage(path).free


def disk_attack(tmpfs_mib: int, watermark: int, size: int, count: int) -> Any:
    """Mount a ``tmpfs_mib`` tmpfs as a fresh listener's spool; send ``count`` ``size``x``size`` instances."""

    def attack(ctx: CaseContext) -> DiskOutcome:
        data_dir = Path(tempfile.mkdtemp(prefix="cxr-disk-", dir=ctx.work_dir))
        spool = data_dir / "spool"
        spool.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_mib}m", "tmpfs", str(spool)], check=True)
        node = None
        try:
            with _START:
                node = start_node(data_dir, min_free_disk_bytes=watermark, max_pdu_size=65536)
            identity = RadiographIdentity.new()
            assoc = node.associate([(DX_FOR_PRESENTATION, [ExplicitVRLittleEndian]), VERIFICATION_CONTEXT], calling_aet="FILLER")
            if not assoc.is_established:
                raise AssertionError("the filling association was not accepted")
            answers: list[int] = []
            stored: set[str] = set()
            least = _free(spool)
            for n in range(count):
                instance = RadiographIdentity.new(identity.study_instance_uid, series_instance_uid=identity.series_instance_uid)
                ds = radiograph_dataset(test_pixels(size, seed=n), instance)
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                status = int(assoc.send_c_store(ds).Status)
                answers.append(status)
                if status == statuses.SUCCESS:
                    stored.add(instance.sop_instance_uid)
                least = min(least, _free(spool))
            echo = assoc.send_c_echo()
            assoc.release()
            free_after = _free(spool)
            second = node.associate([(DX_FOR_PRESENTATION, [ExplicitVRLittleEndian])], calling_aet="LATER")
            later: tuple[Any, ...] = ("neither",)
            if second.is_rejected:
                primitive = second.acceptor.primitive
                later = ("rejected", primitive.result, primitive.result_source, primitive.diagnostic)
            elif second.is_established:
                ds = radiograph_dataset(test_pixels(size, seed=count), RadiographIdentity.new())
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                later = ("accepted", int(second.send_c_store(ds).Status))
                second.release()
            spooled = frozenset(p.stem for p in spool.rglob("*.dcm"))
            partials = tuple(str(p.relative_to(spool)) for p in spool.rglob(f"*{PARTIAL_SUFFIX}"))
            return DiskOutcome(
                tuple(answers),
                int(echo.Status) if "Status" in echo else None,
                later,
                free_after,
                frozenset(stored),
                spooled,
                partials,
                least,
            )
        finally:
            if node is not None:
                node.stop()
            subprocess.run(["umount", str(spool)], check=False)

    return attack


def disk_cases() -> list[HostileCase]:
    """Three fillings: 1 MiB instances in 16 MiB (watermark 4 MiB), 2 MiB in 24 MiB (8 MiB), 4.5 MiB in 32 MiB (10 MiB)."""
    cases = []
    for tmpfs_mib, watermark_mib, size in ((16, 4, 724), (24, 8, 1024), (32, 10, 1536)):
        instance = size * size * 2
        count = int((tmpfs_mib - watermark_mib) * MIB / instance) + 4
        cases.append(
            HostileCase(
                f"{size}x{size}-instances-into-{tmpfs_mib}-mib-watermark-{watermark_mib}-mib",
                DISK,
                disk_attack(tmpfs_mib, watermark_mib * MIB, size, count),
                FilledToTheWatermark(watermark_mib * MIB, instance),
            )
        )
    return cases
