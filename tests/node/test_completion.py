"""Study completion: quiet studies become exactly one queued job per generation."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import select

from node.completion import CompletionScanner, queue_quiet_studies
from node.constants import JobState, StudyState
from node.db import Job, Study
from node.ingest import ReceivedInstance, record_instance
from tests.support.study_rows import add_study, make_database, make_settings


def _jobs(database) -> list[tuple[int, int, str]]:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return [tuple(r) for r in session.execute(select(Job.study_id, Job.generation, Job.state).order_by(Job.id))]


def _state(database, study_id: int) -> str:  # type: ignore[no-untyped-def]
    with database.session() as session:
        return session.get(Study, study_id).state


def test_quiet_study_becomes_queued_with_one_job_for_its_generation(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, stable_seconds=5)
    database = make_database(settings)
    study_id, uid = add_study(database, quiet_for=6, generation=2)

    queued = queue_quiet_studies(database, settings)

    assert [(q.study_id, q.study_instance_uid, q.generation) for q in queued] == [(study_id, uid, 2)]
    assert _state(database, study_id) == StudyState.QUEUED.value
    assert _jobs(database) == [(study_id, 2, JobState.QUEUED.value)]
    assert queue_quiet_studies(database, settings) == []  # nothing left to queue
    assert len(_jobs(database)) == 1


def test_study_still_receiving_is_not_queued(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, stable_seconds=5)
    database = make_database(settings)
    study_id, _ = add_study(database, quiet_for=2)

    assert queue_quiet_studies(database, settings) == []
    assert _state(database, study_id) == StudyState.RECEIVED.value
    assert _jobs(database) == []


def test_quiet_period_is_taken_per_calling_ae_title(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, stable_seconds=5, stable_seconds_by_aet={"SLOWMOD": 60})
    database = make_database(settings)
    slow_id, _ = add_study(database, quiet_for=30, calling_aet="SLOWMOD")
    fast_id, _ = add_study(database, quiet_for=30, calling_aet="FASTMOD")

    queued = queue_quiet_studies(database, settings)

    assert [q.study_id for q in queued] == [fast_id]
    assert _state(database, slow_id) == StudyState.RECEIVED.value


def test_studies_in_other_states_are_left_alone(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    database = make_database(settings)
    for state in (StudyState.QUEUED, StudyState.RUNNING, StudyState.DONE, StudyState.FAILED, StudyState.DELIVERED):
        add_study(database, state=state, quiet_for=600)

    assert queue_quiet_studies(database, settings) == []
    assert _jobs(database) == []


def test_concurrent_scanners_queue_a_study_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    database = make_database(settings)
    study_ids = [add_study(database, quiet_for=60)[0] for _ in range(10)]
    barrier = threading.Barrier(4)
    results: list[list[int]] = []

    def scan() -> None:
        barrier.wait()
        results.append([q.study_id for q in queue_quiet_studies(database, settings)])

    threads = [threading.Thread(target=scan) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    won = sorted(sid for r in results for sid in r)
    assert won == sorted(study_ids)  # each study queued by exactly one scanner
    assert sorted(j[0] for j in _jobs(database)) == sorted(study_ids)


def test_late_instance_reopens_study_and_scanner_queues_the_new_generation(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, stable_seconds=0.2)
    database = make_database(settings)
    study_id, uid = add_study(database, quiet_for=60)
    assert len(queue_quiet_studies(database, settings)) == 1

    late = ReceivedInstance(uid, "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1", f"{uid}/x.dcm", 10, "MODALITY", "CXRNODE")
    record_instance(database, late)
    assert _state(database, study_id) == StudyState.RECEIVED.value
    assert queue_quiet_studies(database, settings) == []  # the late instance restarted the quiet period

    deadline = time.monotonic() + 10
    queued = []
    while not queued and time.monotonic() < deadline:
        queued = queue_quiet_studies(database, settings)
        time.sleep(0.05)
    assert [(q.study_id, q.generation) for q in queued] == [(study_id, 1)]
    assert _jobs(database) == [(study_id, 0, "queued"), (study_id, 1, "queued")]


def test_scanner_thread_wakes_each_queued_job_once_and_retries_a_failed_wake_up(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, scan_interval_seconds=0.05)
    database = make_database(settings)
    add_study(database, quiet_for=60)
    add_study(database, quiet_for=60)
    woken: list[int] = []
    failures = {"left": 1}

    def wake(job_id: int) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("broker down")
        woken.append(job_id)

    scanner = CompletionScanner(database, settings, wake)
    scanner.start()
    try:
        deadline = time.monotonic() + 10
        while len(woken) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        passes = scanner.passes
        while scanner.passes < passes + 3 and time.monotonic() < deadline:
            time.sleep(0.02)  # a few more passes: nothing is woken twice
        assert scanner.passes >= passes + 3
    finally:
        scanner.stop()
    job_ids = [j for j, in _ids(database)]
    assert sorted(woken) == sorted(job_ids)
    assert failures["left"] == 0


def _ids(database):  # type: ignore[no-untyped-def]
    with database.session() as session:
        return session.execute(select(Job.id)).all()
