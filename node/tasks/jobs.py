"""Claiming, closing and releasing jobs idempotently; the sweep that finds jobs whose worker died.

Every move is a conditional ``UPDATE`` built by :mod:`node.lifecycle`, keyed on the job's
state and its ``attempts`` counter (the claim token), so that:

- a duplicate wake-up, or one for a job already running or done, finds nothing to claim;
- a worker whose job was given up or queued again (after it was presumed dead) cannot
  overwrite the outcome of a newer attempt;
- a job for an old generation of a study (a late instance re-opened it) never moves the study
  back to ``done``: study moves also match on the generation.

A running job's worker renews its heartbeat (:mod:`node.tasks.heartbeat`). The sweep
(:func:`requeue_unfinished` at start-up, :func:`requeue_stale_running` every few seconds)
takes a job whose heartbeat stopped for one whose worker died: it records the interruption
with its evidence and queues the job again, or gives it up when the evidence says the study is
to blame (:mod:`node.tasks.interruptions`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.constants import JobState
from node.db import Database, Job, Study
from node.db.schema import as_utc, utcnow
from node.lifecycle import JOB, STUDY, JobEvent, StudyEvent
from node.settings import Settings
from node.tasks import interruptions as evidence

log = logging.getLogger(__name__)

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
    #: The job was interrupted by the death of a worker before; it runs alone in its process.
    interrupted_before: bool = False


def _move_study(session: Session, study_id: int, generation: int, event: StudyEvent, now: dt.datetime) -> bool:
    # Only the study's current generation moves; a re-opened study stays `received`.
    moved = STUDY.apply(
        session, Study, event, Study.id == study_id, Study.generation == generation, values={"updated_at": now}
    )
    return moved == 1


def claim_job(database: Database, job_id: int, *, worker: str, now: dt.datetime | None = None) -> ClaimedJob | None:
    """Take the ``queued`` job ``job_id`` for ``worker``, or return ``None`` when it is not claimable.

    A job already ``running`` is not claimed: its worker is alive, or the sweep will find that
    its heartbeat stopped and queue it again. A job whose study has moved to a newer generation
    is closed as superseded (``done``, with the reason in its summary) instead of being run.
    """
    now = as_utc(now or utcnow())
    with database.session() as session:
        row = session.execute(
            select(Job.attempts, Job.state, Job.study_id, Job.generation, Job.interruptions).where(Job.id == job_id)
        ).first()
        if row is None:
            log.warning("wake-up for job %d, which does not exist; ignored", job_id)
            return None
        attempts, state, study_id, generation, interrupted = row
        if state is not JobState.QUEUED:
            log.info("job %d is %s; duplicate wake-up ignored", job_id, state)
            return None
        claimed = JOB.apply(
            session,
            Job,
            JobEvent.CLAIMED,
            Job.id == job_id,
            Job.attempts == attempts,
            values={
                "attempts": attempts + 1,
                "started_at": now,
                "heartbeat_at": now,
                "progress": None,
                "worker": worker,
                "error": None,
            },
        )
        if claimed != 1:
            log.info("job %d was claimed by another worker meanwhile; duplicate wake-up ignored", job_id)
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
    log.info(
        "job %d (study %s, generation %d) claimed by %s, attempt %d%s",
        job_id,
        study.study_instance_uid,
        generation,
        worker,
        attempts + 1,
        f", after {len(interrupted)} interruption(s): runs alone" if interrupted else "",
    )
    return ClaimedJob(
        job_id=job_id,
        study_id=study_id,
        study_instance_uid=study.study_instance_uid,
        generation=generation,
        attempt=attempts + 1,
        worker=worker,
        calling_aet=study.calling_aet,
        called_aet=study.called_aet,
        interrupted_before=bool(interrupted),
    )


def was_interrupted(database: Database, job_id: int) -> bool:
    """Whether the job ``job_id`` has an interruption on record (it then runs alone in its process)."""
    with database.session() as session:
        return bool(session.scalar(select(Job.interruptions).where(Job.id == job_id)))


def close_job(
    session: Session, claim: ClaimedJob, event: JobEvent, *, summary: dict[str, Any] | None, error: str | None = None
) -> bool:
    """Close the claimed job with ``event`` (finished or failed) in ``session``; False if it is no longer this attempt's.

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
        values={
            "finished_at": now,
            "summary": summary,
            "error": error[:ERROR_MAX_CHARS] if error else None,
            "heartbeat_at": None,
        },
    )
    if closed != 1:
        log.warning(
            "job %d attempt %d is no longer this worker's (presumed dead and queued again); its outcome (%s) is not recorded",
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
    """Mark the claimed job ``failed`` with ``error`` (and its study); False if no longer this attempt's."""
    with database.session() as session:
        return close_job(session, claim, JobEvent.FAILED, summary=summary, error=error)


def release_job(database: Database, claim: ClaimedJob, reason: str) -> bool:
    """Give the claimed job back (``running`` -> ``queued``) without an outcome; False if no longer ours.

    For an attempt that could not go on for a reason outside the study and outside the worker's
    health (the database went away): it is not an interruption and counts against nothing.
    """
    now = utcnow()
    with database.session() as session:
        released = JOB.apply(
            session,
            Job,
            JobEvent.RELEASED,
            Job.id == claim.job_id,
            Job.attempts == claim.attempt,
            values={"worker": None, "heartbeat_at": None},
        )
        if released == 1:
            _move_study(session, claim.study_id, claim.generation, StudyEvent.JOB_RELEASED, now)
    if released == 1:
        log.warning("job %d (study %s) given back to the queue: %s", claim.job_id, claim.study_instance_uid, reason)
    return released == 1


def requeue_unfinished(database: Database, settings: Settings, *, running_are_dead: bool, now: dt.datetime | None = None) -> list[int]:
    """The start-up sweep: return the ids of every job that needs a wake-up.

    ``queued`` jobs are returned as they are. ``running`` jobs whose worker is dead are handled
    by :func:`requeue_lost`: all of them when ``running_are_dead`` (the in-process transport at
    ``serve`` start: its workers were the previous process's threads), else those whose
    heartbeat stopped.
    """
    queued = queued_job_ids(database)
    lost = requeue_lost(database, settings, all_running_are_dead=running_are_dead, now=now)
    wake = queued + [job_id for job_id in lost if job_id not in queued]
    if wake:
        log.info("sweep: %d unfinished job(s) to wake: %s", len(wake), wake)
    return wake


@dataclass(frozen=True)
class _Running:
    job_id: int
    attempts: int
    worker: str | None
    last_sign_of_life: dt.datetime | None
    started_at: dt.datetime | None
    progress: dict[str, Any] | None
    interruptions: list[dict[str, Any]] | None
    study_id: int
    generation: int


def requeue_lost(
    database: Database, settings: Settings, *, all_running_are_dead: bool = False, now: dt.datetime | None = None
) -> list[int]:
    """Find ``running`` jobs whose worker died; record each interruption; return the ids queued again.

    A job is lost when ``all_running_are_dead``, when its heartbeat is older than
    ``settings.job_heartbeat_timeout_seconds``, or when it has run longer than
    ``settings.job_timeout_seconds``. Each interruption records whether the job was alone in its
    process (no other job of that process was running) and the point it had reached; the job is
    then queued again, or given up (``failed``, with the verdict as its error) when
    :func:`node.tasks.interruptions.verdict` says so.
    """
    now = as_utc(now or utcnow())
    silent_before = now - dt.timedelta(seconds=settings.job_heartbeat_timeout_seconds)
    overdue_before = now - dt.timedelta(seconds=settings.job_timeout_seconds)
    with database.session() as session:
        running = [
            _Running(
                row.id,
                row.attempts,
                row.worker,
                as_utc(row.heartbeat_at or row.started_at) if (row.heartbeat_at or row.started_at) else None,
                as_utc(row.started_at) if row.started_at else None,
                row.progress,
                row.interruptions,
                row.study_id,
                row.generation,
            )
            for row in session.execute(
                select(
                    Job.id,
                    Job.attempts,
                    Job.worker,
                    Job.heartbeat_at,
                    Job.started_at,
                    Job.progress,
                    Job.interruptions,
                    Job.study_id,
                    Job.generation,
                )
                .where(Job.state == JobState.RUNNING)
                .order_by(Job.id)
            )
        ]

    def is_lost(job: _Running) -> bool:
        if all_running_are_dead or job.last_sign_of_life is None:
            return True
        return job.last_sign_of_life < silent_before or (job.started_at is not None and job.started_at < overdue_before)

    per_process = Counter(evidence.process_of(job.worker) for job in running)
    how = evidence.NOTICED_AT_START_UP if all_running_are_dead else evidence.NOTICED_BY_HEARTBEAT
    wake: list[int] = []
    for job in (j for j in running if is_lost(j)):
        interruption = evidence.Interruption(
            attempt=job.attempts,
            noticed_at=evidence.iso_now(now),
            worker=job.worker,
            how=how,
            alone=per_process[evidence.process_of(job.worker)] == 1,
            progress=job.progress,
        )
        history = evidence.record(job.interruptions, interruption)
        verdict = evidence.verdict(
            evidence.parse(history),
            blame_after=settings.job_blame_after_crashes,
            max_interruptions=settings.job_max_interruptions,
        )
        this_attempt = (Job.id == job.job_id, Job.attempts == job.attempts)
        with database.session() as session:
            if verdict.give_up:
                moved = JOB.apply(
                    session,
                    Job,
                    JobEvent.GAVE_UP,
                    *this_attempt,
                    values={
                        "finished_at": now,
                        "error": verdict.reason,
                        "interruptions": history,
                        "heartbeat_at": None,
                        "summary": {"blame": verdict.blame, "interruptions": len(history)},
                    },
                )
                if moved == 1:
                    _move_study(session, job.study_id, job.generation, StudyEvent.GAVE_UP, now)
            else:
                moved = JOB.apply(
                    session,
                    Job,
                    JobEvent.WORKER_LOST,
                    *this_attempt,
                    values={"worker": None, "heartbeat_at": None, "interruptions": history},
                )
                if moved == 1:
                    _move_study(session, job.study_id, job.generation, StudyEvent.WORKER_LOST, now)
        if moved != 1:
            continue  # it finished, or another sweep got there first
        where = evidence.describe_point(interruption.point)
        if verdict.give_up:
            log.error("job %d given up after %d interruption(s): %s", job.job_id, len(history), verdict.reason)
        else:
            log.warning(
                "job %d lost its worker %s (%s; %s, %s); queued again (interruption %d)",
                job.job_id,
                job.worker,
                how,
                "alone in its process" if interruption.alone else "beside other jobs",
                where,
                len(history),
            )
            wake.append(job.job_id)
    return wake


def queued_job_ids(database: Database) -> list[int]:
    """Ids of every ``queued`` job, oldest first."""
    with database.session() as session:
        return list(session.scalars(select(Job.id).where(Job.state == JobState.QUEUED).order_by(Job.id)))


def requeue_stale_running(database: Database, settings: Settings) -> list[int]:
    """Periodic part of the sweep: running jobs whose heartbeat stopped, queued again (their ids)."""
    return requeue_lost(database, settings)


def finish_job(database: Database, claim: ClaimedJob, summary: dict[str, Any] | None = None) -> bool:
    """Mark the claimed job ``done`` with ``summary`` (and its study) in its own transaction; False if no longer this attempt's."""
    with database.session() as session:
        return close_job(session, claim, JobEvent.FINISHED, summary=summary)
