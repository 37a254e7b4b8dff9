"""Sections of ``cxr-node studies show``: results, output objects, deliveries with their attempts.

Listed in :data:`node.reports.STUDY_SECTIONS`, so :func:`node.reports.study_report` tells
the whole story of a study: what each image gave under each policy, which SEG and SR were
written where, and every attempt to send each of them to each destination.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db import Instance, Job, Study
from node.db.schema import Delivery, DeliveryAttempt, OutputObject, Result
from node.db.schema import iso


def _job_ids(session: Session, study: Study) -> list[int]:
    return list(session.scalars(select(Job.id).where(Job.study_id == study.id).order_by(Job.id)))


def results_section(session: Session, study: Study) -> list[dict[str, Any]]:
    """One entry per (job, image, policy): status, reason, scores, decisions, models, seconds per stage."""
    rows = session.execute(
        select(Result, Instance.sop_instance_uid)
        .join(Instance, Result.instance_id == Instance.id)
        .where(Result.job_id.in_(_job_ids(session, study)))
        .order_by(Result.job_id, Result.instance_id, Result.policy)
    ).all()
    return [
        {
            "job_id": r.job_id,
            "sop_instance_uid": sop_instance_uid,
            "policy": r.policy,
            "status": r.status,
            "reason": r.reason,
            "probabilities": r.probabilities,
            "no_finding": r.no_finding,
            "thresholds": r.thresholds,
            "decisions": r.decisions,
            "model_versions": r.model_versions,
            "timings": r.timings,
            "created_at": iso(r.created_at),
            "updated_at": iso(r.updated_at),
        }
        for r, sop_instance_uid in rows
    ]


def outputs_section(session: Session, study: Study) -> list[dict[str, Any]]:
    """Every SEG and SR written for the study, with its UIDs, file and deliveries (with attempts)."""
    outputs = session.scalars(
        select(OutputObject).where(OutputObject.job_id.in_(_job_ids(session, study))).order_by(OutputObject.id)
    ).all()
    policy_of = {
        r.id: r.policy
        for r in session.scalars(select(Result).where(Result.id.in_([o.result_id for o in outputs if o.result_id])))
    }
    deliveries_by_output: dict[int, list[Delivery]] = {}
    for d in session.scalars(
        select(Delivery).where(Delivery.output_object_id.in_([o.id for o in outputs])).order_by(Delivery.id)
    ):
        deliveries_by_output.setdefault(d.output_object_id, []).append(d)
    attempts_by_delivery: dict[int, list[DeliveryAttempt]] = {}
    delivery_ids = [d.id for ds in deliveries_by_output.values() for d in ds]
    for a in session.scalars(
        select(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(delivery_ids)).order_by(DeliveryAttempt.number)
    ):
        attempts_by_delivery.setdefault(a.delivery_id, []).append(a)
    return [
        {
            "job_id": o.job_id,
            "kind": o.kind,
            "policy": policy_of.get(o.result_id) if o.kind == "SR" else None,
            "sop_class_uid": o.sop_class_uid,
            "sop_instance_uid": o.sop_instance_uid,
            "series_instance_uid": o.series_instance_uid,
            "study_instance_uid": o.study_instance_uid,
            "transfer_syntax_uid": o.transfer_syntax_uid,
            "path": o.path,
            "size_bytes": o.size_bytes,
            "sha256": o.sha256,
            "created_at": iso(o.created_at),
            "deliveries": [
                {
                    "destination": d.destination,
                    "state": d.state,
                    "attempts": d.attempts,
                    "next_attempt_at": iso(d.next_attempt_at),
                    "last_status": d.last_status,
                    "last_error": d.last_error,
                    "delivered_at": iso(d.delivered_at),
                    "attempt_log": [
                        {
                            "number": a.number,
                            "started_at": iso(a.started_at),
                            "finished_at": iso(a.finished_at),
                            "status": a.status,
                            "error": a.error,
                        }
                        for a in attempts_by_delivery.get(d.id, [])
                    ],
                }
                for d in deliveries_by_output.get(o.id, [])
            ],
        }
        for o in outputs
    ]


def delivery_section(session: Session, study: Study) -> dict[str, Any]:
    """Counts of the study's deliveries per state and per destination (details are under ``outputs``)."""
    rows = session.execute(
        select(Delivery.destination, Delivery.state)
        .join(OutputObject, Delivery.output_object_id == OutputObject.id)
        .where(OutputObject.job_id.in_(_job_ids(session, study)))
    ).all()
    by_state: dict[str, int] = {}
    by_destination: dict[str, dict[str, int]] = {}
    for destination, state in rows:
        by_state[state] = by_state.get(state, 0) + 1
        per = by_destination.setdefault(destination, {})
        per[state] = per.get(state, 0) + 1
    return {"total": len(rows), "by_state": by_state, "by_destination": by_destination}
