"""Claiming and finishing jobs: idempotent, generation-aware, safe against takeovers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import select, update

from node.completion import queue_quiet_studies
from node.constants import JobState, StudyState
from node.db import Database, Job, Study
from node.db.schema import utcnow
from node.settings import Settings
from node.tasks.jobs import claim_job, fail_job, finish_job, requeue_lost, requeue_unfinished
from tests.support.study_rows import add_study, make_database, make_settings


def _queued_job(tmp_path: Path, **settings_overrides: object) -> tuple[Settings, Database, int, int]:
    settings = make_settings(tmp_path, **settings_overrides)
    database = make_database(settings)
    study_id, _ = add_study(database, quiet_for=60)
    [queued] = queue_quiet_studies(database, settings)
    return settings, database, study_id, queued.job_id


def _job(database: Database, job_id: int) -> Job:
    with database.session() as session:
        return session.get(Job, job_id)  # type: ignore[return-value]


def _study_state(database: Database, study_id: int) -> str:
    with database.session() as session:
        return session.get(Study, study_id).state  # type: ignore[union-attr]


def test_a_job_is_claimed_once_and_a_duplicate_wake_up_finds_nothing(tmp_path: Path) -> None:
    _, database, study_id, job_id = _queued_job(tmp_path)

    claim = claim_job(database, job_id, worker="w1")
    again = claim_job(database, job_id, worker="w2")

    assert claim is not None and claim.attempt == 1 and claim.worker == "w1"
    assert again is None
    job = _job(database, job_id)
    assert (job.state, job.attempts, job.worker) == (JobState.RUNNING.value, 1, "w1")
    assert _study_state(database, study_id) == StudyState.RUNNING.value


def test_finishing_marks_job_and_study_done_and_later_wake_ups_are_ignored(tmp_path: Path) -> None:
    _, database, study_id, job_id = _queued_job(tmp_path)
    claim = claim_job(database, job_id, worker="w1")
    assert claim is not None

    assert finish_job(database, claim, {"instances": 0})

    job = _job(database, job_id)
    assert job.state == JobState.DONE.value and job.summary == {"instances": 0} and job.finished_at is not None
    assert _study_state(database, study_id) == StudyState.DONE.value
    assert claim_job(database, job_id, worker="w2") is None


def test_failing_records_the_error_on_job_and_study(tmp_path: Path) -> None:
    _, database, study_id, job_id = _queued_job(tmp_path)
    claim = claim_job(database, job_id, worker="w1")
    assert claim is not None

    assert fail_job(database, claim, "RuntimeError: spool unreadable")

    job = _job(database, job_id)
    assert (job.state, job.error) == (JobState.FAILED.value, "RuntimeError: spool unreadable")
    assert _study_state(database, study_id) == StudyState.FAILED.value


def test_job_of_an_old_generation_finishing_after_a_reopen_leaves_the_study_received(tmp_path: Path) -> None:
    _, database, study_id, job_id = _queued_job(tmp_path)
    claim = claim_job(database, job_id, worker="w1")
    assert claim is not None
    with database.session() as session:  # what the listener does when a late instance arrives
        session.execute(
            update(Study).where(Study.id == study_id).values(state="received", generation=Study.generation + 1, last_received_at=utcnow())
        )

    assert finish_job(database, claim, {})

    assert _job(database, job_id).state == JobState.DONE.value
    assert _study_state(database, study_id) == StudyState.RECEIVED.value


def test_queued_job_of_a_superseded_generation_is_closed_without_running(tmp_path: Path) -> None:
    _, database, study_id, job_id = _queued_job(tmp_path)
    with database.session() as session:
        session.execute(update(Study).where(Study.id == study_id).values(state="received", generation=1))

    assert claim_job(database, job_id, worker="w1") is None

    job = _job(database, job_id)
    assert job.state == JobState.DONE.value
    assert job.summary == {"superseded_by_generation": 1}
    assert _study_state(database, study_id) == StudyState.RECEIVED.value


def test_a_running_job_is_queued_again_only_once_its_heartbeat_is_stale(tmp_path: Path) -> None:
    settings, database, _, job_id = _queued_job(tmp_path, job_heartbeat_timeout_seconds=15)
    first = claim_job(database, job_id, worker="host/1/t")
    assert first is not None
    assert claim_job(database, job_id, worker="host/2/t") is None  # running: not claimable

    assert requeue_lost(database, settings, now=utcnow() + dt.timedelta(seconds=10)) == []
    assert requeue_lost(database, settings, now=utcnow() + dt.timedelta(seconds=16)) == [job_id]
    second = claim_job(database, job_id, worker="host/2/t")

    assert second is not None and second.attempt == 2 and second.interrupted_before
    # the presumed-dead worker comes back: it cannot overwrite the newer attempt
    assert not finish_job(database, first, {"from": "dead"})
    assert finish_job(database, second, {"from": "w2"})
    assert _job(database, job_id).summary == {"from": "w2"}


def test_sweep_in_process_requeues_every_running_job(tmp_path: Path) -> None:
    settings, database, study_id, job_id = _queued_job(tmp_path)
    assert claim_job(database, job_id, worker="old-process") is not None
    other_study, _ = add_study(database, quiet_for=60)
    [other] = queue_quiet_studies(database, settings)

    wake = requeue_unfinished(database, settings, running_are_dead=True)

    assert sorted(wake) == sorted([job_id, other.job_id])
    job = _job(database, job_id)
    assert (job.state, job.worker) == (JobState.QUEUED.value, None)
    assert _study_state(database, study_id) == StudyState.QUEUED.value
    assert claim_job(database, job_id, worker="new-process") is not None


def test_sweep_with_a_broker_leaves_running_jobs_inside_the_job_timeout_while_they_heartbeat(tmp_path: Path) -> None:
    settings, database, _, job_id = _queued_job(tmp_path, job_timeout_seconds=60, job_heartbeat_timeout_seconds=15)
    assert claim_job(database, job_id, worker="gpu-1/7/MainThread") is not None

    assert requeue_unfinished(database, settings, running_are_dead=False) == []
    assert _job(database, job_id).state == JobState.RUNNING.value
    # heartbeating, but past the job timeout: hung, taken for lost
    with database.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() + dt.timedelta(seconds=61)))
    later = utcnow() + dt.timedelta(seconds=61)
    assert requeue_unfinished(database, settings, running_are_dead=False, now=later) == [job_id]
    assert _job(database, job_id).state == JobState.QUEUED.value


def _crash(database: Database, settings: Settings, job_id: int, *, worker: str, stage: str = "analyse") -> None:
    assert claim_job(database, job_id, worker=worker) is not None
    with database.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(progress={"image": 1, "of": 1, "stage": stage}))
    requeue_unfinished(database, settings, running_are_dead=True)


def test_a_study_whose_worker_dies_alone_at_the_same_point_is_given_up_as_the_cause(tmp_path: Path) -> None:
    settings, database, study_id, job_id = _queued_job(tmp_path, job_blame_after_crashes=3)
    for n in range(3):
        _crash(database, settings, job_id, worker=f"host/{n}/task-0")

    job = _job(database, job_id)
    assert job.state == JobState.FAILED.value
    assert "the study is to blame" in job.error and "3 times" in job.error and "'analyse'" in job.error
    assert job.summary == {"blame": "study", "interruptions": 3}
    assert [i["alone"] for i in job.interruptions] == [True, True, True]
    assert _study_state(database, study_id) == StudyState.FAILED.value


def test_deaths_beside_other_jobs_or_at_different_points_do_not_blame_the_study(tmp_path: Path) -> None:
    settings, database, _, job_id = _queued_job(tmp_path, job_blame_after_crashes=3, job_max_interruptions=10)
    other_study, _ = add_study(database, quiet_for=60)
    [other] = queue_quiet_studies(database, settings)
    for n in range(4):  # the process dies with both jobs in it, four times
        assert claim_job(database, job_id, worker=f"host/{n}/task-0") is not None
        assert claim_job(database, other.job_id, worker=f"host/{n}/task-1") is not None
        requeue_unfinished(database, settings, running_are_dead=True)
    for n, stage in enumerate(["open", "analyse", "record"]):  # alone, but never at one point twice
        _crash(database, settings, job_id, worker=f"host/{10 + n}/task-0", stage=stage)

    job = _job(database, job_id)
    assert job.state == JobState.QUEUED.value, job.error
    assert len(job.interruptions) == 7
    assert [i["alone"] for i in job.interruptions] == [False] * 4 + [True] * 3


def test_a_job_interrupted_without_evidence_is_given_up_at_the_ceiling_and_says_so(tmp_path: Path) -> None:
    settings, database, study_id, job_id = _queued_job(tmp_path, job_blame_after_crashes=3, job_max_interruptions=4)
    add_study(database, quiet_for=60)
    [other] = queue_quiet_studies(database, settings)
    for n in range(4):
        assert claim_job(database, job_id, worker=f"host/{n}/task-0") is not None
        claim_job(database, other.job_id, worker=f"host/{n}/task-1")
        requeue_unfinished(database, settings, running_are_dead=True)

    job = _job(database, job_id)
    assert job.state == JobState.FAILED.value
    assert "without evidence against the study" in job.error and job.summary["blame"] == "unproven"


def test_wake_up_for_a_missing_job_is_ignored(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    database = make_database(settings)
    assert claim_job(database, 12345, worker="w") is None
    with database.session() as session:
        assert session.execute(select(Job)).first() is None


def test_deaths_while_the_models_load_are_never_evidence_against_the_study(tmp_path: Path) -> None:
    settings, database, _, job_id = _queued_job(tmp_path, job_blame_after_crashes=3, job_max_interruptions=10)
    for n in range(4):  # a node killed again and again soon after it starts
        _crash(database, settings, job_id, worker=f"host/{n}/task-0", stage="models")

    job = _job(database, job_id)
    assert job.state == JobState.QUEUED.value, job.error
    assert [i["alone"] for i in job.interruptions] == [True] * 4
