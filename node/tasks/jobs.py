"""Claiming and closing jobs idempotently; the sweep that re-queues jobs whose worker died.

Every move is a conditional ``UPDATE`` built by :mod:`node.lifecycle`, keyed on the job's
state and its ``attempts`` counter (the claim token), so that:

- a duplicate wake-up, or one for a job already done, finds nothing to claim and returns;
- a worker whose job was taken over (after it was presumed dead) cannot overwrite the outcome
  of the newer attempt;
- a job for an old generation of a study (a late instance re-opened it) never moves the study
  back to ``done``: study moves also match on the generation.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.constants import JobState
from node.db import Database, Job, Study
from node.db.schema import as_utc, utcnow
from node.lifecycle import JOB, STUDY, JobEvent, StudyEvent
from node.settings import Settings

log = logging.getLogger(__name__)

#: A job whose worker died this many times is failed instead of run again (a poison study).
MAX_JOB_ATTEMPTS = 3

#: Longest error text stored on a job.
ERROR_MAX_CHARS = 2000


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds; ``attempt`` is the claim token checked when it closes."""

    job_id: int
    study_id: int
    study_instance_uid: str
    generation: int
    attempt: int
    worker: str
    calling_aet: str | None
    called_aet: str | None


def _move_study(session: Session, study_id: int, generation: int, event: StudyEvent, now: dt.datetime) -> bool:
    # Only the study's current generation moves; a re-opened study stays `received`.
    moved = STUDY.apply(
        session, Study, event, Study.id == study_id, Study.generation == generation, values={"updated_at": now}
    )
    return moved == 1


def claim_job(database: Database, job_id: int, *, worker: str, stale_after_seconds: float, now: dt.datetime | None = None) -> ClaimedJob | None:
    """Take the job ``job_id`` for ``worker``, or return ``None`` when it is not claimable.

    Claimable: ``queued``, or ``running`` since longer than ``stale_after_seconds`` (its worker
    is presumed dead; this is how a broker re-delivery after the visibility timeout resumes it).
    A job whose study has moved to a newer generation is closed as superseded (``done``, with
    the reason in its summary) instead of being run. A job that has used up
    :data:`MAX_JOB_ATTEMPTS` is failed.
    """
    now = as_utc(now or utcnow())
    stale_before = now - dt.timedelta(seconds=stale_after_seconds)
    with database.session() as session:
        row = session.execute(
            select(Job.attempts, Job.state, Job.study_id, Job.generation).where(Job.id == job_id)
        ).first()
        if row is None:
            log.warning("wake-up for job %d, which does not exist; ignored", job_id)
            return None
        attempts, state, study_id, generation = row
        if state not in (JobState.QUEUED, JobState.RUNNING):
            log.info("job %d is %s; duplicate wake-up ignored", job_id, state)
            return None
        this_attempt = (Job.id == job_id, Job.attempts == attempts)
        if state is JobState.RUNNING:
            this_attempt += (Job.started_at <= stale_before,)  # a live worker may still hold it
        if attempts >= MAX_JOB_ATTEMPTS:
            failed = JOB.apply(
                session,
                Job,
                JobEvent.GAVE_UP,
                *this_attempt,
                values={
                    "finished_at": now,
                    "error": f"gave up after {attempts} attempts: the worker stopped during each of them",
                },
            )
            if failed == 1:
                _move_study(session, study_id, generation, StudyEvent.GAVE_UP, now)
                log.error("job %d failed: %d attempts used", job_id, attempts)
            return None
        event = JobEvent.CLAIMED if state is JobState.QUEUED else JobEvent.TAKEN_OVER
        claimed = JOB.apply(
            session,
            Job,
            event,
            *this_attempt,
            values={"attempts": attempts + 1, "started_at": now, "worker": worker, "error": None},
        )
        if claimed != 1:
            log.info("job %d is already being run; duplicate wake-up ignored", job_id)
            return None
        study = session.execute(
            select(Study.study_instance_uid, Study.generation, Study.calling_aet, Study.called_aet).where(
                Study.id == study_id
            )
        ).one()
        if study.generation != generation:
            JOB.apply(
                session,
                Job,
                JobEvent.SUPERSEDED,
                Job.id == job_id,
                Job.attempts == attempts + 1,
                values={"finished_at": now, "summary": {"superseded_by_generation": study.generation}},
            )
            log.info(
                "job %d of study %s is for generation %d, the study is at %d; closed as superseded",
                job_id,
                study.study_instance_uid,
                generation,
                study.generation,
            )
            return None
        _move_study(session, study_id, generation, StudyEvent.JOB_CLAIMED, now)
    log.info("job %d (study %s, generation %d) claimed by %s, attempt %d", job_id, study.study_instance_uid, generation, worker, attempts + 1)
    return ClaimedJob(
        job_id=job_id,
        study_id=study_id,
        study_instance_uid=study.study_instance_uid,
        generation=generation,
        attempt=attempts + 1,
        worker=worker,
        calling_aet=study.calling_aet,
        called_aet=study.called_aet,
    )


