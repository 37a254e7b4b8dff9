"""SIGKILL of `cxr-node serve` in the middle of a storescu stream: nothing acknowledged is lost,
no torn or partial file survives the restart, and the sender's retry completes the study once."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from node.constants import PARTIAL_SUFFIX
from node.db import Database, Instance
from node.scp import statuses
from tests.support.dcmtk import DcmtkRun, storescu
from tests.support.dicom_files import make_study
from tests.support.node_process import NodeProcess

pytestmark = pytest.mark.slow

COUNT = 40
KILL_AFTER_ROWS = 5


def _rows(database: Database) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def test_kill_during_a_stream_loses_nothing_acknowledged_and_leaves_no_partials(tmp_path: Path) -> None:
    study = make_study(tmp_path / "send", COUNT, size=512)
    node = NodeProcess(tmp_path / "var", env={"CXR_NODE_STABLE_SECONDS": "3600"})
    node.start()
    database = Database(node.database_url())
    try:
        args = ["storescu", "-d", "-R", "-aet", "MODALITY", "-aec", "CXRNODE", "127.0.0.1", str(node.port)]
        sender = subprocess.Popen(
            [*args, *(str(m.path) for m in study)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 60
        while _rows(database) < KILL_AFTER_ROWS and time.monotonic() < deadline and sender.poll() is None:
            time.sleep(0.005)
        node.kill()
        output, _ = sender.communicate(timeout=60)
        run = DcmtkRun(tuple(args), sender.returncode, output)
        acknowledged = [m for m, status in zip(study, run.statuses) if status == statuses.SUCCESS]
        # The last committed row's response may not have left before the kill.
        assert KILL_AFTER_ROWS - 1 <= len(acknowledged) < COUNT, "the kill did not land inside the stream"

        # Every acknowledged instance is in the database with its complete file.
        with database.session() as session:
            rows = {r.sop_instance_uid: r.path for r in session.execute(select(Instance)).scalars()}
        by_uid = {m.identity.sop_instance_uid: m for m in study}
        assert {m.identity.sop_instance_uid for m in acknowledged} <= set(rows)
        for sop_uid, path in rows.items():
            assert np.array_equal(dcmread(node.data_dir / "spool" / path).pixel_array, by_uid[sop_uid].pixels)

        node.start()  # removes what the kill left half-written
        assert not list((node.data_dir / "spool").rglob(f"*{PARTIAL_SUFFIX}"))

        retry = storescu(node.port, [m.path for m in study], calling_aet="MODALITY")
        assert retry.returncode == 0, retry.output[-2000:]
        assert retry.statuses == [statuses.SUCCESS] * COUNT
        assert _rows(database) == COUNT
        assert len(list((node.data_dir / "spool").rglob("*.dcm"))) == COUNT
    finally:
        node.stop()
        database.engine.dispose()
