"""`cxr-node serve` end to end: storescu in, study complete, job done, shown by status/studies."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from tests.support.dcmtk import storescu
from tests.support.dicom_files import make_study
from tests.support.node_process import CXR_NODE, NodeProcess
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow


def test_serve_takes_a_study_from_storescu_and_status_shows_it_done(tmp_path: Path) -> None:
    instances = make_study(tmp_path / "send", 2, JPEGLSLossless)
    study_uid = instances[0].identity.study_instance_uid
    with NodeProcess(tmp_path / "var") as node:
        # as a modality sends JPEG-LS: proposed explicitly (-xt), not converted
        sent = storescu(node.port, [i.path for i in instances], calling_aet="MODALITY", propose_only_sent=False, extra=["-xt"])
        assert sent.returncode == 0 and sent.statuses == [0x0000, 0x0000], sent.output

        node.wait_for_study(study_uid, "done")
        status = node.status()
        report = node.study(study_uid)  # what `cxr-node studies show --json` prints
        exit_code = node.stop()

    assert exit_code == 0
    assert "node stopped" in node.log_text()
    [listed] = [s for s in status["latest_studies"] if s["study_instance_uid"] == study_uid]
    assert listed["state"] == "done" and listed["instances"] == 2 and listed["calling_aet"] == "MODALITY"
    assert listed["latest_job"]["state"] == "done"
    assert status["studies"]["by_state"]["done"] == 1 and status["jobs"]["by_state"]["done"] == 1
    assert status["node"]["transport"] == "in-process"
    [job] = report["jobs"]
    assert job["state"] == "done" and job["attempts"] == 1 and job["summary"]["decoded"] == 2
    for instance in report["instances"]:
        assert instance["transfer_syntax_uid"] == JPEGLSLossless
        assert instance["inspection"]["decoded"] is True
        assert instance["inspection"]["transfer_syntax_uid"] == JPEGLSLossless
    # no patient data in anything the node printed or logged
    for text in (node.log_text(), str(status), str(report)):
        assert "Phantom" not in text and "PHANTOM-0001" not in text


def test_serve_with_redis_hands_the_job_to_a_worker_process(tmp_path: Path) -> None:
    instances = make_study(tmp_path / "send", 1, ExplicitVRLittleEndian)
    study_uid = instances[0].identity.study_instance_uid
    with RedisServer(tmp_path / "redis") as broker:
        node = NodeProcess(tmp_path / "var", env={"CXR_NODE_BROKER_URL": broker.url})
        worker_log = open(tmp_path / "worker.log", "wb")
        worker = subprocess.Popen([CXR_NODE, "worker", "--queues", "inference"], env=node.env, stdout=worker_log, stderr=subprocess.STDOUT)
        try:
            with node:
                assert node.status()["node"]["transport"] == "celery"
                sent = storescu(node.port, [i.path for i in instances], calling_aet="MODALITY")
                assert sent.returncode == 0, sent.output
                report = node.wait_for_study(study_uid, "done")
        finally:
            worker.terminate()
            worker.wait(30)
            worker_log.close()
    [job] = report["jobs"]
    assert job["state"] == "done"
    assert job["worker"].split("/")[1] == str(worker.pid), (tmp_path / "worker.log").read_text()
    assert report["instances"][0]["inspection"]["decoded"] is True
    assert os.path.exists(tmp_path / "var" / "spool")
