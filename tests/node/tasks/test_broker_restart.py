"""Broker mode: a Redis restart forgets every wake-up; the node notices and sends them again."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis

from node.constants import QUEUE_INFERENCE, JobState
from node.db import Job
from node.service import NodeService
from tests.support.polling import wait_for
from tests.support.redis_server import RedisServer
from tests.support.study_rows import add_study, make_database, make_settings

pytestmark = pytest.mark.slow


def test_queued_jobs_are_woken_again_after_the_broker_restarts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with RedisServer(tmp_path / "redis") as broker:
        settings = make_settings(tmp_path, broker_url=broker.url, scan_interval_seconds=0.05)
        database = make_database(settings)
        add_study(database, quiet_for=60)
        service = NodeService(settings, with_listener=False, sweep_every_passes=4)
        service.start()
        try:
            queue = redis.Redis(port=broker.port)
            wait_for(lambda: queue.llen(QUEUE_INFERENCE) == 1, "the wake-up in Redis", 30)  # no worker runs

            broker.restart()  # no persistence: the message is gone
            queue = redis.Redis(port=broker.port)
            # Not asserting an empty queue here: the node's sweep may already have re-sent the
            # wake-up. Without the re-send the fresh Redis stays empty and this wait times out.
            wait_for(lambda: queue.llen(QUEUE_INFERENCE) == 1, "the wake-up to be sent again", 30)
        finally:
            service.stop()
    with database.session() as session:
        [job] = session.query(Job).all()
        assert job.state == JobState.QUEUED.value and job.attempts == 0
    assert "the broker restarted; re-sending the wake-ups of 1 queued job(s)" in caplog.text
