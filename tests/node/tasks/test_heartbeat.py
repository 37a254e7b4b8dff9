"""The job heartbeat and the isolation gate, with real threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import update

from node.completion import queue_quiet_studies
from node.db import Database, Job
from node.db.schema import as_utc
from node.tasks.heartbeat import JobHeartbeat
from node.tasks.isolation import IsolationGate
from node.tasks.jobs import claim_job, finish_job
from tests.support.study_rows import add_study, make_database, make_settings


def _heartbeat_at(database: Database, job_id: int):  # type: ignore[no-untyped-def]
    with database.session() as session:
        value = session.get(Job, job_id).heartbeat_at  # type: ignore[union-attr]
    return as_utc(value) if value else None


def test_the_heartbeat_is_renewed_while_the_job_runs_and_stops_with_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    database = make_database(settings)
    add_study(database, quiet_for=60)
    [queued] = queue_quiet_studies(database, settings)
    claim = claim_job(database, queued.job_id, worker="host/1/t")
    assert claim is not None
    first = _heartbeat_at(database, claim.job_id)

    with JobHeartbeat(database, claim.job_id, claim.attempt, every_seconds=0.05) as heartbeat:
        time.sleep(0.3)
        renewed = _heartbeat_at(database, claim.job_id)
        heartbeat.reached("analyse", 2, 3)
    after = _heartbeat_at(database, claim.job_id)
    time.sleep(0.2)

    assert first < renewed <= after
    assert _heartbeat_at(database, claim.job_id) == after  # the thread stopped with the job
    with database.session() as session:
        assert session.get(Job, claim.job_id).progress == {"image": 2, "of": 3, "stage": "analyse"}  # type: ignore[union-attr]


def test_a_heartbeat_of_an_attempt_that_is_no_longer_the_jobs_changes_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    database = make_database(settings)
    add_study(database, quiet_for=60)
    [queued] = queue_quiet_studies(database, settings)
    claim = claim_job(database, queued.job_id, worker="host/1/t")
    assert claim is not None and finish_job(database, claim, {})
    with database.session() as session:
        session.execute(update(Job).where(Job.id == claim.job_id).values(heartbeat_at=None))

    assert not JobHeartbeat(database, claim.job_id, claim.attempt, every_seconds=1).beat()
    assert _heartbeat_at(database, claim.job_id) is None


def test_the_gate_runs_an_exclusive_holder_alone_and_is_not_starved_by_shared_ones() -> None:
    for _ in range(20):
        gate = IsolationGate()
        inside: list[str] = []
        overlaps: list[list[str]] = []
        lock = threading.Lock()

        def job(name: str, exclusive: bool) -> None:
            with gate.hold(exclusive=exclusive):
                with lock:
                    inside.append(name)
                    if exclusive and len(inside) > 1 or any(n.startswith("x") for n in inside) and len(inside) > 1:
                        overlaps.append(list(inside))
                time.sleep(0.002)
                with lock:
                    inside.remove(name)

        names = [(f"s{n}", False) for n in range(12)] + [(f"x{n}", True) for n in range(3)]
        threads = [threading.Thread(target=job, args=item) for item in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert not any(t.is_alive() for t in threads), "a holder never got the gate"
        assert overlaps == []
        assert gate.running() == 0
