"""`cxr-node worker`: a real Celery worker process carries jobs through a real Redis broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from node.completion import queue_quiet_studies
from node.constants import QUEUE_INFERENCE, JobState, StudyState
from node.db import Instance, Job, Study
from node.tasks.celery_app import create_celery_app
from node.tasks.dispatch import CeleryDispatcher
from tests.support.polling import wait_for
from tests.support.redis_server import RedisServer
from tests.support.study_rows import add_instance, add_study, make_database, make_settings

CXR_NODE = str(Path(sys.executable).with_name("cxr-node"))


@pytest.mark.slow
def test_worker_process_runs_process_study_from_redis_once(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as broker:
        settings = make_settings(tmp_path, broker_url=broker.url)
        database = make_database(settings)
        study_id, study_uid = add_study(database, quiet_for=60)
        add_instance(database, settings, study_id, study_uid)
        add_instance(database, settings, study_id, study_uid, seed=1, view_position="LL")
        [queued] = queue_quiet_studies(database, settings)
        dispatcher = CeleryDispatcher(create_celery_app(settings))
        dispatcher.process_study(queued.job_id)
        dispatcher.process_study(queued.job_id)  # a duplicate wake-up, as a sweep may send

        env = {
            **os.environ,
            "CXR_NODE_DATA_DIR": str(settings.data_dir),
            "CXR_NODE_BROKER_URL": broker.url,
        }
        log = open(tmp_path / "worker.log", "wb")
        worker = subprocess.Popen(
            [CXR_NODE, "worker", "--queues", QUEUE_INFERENCE, "--log-level", "INFO"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            def job_done() -> Job | None:
                with database.session() as session:
                    job = session.get(Job, queued.job_id)
                    return job if job.state == JobState.DONE.value else None

            job = wait_for(job_done, "the worker to finish the job", 60)
            queue = redis.Redis(port=broker.port)
            wait_for(lambda: queue.llen(QUEUE_INFERENCE) == 0 and queue.zcard("unacked_index") == 0, "both wake-ups to be consumed and acknowledged", 30)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
            log.close()
        output = (tmp_path / "worker.log").read_text()
        assert worker.returncode == 0, output

    assert job.attempts == 1, output  # the duplicate wake-up found nothing to claim
    assert job.worker.split("/")[1] == str(worker.pid)  # run by the worker process, not by this test
    assert job.summary["instances"] == 2 and job.summary["decoded"] == 2
    with database.session() as session:
        assert session.get(Study, study_id).state == StudyState.DONE.value
        views = sorted(i.inspection["view_position"] for i in session.query(Instance).filter_by(study_id=study_id))
    assert views == ["LL", "PA"]
    assert "duplicate wake-up ignored" in output


def test_worker_without_a_broker_says_how_to_run_tasks(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CXR_NODE_BROKER_URL"}
    env["CXR_NODE_DATA_DIR"] = str(tmp_path / "var")
    result = subprocess.run([CXR_NODE, "worker"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "CXR_NODE_BROKER_URL is not set" in result.stderr and "cxr-node serve" in result.stderr
