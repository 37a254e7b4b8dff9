"""The ``deliver`` task (queue ``delivery``), the sweeps that wake it, and ``resend``.

One wake-up carries the ids of pending deliveries to one destination. The task claims the
due ones for a short lease (:func:`node.delivery.records.claim_due`), renews that lease while
it sends their files in one association (:class:`node.delivery.lease.LeaseHeartbeat`,
:func:`node.delivery.scu.send_files`), records an attempt per delivery, and for those that
failed and have attempts left schedules one more wake-up after the backoff delay. When a
send to a destination succeeds, every delivery backing off because that destination did not
answer is made due and woken at once. A wake-up lost to a restart or a broker outage, and a
claim left by a worker that died, are found again by :func:`requeue_pending_deliveries` (at
start-up) and by :func:`sweep_overdue` (every few seconds), because the database holds
``next_attempt_at`` and the lease.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select

from node.constants import TASK_DELIVER, DeliveryState
from node.db import Database
from node.db.schema import Delivery, Job, OutputObject, Study, as_utc, utcnow
from node.delivery.destinations import destinations_for
from node.delivery.lease import LeaseHeartbeat
from node.delivery.policy import RetryPolicy
from node.delivery.items import StoreOutcome
from node.delivery.records import (
    ClaimedDelivery,
    claim_due,
    create_deliveries,
    new_claim_token,
    pending_by_destination,
    record_outcomes,
    reset_for_resend,
    wake_waiting,
)
from node.delivery.senders import DEFAULT_SENDERS, Sender, sender_for
from node.lifecycle import STUDY, StudyEvent
from node.settings import RemoteNode, Settings
from node.tasks.context import TaskContext

log = logging.getLogger(__name__)


def deliver(delivery_ids: list[int], *, context: TaskContext) -> dict[str, object]:
    """Send the due deliveries among ``delivery_ids``; return counts per resulting state.

    Deliveries to several destinations are sent one association per destination. Failed ones
    with attempts left get a wake-up after their backoff delay; exhausted ones are failed.
    """
    return deliver_now(
        context.database, context.settings, delivery_ids, dispatcher=context.dispatcher, senders=context.senders
    )


def deliver_now(
    database: Database,
    settings: Settings,
    delivery_ids: Sequence[int],
    *,
    dispatcher: object | None = None,
    senders: Mapping[str, Sender] = DEFAULT_SENDERS,
) -> dict[str, object]:
    """The body of :func:`deliver`, callable without a task context (``cxr-node resend``).

    With ``dispatcher`` (a :class:`node.tasks.dispatch.Dispatcher`), retries are scheduled as
    ``deliver`` wake-ups with a countdown; without, they stay pending in the database for the
    node's sweeps.
    """
    policy = RetryPolicy.from_settings(settings)
    token = new_claim_token()
    lease = settings.delivery_lease_seconds
    claimed = claim_due(database, delivery_ids, lease_seconds=lease, output_dir=settings.output_dir, token=token)
    if not claimed:  # a duplicate or early wake-up, or someone else is sending them
        return {"claimed": 0, "states": {}}
    counts: dict[str, int] = {}
    retries: dict[str, list[tuple[int, float]]] = {}
    woken: dict[str, list[int]] = {}
    by_destination: dict[str, list] = {}
    for claim in claimed:
        by_destination.setdefault(claim.destination, []).append(claim)
    with LeaseHeartbeat(database, token, lease):
        for destination, claims in by_destination.items():
            started = utcnow()
            outcomes = send_claimed(destination, claims, settings, senders)
            recorded = record_outcomes(database, claims, outcomes, policy=policy, started_at=started)
            for outcome, entry in zip(outcomes, recorded):
                counts[entry.state] = counts.get(entry.state, 0) + 1
                if entry.retry_in_seconds is not None:
                    retries.setdefault(destination, []).append((entry.delivery_id, entry.retry_in_seconds))
                log.info(
                    "delivery %d of %s to %s: %s%s",
                    entry.delivery_id,
                    outcome.sop_instance_uid,
                    destination,
                    entry.state,
                    f" (retry in {entry.retry_in_seconds:g} s: {outcome.error})" if entry.retry_in_seconds else "",
                )
            if any(outcome.stored for outcome in outcomes):
                waiting = wake_waiting(database, destination)
                if waiting:
                    log.info("%s answers again: waking %d delivery(ies) that waited for it", destination, len(waiting))
                    woken[destination] = waiting
    if dispatcher is not None:
        for destination, ids in woken.items():
            send_wakeup(dispatcher, destination, ids, countdown=0.0)
        for destination, waiting in retries.items():
            send_wakeup(dispatcher, destination, [i for i, _ in waiting], countdown=max(seconds for _, seconds in waiting))
    update_study_delivery_states(database, [c.delivery_id for c in claimed])
    return {"claimed": len(claimed), "states": counts}


def send_claimed(
    destination: str, claims: Sequence[ClaimedDelivery], settings: Settings, senders: Mapping[str, Sender]
) -> list[StoreOutcome]:
    """Send the claimed deliveries to ``destination``; one outcome each, failures included.

    A sender does not raise for network trouble; anything it raises all the same (a destination
    whose scheme is no longer configured, a bug) is recorded as a failed attempt of every item,
    so that the deliveries back off and finally fail with the reason instead of being retried
    every lease forever.
    """
    try:
        remote = RemoteNode.parse(destination)
        return sender_for(remote, senders).send(remote, [c.item for c in claims], settings)
    except Exception as exc:
        log.exception("sending to %s failed", destination)
        return [StoreOutcome(c.item.sop_instance_uid, None, f"could not send to {destination}: {exc}") for c in claims]


def send_wakeup(dispatcher: object, destination: str, ids: list[int], *, countdown: float) -> None:
    """One ``deliver`` wake-up for ``ids``; when it cannot be sent the rows stay in the database for the sweeps."""
    try:
        dispatcher.enqueue(TASK_DELIVER, ids, countdown=countdown)  # type: ignore[attr-defined]
    except Exception as exc:  # the node is stopping, or the broker is down
        log.warning("wake-up of %d delivery(ies) to %s not sent (%s); the delivery sweep will send them", len(ids), destination, exc)


def enqueue_deliveries(dispatcher: object, delivery_ids_by_destination: dict[str, list[int]]) -> int:
    """Send one ``deliver`` wake-up per destination; return how many were sent."""
    sent = 0
    for ids in delivery_ids_by_destination.values():
        if ids:
            dispatcher.enqueue(TASK_DELIVER, list(ids))  # type: ignore[attr-defined]
            sent += 1
    return sent


def group_by_destination(database: Database, delivery_ids: Iterable[int]) -> dict[str, list[int]]:
    """``{destination: [delivery ids]}`` for ``delivery_ids``."""
    grouped: dict[str, list[int]] = {}
    ids = list(delivery_ids)
    if not ids:
        return grouped
    with database.session() as session:
        for delivery_id, destination in session.execute(
            select(Delivery.id, Delivery.destination).where(Delivery.id.in_(ids)).order_by(Delivery.id)
        ):
            grouped.setdefault(destination, []).append(delivery_id)
    return grouped


def requeue_pending_deliveries(context: TaskContext) -> dict[str, int]:
    """At start-up, wake every pending delivery: due ones now, the others when they fall due.

    In-process wake-ups (timers) die with the process that held them, so this restores them
    from ``next_attempt_at``; a duplicate of a Celery wake-up that survived finds nothing due.
    """
    now = utcnow()
    with context.database.session() as session:
        rows = session.execute(
            select(Delivery.id, Delivery.destination, Delivery.next_attempt_at)
            .where(Delivery.state == DeliveryState.PENDING)
            .order_by(Delivery.id)
        ).all()
    wakeups: dict[tuple[str, float], list[int]] = {}
    for delivery_id, destination, next_attempt_at in rows:
        wait = 0.0 if next_attempt_at is None else max(0.0, (as_utc(next_attempt_at) - now).total_seconds())
        wakeups.setdefault((destination, round(wait, 1)), []).append(delivery_id)
    for (_, wait), ids in wakeups.items():
        context.dispatcher.enqueue(TASK_DELIVER, ids, countdown=wait)
    if rows:
        log.info("start-up sweep: %d pending deliveries, %d wake-up(s)", len(rows), len(wakeups))
    return {"pending": len(rows), "wakeups": len(wakeups)}


def sweep_overdue(database: Database, dispatcher: object, *, grace_seconds: float) -> int:
    """Wake pending deliveries overdue by ``grace_seconds`` (lost wake-up, broker outage, expired lease)."""
    grouped = pending_by_destination(database, overdue_seconds=grace_seconds)
    if grouped:
        log.info("delivery sweep: waking %d overdue deliveries", sum(len(v) for v in grouped.values()))
    return enqueue_deliveries(dispatcher, grouped)


def update_study_delivery_states(database: Database, delivery_ids: Sequence[int]) -> None:
    """Move the studies of these deliveries to ``delivered`` or ``failed`` once all are final.

    Only the latest generation's job counts, and only a processed study moves (see
    :data:`node.lifecycle.STUDY`; never one re-opened by a late instance).
    """
    if not delivery_ids:
        return
    with database.session() as session:
        jobs = session.execute(
            select(Job.id, Job.study_id, Job.generation)
            .join(OutputObject, OutputObject.job_id == Job.id)
            .join(Delivery, Delivery.output_object_id == OutputObject.id)
            .where(Delivery.id.in_(list(delivery_ids)))
            .distinct()
        ).all()
        for job_id, study_id, generation in jobs:
            states = set(
                session.scalars(
                    select(Delivery.state)
                    .join(OutputObject, Delivery.output_object_id == OutputObject.id)
                    .where(OutputObject.job_id == job_id)
                )
            )
            if DeliveryState.PENDING in states or not states:
                continue
            event = StudyEvent.DELIVERIES_FAILED if DeliveryState.FAILED in states else StudyEvent.DELIVERIES_SENT
            STUDY.apply(
                session,
                Study,
                event,
                Study.id == study_id,
                Study.generation == generation,
                values={"updated_at": utcnow()},
            )


@dataclass(frozen=True)
class ResendPlan:
    """The deliveries ``resend`` reset, by destination, and the objects they carry."""

    study_instance_uid: str
    job_id: int
    delivery_ids_by_destination: dict[str, list[int]]
    sop_instance_uids: list[str]


def plan_resend(database: Database, settings: Settings, study_instance_uid: str) -> ResendPlan:
    """Reset the latest job's outputs of a study for sending again to its destinations.

    The same objects (same files, same UIDs) go to every destination of the study (the
    configured ones plus the sender if it is a known PACS), including destinations added
    since; each delivery gets a fresh round of attempts and keeps its history.

    Raises ``LookupError`` when the study is unknown or has no outputs yet.
    """
    with database.session() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
        if study is None:
            raise LookupError(f"no study {study_instance_uid} in the database; check the UID with `cxr-node status`")
        job_id = session.scalar(
            select(OutputObject.job_id)
            .join(Job, OutputObject.job_id == Job.id)
            .where(Job.study_id == study.id)
            .order_by(Job.generation.desc(), Job.id.desc())
            .limit(1)
        )
        if job_id is None:
            raise LookupError(f"study {study_instance_uid} has no output objects yet; nothing to resend")
        outputs = list(session.scalars(select(OutputObject).where(OutputObject.job_id == job_id).order_by(OutputObject.id)))
        destinations = destinations_for(settings, study.calling_aet)
        if not destinations:
            raise LookupError(
                "no destination for this study: set CXR_NODE_DESTINATIONS, or CXR_NODE_KNOWN_PACS with the sender's AE title"
            )
        create_deliveries(session, [o.id for o in outputs], destinations)
        wanted = {str(d) for d in destinations}
        rows = [
            d
            for d in session.scalars(select(Delivery).where(Delivery.output_object_id.in_([o.id for o in outputs])))
            if d.destination in wanted
        ]
        reset_for_resend(session, [d.id for d in rows])
        grouped: dict[str, list[int]] = {}
        for d in sorted(rows, key=lambda r: r.id):
            grouped.setdefault(d.destination, []).append(d.id)
        return ResendPlan(study_instance_uid, job_id, grouped, [o.sop_instance_uid for o in outputs])