def close_job(
    session: Session, claim: ClaimedJob, event: JobEvent, *, summary: dict[str, Any] | None, error: str | None = None
) -> bool:
    """Close the claimed job with ``event`` (finished or failed) in ``session``; False if it was taken over.

    The study moves with it (``job_done`` or ``job_failed``) if it is still at the job's
    generation. Called inside the transaction that also records the job's results, so that
    results, deliveries and states commit together or not at all.
    """
    if event not in (JobEvent.FINISHED, JobEvent.FAILED):
        raise ValueError(f"a job is closed as finished or failed; got {event.value!r}")
    now = utcnow()
    closed = JOB.apply(
        session,
        Job,
        event,
        Job.id == claim.job_id,
        Job.attempts == claim.attempt,
        values={"finished_at": now, "summary": summary, "error": error[:ERROR_MAX_CHARS] if error else None},
    )
    if closed != 1:
        log.warning(
            "job %d attempt %d was taken over by another worker; its outcome (%s) is not recorded",
            claim.job_id,
            claim.attempt,
            event.value,
        )
        return False
    study_event = StudyEvent.JOB_DONE if event is JobEvent.FINISHED else StudyEvent.JOB_FAILED
    if not _move_study(session, claim.study_id, claim.generation, study_event, now):
        current = session.execute(select(Study.state, Study.generation).where(Study.id == claim.study_id)).one()
        # A late instance re-opened the study (newer generation): its state is newer than this job's outcome.
        log.info(
            "job %d finished for generation %d of study %s; study is already %s (generation %d), state left as is",
            claim.job_id,
            claim.generation,
            claim.study_instance_uid,
            current.state,
            current.generation,
        )
    return True


def fail_job(database: Database, claim: ClaimedJob, error: str, summary: dict[str, Any] | None = None) -> bool:
    """Mark the claimed job ``failed`` with ``error`` (and its study); False if taken over."""
    with database.session() as session:
        return close_job(session, claim, JobEvent.FAILED, summary=summary, error=error)


def requeue_unfinished(database: Database, settings: Settings, *, running_are_dead: bool, now: dt.datetime | None = None) -> list[int]:
    """The start-up sweep: return the ids of every job that needs a wake-up.

    ``queued`` jobs are returned as they are. ``running`` jobs whose worker is dead go back to
    ``queued`` (their study too, if still at that generation) and are returned: all of them
    when ``running_are_dead`` (the in-process transport at ``serve`` start: its workers were
    the previous process's threads), else those running longer than
    ``settings.job_timeout_seconds``.
    """
    now = as_utc(now or utcnow())
    stale_before = now - dt.timedelta(seconds=settings.job_timeout_seconds)
    with database.session() as session:
        rows = session.execute(
            select(Job.id, Job.state, Job.attempts, Job.started_at, Job.study_id, Job.generation)
            .where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
            .order_by(Job.id)
        ).all()
    wake: list[int] = []
    for job_id, state, attempts, started_at, study_id, generation in rows:
        if state is JobState.QUEUED:
            wake.append(job_id)
            continue
        if not running_are_dead and started_at is not None and as_utc(started_at) > stale_before:
            continue  # a live worker may still hold it
        with database.session() as session:
            reset = JOB.apply(
                session, Job, JobEvent.WORKER_LOST, Job.id == job_id, Job.attempts == attempts, values={"worker": None}
            )
            if reset == 1:
                _move_study(session, study_id, generation, StudyEvent.WORKER_LOST, now)
        if reset == 1:
            log.warning("job %d was running when its worker stopped; queued again", job_id)
            wake.append(job_id)
    if wake:
        log.info("sweep: %d unfinished job(s) to wake: %s", len(wake), wake)
    return wake


def queued_job_ids(database: Database) -> list[int]:
    """Ids of every ``queued`` job, oldest first."""
    with database.session() as session:
        return list(session.scalars(select(Job.id).where(Job.state == JobState.QUEUED).order_by(Job.id)))


def requeue_stale_running(database: Database, settings: Settings) -> list[int]:
    """Periodic part of the sweep (broker mode): running jobs past the job timeout, re-queued."""
    queued_ids = set(queued_job_ids(database))
    return [job_id for job_id in requeue_unfinished(database, settings, running_are_dead=False) if job_id not in queued_ids]


def finish_job(database: Database, claim: ClaimedJob, summary: dict[str, Any] | None = None) -> bool:
    """Mark the claimed job ``done`` with ``summary`` (and its study) in its own transaction; False if taken over."""
    with database.session() as session:
        return close_job(session, claim, JobEvent.FINISHED, summary=summary)
