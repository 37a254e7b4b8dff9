"""Delivery rows in the database: create them once, claim due ones, record each attempt.

The database is the source of truth; wake-ups only say "look at these deliveries". A
pending delivery is *due* when ``next_attempt_at`` has passed. A task *claims* due deliveries
with a conditional ``UPDATE`` that moves ``next_attempt_at`` forward by a lease, so two
wake-ups for the same delivery (a duplicate message, a sweep) cannot both send it; a worker
that dies mid-send leaves a lease that expires, after which a sweep sends again. Output UIDs
are deterministic, so sending an object twice stores it once at the destination.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from node.constants import DeliveryState
from node.db import Database
from node.db.schema import Delivery, DeliveryAttempt, OutputObject, as_utc, utcnow
from node.delivery.items import StoreItem, StoreOutcome
from node.delivery.policy import RetryPolicy
from node.lifecycle import DELIVERY, DeliveryEvent
from node.settings import RemoteNode

log = logging.getLogger(__name__)

#: A wake-up may arrive this early (timer granularity, clock steps) and still count as due.
DUE_TOLERANCE_SECONDS = 1.0


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery this task may send now, with the file and UIDs of its object."""

    delivery_id: int
    destination: str
    item: StoreItem
    failed_attempts: int  # attempts of the current round before this one


def create_deliveries(
    session: Session, output_ids: Iterable[int], destinations: Sequence[RemoteNode], *, now: dt.datetime | None = None
) -> list[int]:
    """Make sure every (output, destination) pair has a delivery row; return the pending ones' ids.

    Idempotent: an existing row (any state) is kept as it is (unique constraint
    ``uq_delivery_output_destination``); a new one is pending and due ``now``.
    """
    now = now or utcnow()
    output_ids = list(output_ids)
    if not output_ids or not destinations:
        return []
    existing = {
        (row.output_object_id, row.destination): row
        for row in session.scalars(select(Delivery).where(Delivery.output_object_id.in_(output_ids)))
    }
    pending: list[Delivery] = []
    for output_id in output_ids:
        for destination in destinations:
            row = existing.get((output_id, str(destination)))
            if row is None:
                row = Delivery(
                    output_object_id=output_id,
                    destination=str(destination),
                    state=DELIVERY.initial(),
                    attempts=0,
                    next_attempt_at=now,
                )
                session.add(row)
            if row.state is DeliveryState.PENDING:
                pending.append(row)
    session.flush()
    return [row.id for row in pending]


