"""Crash recovery: `cxr-node serve` killed with SIGKILL loses nothing it acknowledged.

The database is the source of truth: after a restart the completion timer, the queue and any
job that was running pick up where they were, and each study is processed exactly once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from tests.support.dcmtk import storescu
from tests.support.dicom_files import make_study
from tests.support.node_process import NodeProcess

pytestmark = pytest.mark.slow


def test_study_acknowledged_just_before_a_sigkill_is_processed_once_after_restart(tmp_path: Path) -> None:
    instances = make_study(tmp_path / "send", 3, ExplicitVRLittleEndian)
    study_uid = instances[0].identity.study_instance_uid
    # a quiet period long enough that the kill lands before the study is complete
    node = NodeProcess(tmp_path / "var", env={"CXR_NODE_STABLE_SECONDS": "3"})
    node.start()
    try:
        sent = storescu(node.port, [i.path for i in instances], calling_aet="MODALITY")
        node.kill()  # right after storescu reported success
        assert sent.returncode == 0 and sent.statuses == [0x0000] * 3, sent.output

        before = node.report(study_uid)
        assert before is not None, "an acknowledged study is missing from the database"
        assert before["study"]["state"] == "received" and before["jobs"] == []
        assert len(before["instances"]) == 3
        for row in before["instances"]:
            assert (node.data_dir / "spool" / row["path"]).is_file()

        node.start()
        report = node.wait_for_study(study_uid, "done")
    finally:
        node.stop()

    assert report is not None
    [job] = report["jobs"]
    assert (job["state"], job["attempts"], job["generation"]) == ("done", 1, 0)
    assert report["study"]["state"] == "done"
    assert len(report["instances"]) == 3
    assert all(i["inspection"]["decoded"] and i["inspection"]["job_id"] == job["id"] for i in report["instances"])


def test_job_running_when_the_node_is_killed_is_run_again_and_finished_once(tmp_path: Path) -> None:
    # enough decoding work (JPEG 2000, 1024 x 1024) that the job is seen running
    instances = make_study(tmp_path / "send", 4, JPEG2000Lossless, size=1024)
    study_uid = instances[0].identity.study_instance_uid
    node = NodeProcess(tmp_path / "var")
    node.start()
    try:
        sent = storescu(node.port, [i.path for i in instances], calling_aet="MODALITY", propose_only_sent=False, extra=["-xv"])
        assert sent.returncode == 0 and sent.statuses == [0x0000] * 4, sent.output
        node.wait_for_study(study_uid, "running", timeout=60)
        node.kill()
        killed = node.report(study_uid)
        assert killed is not None and killed["jobs"][0]["state"] == "running"

        node.start()
        report = node.wait_for_study(study_uid, "done", timeout=120)
    finally:
        node.stop()

    [job] = report["jobs"]
    assert (job["state"], job["attempts"]) == ("done", 2)  # the dead attempt, then the one that finished
    assert all(i["inspection"]["decoded"] and i["inspection"]["job_id"] == job["id"] for i in report["instances"])
    [cut] = job["interruptions"]
    assert (cut["attempt"], cut["alone"], cut["how"]) == (1, True, "the node started again after its process stopped")
    assert cut["progress"]["stage"] in ("open", "analyse", "record") and cut["progress"]["of"] == 4
    assert f"job {job['id']} lost its worker" in node.log_text()
