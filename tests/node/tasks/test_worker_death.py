"""An inference worker SIGKILLed mid-job, in the production shape: noticed within seconds, run again once.

PostgreSQL, Redis, Orthanc, ``cxr-node serve`` and ``cxr-node worker`` processes, all real
(:mod:`tests.support.deployment`). The worker dies while the job is ``running``; ``serve``'s job
sweep must notice the stopped heartbeat within the heartbeat timeout plus a sweep interval (not
at the job timeout of an hour), say so in its log, and the job must finish on a new worker with
its SEG and SR in the PACS exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from benchmarks.end_to_end import make_studies
from node.constants import JobState
from node.db import Job
from tests.support.deployment import INFERENCE_WORKER, SERVE, Deployment
from tests.support.polling import wait_for
from tests.support.store_load import send_files

pytestmark = pytest.mark.slow

HEARTBEAT_TIMEOUT_S = 5.0
#: Allowed from the kill to the job being queued again: the timeout, a sweep, and a loaded machine's slack.
NOTICED_WITHIN_S = HEARTBEAT_TIMEOUT_S + 10.0


def test_a_killed_inference_workers_job_is_queued_again_within_seconds_and_delivered_once(tmp_path: Path) -> None:
    # a fresh worker loads its models within the job, so the first attempt is long enough to be seen running
    [(study_uid, path)] = make_studies(tmp_path / "send", 1, 512)
    env = {
        "CXR_NODE_STABLE_SECONDS": "1",
        "CXR_NODE_JOB_HEARTBEAT_SECONDS": "1",
        "CXR_NODE_JOB_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT_S),
    }
    with Deployment(tmp_path / "deployment", env=env) as deployment:
        deployment.start()
        outcomes = send_files([path], deployment.port, associations=1)
        assert [o.status for o in outcomes] == [0]
        database = deployment.database

        def job_state() -> JobState | None:
            with database.session() as session:
                return session.scalar(select(Job.state))

        wait_for(lambda: job_state() is JobState.RUNNING, "the job to run", 120, interval=0.05)
        deployment.kill(INFERENCE_WORKER)
        killed_at = time.monotonic()
        wait_for(lambda: job_state() is not JobState.RUNNING, "the job to be noticed", 60, interval=0.1)
        noticed_after = time.monotonic() - killed_at
        deployment.start(INFERENCE_WORKER)
        deployment.wait_until_settled([study_uid], timeout=300)

        report = deployment.study_report(study_uid)
        problems = deployment.output_problems([study_uid])
        serve_log = deployment.log_tail(SERVE, 200_000)

    assert noticed_after < NOTICED_WITHIN_S, f"noticed {noticed_after:.1f} s after the kill"
    [job] = report["jobs"]
    assert job["state"] == "done" and report["study"]["state"] == "delivered"
    [cut] = job["interruptions"]
    assert (cut["attempt"], cut["alone"], cut["how"]) == (1, True, "its worker stopped renewing the heartbeat")
    assert f"job {job['id']} lost its worker" in serve_log
    assert problems == {}