def claim_due(
    database: Database, delivery_ids: Sequence[int], *, lease_seconds: float, output_dir: Path, now: dt.datetime | None = None
) -> list[ClaimedDelivery]:
    """Claim the pending, due deliveries among ``delivery_ids`` for ``lease_seconds``.

    A delivery that is not pending, not yet due, or claimed by someone else is left alone.
    """
    now = as_utc(now or utcnow())
    due_by = now + dt.timedelta(seconds=DUE_TOLERANCE_SECONDS)
    lease_end = now + dt.timedelta(seconds=lease_seconds)
    claimed: list[ClaimedDelivery] = []
    with database.session() as session:
        rows = session.execute(
            select(Delivery, OutputObject)
            .join(OutputObject, Delivery.output_object_id == OutputObject.id)
            .where(Delivery.id.in_(list(delivery_ids)), Delivery.state == DeliveryState.PENDING)
            .order_by(Delivery.id)
        ).all()
        for delivery, output in rows:
            if delivery.next_attempt_at is not None and as_utc(delivery.next_attempt_at) > due_by:
                continue
            won = session.execute(
                update(Delivery)
                .where(
                    Delivery.id == delivery.id,
                    Delivery.state == DeliveryState.PENDING,
                    Delivery.next_attempt_at == delivery.next_attempt_at,
                )
                .values(next_attempt_at=lease_end, updated_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            if won != 1:
                continue
            claimed.append(
                ClaimedDelivery(
                    delivery_id=delivery.id,
                    destination=delivery.destination,
                    item=StoreItem(
                        path=output_dir / output.path,
                        sop_class_uid=output.sop_class_uid,
                        sop_instance_uid=output.sop_instance_uid,
                        transfer_syntax_uid=output.transfer_syntax_uid,
                    ),
                    failed_attempts=delivery.attempts,
                )
            )
    return claimed


@dataclass(frozen=True)
class RecordedOutcome:
    """What :func:`record_outcomes` decided for one delivery."""

    delivery_id: int
    state: DeliveryState
    retry_in_seconds: float | None  # set when the delivery stays pending for another attempt


def record_outcomes(
    database: Database,
    claimed: Sequence[ClaimedDelivery],
    outcomes: Sequence[StoreOutcome],
    *,
    policy: RetryPolicy,
    started_at: dt.datetime,
    finished_at: dt.datetime | None = None,
) -> list[RecordedOutcome]:
    """Write one attempt row per delivery and move each to delivered, pending (retry) or failed."""
    if len(claimed) != len(outcomes):
        raise ValueError(f"{len(claimed)} claimed deliveries but {len(outcomes)} outcomes; they must pair up")
    finished_at = finished_at or utcnow()
    recorded: list[RecordedOutcome] = []
    with database.session() as session:
        for claim, outcome in zip(claimed, outcomes):
            delivery = session.get(Delivery, claim.delivery_id)
            if delivery is None:  # pragma: no cover - rows are never deleted
                continue
            number = (
                session.scalar(select(func.max(DeliveryAttempt.number)).where(DeliveryAttempt.delivery_id == delivery.id))
                or 0
            ) + 1
            session.add(
                DeliveryAttempt(
                    delivery_id=delivery.id,
                    number=number,
                    started_at=started_at,
                    finished_at=finished_at,
                    status=outcome.status,
                    error=outcome.error,
                )
            )
            attempts = claim.failed_attempts + 1
            common = {"attempts": attempts, "last_status": outcome.status, "updated_at": finished_at}
            if outcome.stored:
                event, retry_in = DeliveryEvent.STORED, None
                values = {"last_error": None, "next_attempt_at": None, "delivered_at": finished_at}
            elif policy.exhausted(attempts):
                event, retry_in = DeliveryEvent.GAVE_UP, None
                values = {"last_error": f"gave up after {attempts} attempt(s): {outcome.error}", "next_attempt_at": None}
            else:
                event, retry_in = DeliveryEvent.RETRY, policy.delay_after(attempts)
                values = {
                    "last_error": outcome.error,
                    "next_attempt_at": as_utc(finished_at) + dt.timedelta(seconds=retry_in),
                }
            if DELIVERY.apply(session, Delivery, event, Delivery.id == delivery.id, values={**common, **values}) == 1:
                recorded.append(RecordedOutcome(delivery.id, DELIVERY.next_state(delivery.state, event), retry_in))
            else:  # moved meanwhile (e.g. a resend reset it): its newer state stands
                log.info("delivery %d is %s; outcome of this attempt recorded as history only", delivery.id, delivery.state)
                recorded.append(RecordedOutcome(delivery.id, delivery.state, None))
    return recorded


def pending_by_destination(
    database: Database, *, overdue_seconds: float | None = None, now: dt.datetime | None = None
) -> dict[str, list[int]]:
    """Pending deliveries grouped by destination.

    With ``overdue_seconds``, only those due at least that long ago (their wake-up was lost,
    or their worker died and its lease ran out); without, every pending one.
    """
    now = as_utc(now or utcnow())
    query = select(Delivery.id, Delivery.destination).where(Delivery.state == DeliveryState.PENDING)
    if overdue_seconds is not None:
        query = query.where(Delivery.next_attempt_at <= now - dt.timedelta(seconds=overdue_seconds))
    grouped: dict[str, list[int]] = {}
    with database.session() as session:
        for delivery_id, destination in session.execute(query.order_by(Delivery.id)):
            grouped.setdefault(destination, []).append(delivery_id)
    return grouped


def reset_for_resend(session: Session, delivery_ids: Iterable[int], *, now: dt.datetime | None = None) -> None:
    """Make deliveries pending and due now with a fresh round of attempts (history is kept)."""
    now = now or utcnow()
    ids = list(delivery_ids)
    if not ids:
        return
    DELIVERY.apply(
        session,
        Delivery,
        DeliveryEvent.RESEND,
        Delivery.id.in_(ids),
        values={"attempts": 0, "next_attempt_at": now, "last_error": None, "updated_at": now},
    )
