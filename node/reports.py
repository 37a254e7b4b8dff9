"""Read-side views of the database for the command line (``status``, ``studies``) and tests.

Each function returns a JSON-serialisable dict (datetimes as ISO 8601 UTC strings) built from
the database alone; nothing here holds patient names or IDs (the database has none).

``studies show`` adds the sections of :data:`STUDY_SECTIONS` (results, outputs, deliveries)
after ``study``, ``instances`` and ``jobs``; a new section is one function and one entry there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node.constants import JobState, StudyState
from node.db import Instance, Job, Study
from node.db.schema import iso
from node.delivery.report import delivery_section, outputs_section, results_section

SectionFunction = Callable[[Session, Study], Any]

#: The sections of ``studies show`` after the core keys, in order: name -> ``fn(session, study)``.
STUDY_SECTIONS: tuple[tuple[str, SectionFunction], ...] = (
    ("results", results_section),
    ("outputs", outputs_section),
    ("delivery", delivery_section),
)



def _counts(session: Session, column: Any, states: list[str]) -> dict[str, int]:
    counts = {state: 0 for state in states}
    for state, count in session.execute(select(column, func.count()).group_by(column)):
        counts[state] = count
    return counts


def study_summary(session: Session, study: Study) -> dict[str, Any]:
    """One study as a dict: UID, state, generation, AE titles, instance count, times, latest job."""
    instance_count = session.scalar(select(func.count()).select_from(Instance).where(Instance.study_id == study.id))
    latest_job = session.execute(
        select(Job.id, Job.generation, Job.state).where(Job.study_id == study.id).order_by(Job.id.desc()).limit(1)
    ).first()
    return {
        "study_instance_uid": study.study_instance_uid,
        "state": study.state,
        "generation": study.generation,
        "calling_aet": study.calling_aet,
        "called_aet": study.called_aet,
        "instances": instance_count,
        "first_received_at": iso(study.first_received_at),
        "last_received_at": iso(study.last_received_at),
        "updated_at": iso(study.updated_at),
        "latest_job": None
        if latest_job is None
        else {"id": latest_job.id, "generation": latest_job.generation, "state": latest_job.state},
    }


def status_report(session: Session, *, latest: int = 10) -> dict[str, Any]:
    """Counts per study state and per job state, plus the ``latest`` most recently received studies."""
    if latest < 0:
        raise ValueError(f"latest must be 0 or more; got {latest}")
    study_counts = _counts(session, Study.state, [s.value for s in StudyState])
    job_counts = _counts(session, Job.state, [s.value for s in JobState])
    studies = session.scalars(select(Study).order_by(Study.last_received_at.desc(), Study.id.desc()).limit(latest))
    return {
        "studies": {"total": sum(study_counts.values()), "by_state": study_counts},
        "jobs": {"total": sum(job_counts.values()), "by_state": job_counts},
        "latest_studies": [study_summary(session, study) for study in studies],
    }


def list_studies(session: Session, *, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Most recently received studies first, optionally only those in ``state``."""
    if state is not None and state not in {s.value for s in StudyState}:
        raise ValueError(f"unknown study state {state!r}; choose from {', '.join(s.value for s in StudyState)}")
    query = select(Study).order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Study.state == state)
    return [study_summary(session, study) for study in session.scalars(query)]


def study_report(session: Session, study_instance_uid: str) -> dict[str, Any]:
    """Everything the database knows about one study: the study, its instances, its jobs, sections.

    Raises
    ------
    LookupError
        No study with this Study Instance UID was received.
    """
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
    if study is None:
        raise LookupError(f"no study with Study Instance UID {study_instance_uid} has been received")
    instances = session.scalars(select(Instance).where(Instance.study_id == study.id).order_by(Instance.id))
    jobs = session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id))
    report: dict[str, Any] = {
        "study": study_summary(session, study),
        "instances": [
            {
                "sop_instance_uid": i.sop_instance_uid,
                "series_instance_uid": i.series_instance_uid,
                "sop_class_uid": i.sop_class_uid,
                "transfer_syntax_uid": i.transfer_syntax_uid,
                "size_bytes": i.size_bytes,
                "calling_aet": i.calling_aet,
                "received_at": iso(i.received_at),
                "path": i.path,
                "inspection": i.inspection,
            }
            for i in instances
        ],
        "jobs": [
            {
                "id": j.id,
                "generation": j.generation,
                "state": j.state,
                "attempts": j.attempts,
                "created_at": iso(j.created_at),
                "started_at": iso(j.started_at),
                "finished_at": iso(j.finished_at),
                "worker": j.worker,
                "heartbeat_at": iso(j.heartbeat_at),
                "progress": j.progress,
                "error": j.error,
                "summary": j.summary,
                "interruptions": j.interruptions or [],
            }
            for j in jobs
        ],
    }
    for name, fn in STUDY_SECTIONS:
        report[name] = fn(session, study)
    return report
