"""Delivery rows in the database: create them once, claim due ones, record each attempt, wake waiting ones.

The database is the source of truth; wake-ups only say "look at these deliveries". A
pending delivery is *due* when ``next_attempt_at`` has passed, or when it was *woken early*
(``woken_early_at``) because its destination answered again. A task *claims* due deliveries
with one conditional ``UPDATE`` that sets a short lease (``claimed_until``) and its own
``claim_token``, so two wake-ups for the same delivery (a duplicate message, a sweep) cannot
both send it. The worker renews the lease while it sends (:mod:`node.delivery.lease`); a
worker that dies mid-send stops renewing, its lease runs out within seconds and a sweep sends
again. Output UIDs are deterministic, so sending an object twice stores it once at the
destination.

A failed attempt that found the destination unreachable (no association) marks the delivery
``waiting_for_destination``: when a send to that destination succeeds, or a probe finds it
answering again, :func:`wake_waiting` makes every such delivery due at once instead of
letting each wait out its own backoff.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import ColumnElement, and_, func, or_, select, update
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
    token: str = ""  # the claim token this task holds the lease with
    woken_early: bool = False  # due before its backoff ended because its destination answered again


def new_claim_token() -> str:
    """A fresh claim token: 32 hex digits, unique per ``deliver`` run."""
    return secrets.token_hex(16)


def _unclaimed(now: dt.datetime) -> ColumnElement[bool]:
    """Nobody holds a live lease on the delivery."""
    return or_(Delivery.claimed_until.is_(None), Delivery.claimed_until < now)


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
    database: Database,
    delivery_ids: Sequence[int],
    *,
    lease_seconds: float,
    output_dir: Path,
    now: dt.datetime | None = None,
    token: str | None = None,
) -> list[ClaimedDelivery]:
    """Claim the pending, due deliveries among ``delivery_ids`` for ``lease_seconds``.

    One ``UPDATE ... WHERE`` pending, due and not claimed by a live lease: the database
    evaluates the condition on each row under its row lock, so of two concurrent claims
    exactly one wins a row. A delivery that is not pending, not yet due, or claimed by
    someone else is left alone. The claimed ones carry ``token``, with which
    :class:`node.delivery.lease.LeaseHeartbeat` renews the lease and
    :func:`record_outcomes` releases it.
    """
    now = as_utc(now or utcnow())
    token = token or new_claim_token()
    ids = list(delivery_ids)
    if not ids:
        return []
    due_by = now + dt.timedelta(seconds=DUE_TOLERANCE_SECONDS)
    due = or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= due_by, Delivery.woken_early_at.is_not(None))
    with database.session() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.state == DeliveryState.PENDING, due, _unclaimed(now))
            .values(claimed_until=now + dt.timedelta(seconds=lease_seconds), claim_token=token, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        rows = session.execute(
            select(Delivery, OutputObject)
            .join(OutputObject, Delivery.output_object_id == OutputObject.id)
            .where(Delivery.id.in_(ids), Delivery.claim_token == token)
            .order_by(Delivery.id)
        ).all()
        return [
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
                token=token,
                woken_early=delivery.woken_early_at is not None,
            )
            for delivery, output in rows
        ]


def renew_lease(database: Database, token: str, lease_seconds: float, *, now: dt.datetime | None = None) -> int:
    """Extend the lease of every pending delivery held with ``token``; return how many still are."""
    now = as_utc(now or utcnow())
    with database.session() as session:
        return int(
            session.execute(
                update(Delivery)
                .where(Delivery.claim_token == token, Delivery.state == DeliveryState.PENDING)
                .values(claimed_until=now + dt.timedelta(seconds=lease_seconds))
                .execution_options(synchronize_session=False)
            ).rowcount
        )


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
    """Write one attempt row per delivery, move each to delivered, pending (retry) or failed, release the lease.

    Attempts count against ``policy.max_attempts`` as the policy says, with one exception: an
    attempt made early (the delivery was woken because its destination answered again) that
    finds the destination unreachable once more is recorded but not counted, and the delivery
    keeps its backoff schedule; it cannot be woken early again before that schedule's next
    attempt, so a flapping destination costs at most one extra attempt per backoff step and
    never uses up the attempts faster than the policy intends.
    """
    if len(claimed) != len(outcomes):
        raise ValueError(f"{len(claimed)} claimed deliveries but {len(outcomes)} outcomes; they must pair up")
    finished_at = as_utc(finished_at or utcnow())
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
            event, retry_in, values = _next_step(claim, outcome, delivery, policy, finished_at)
            values.update(
                last_status=outcome.status,
                updated_at=finished_at,
                claimed_until=None,
                claim_token=None,
                woken_early_at=None,
            )
            conditions = [Delivery.id == delivery.id]
            if claim.token:
                conditions.append(Delivery.claim_token == claim.token)
            if DELIVERY.apply(session, Delivery, event, *conditions, values=values) == 1:
                recorded.append(RecordedOutcome(delivery.id, DELIVERY.next_state(delivery.state, event), retry_in))
            else:  # moved meanwhile (a resend reset it, or its lease ran out and another worker took it)
                log.info("delivery %d is %s; outcome of this attempt recorded as history only", delivery.id, delivery.state)
                recorded.append(RecordedOutcome(delivery.id, delivery.state, None))
    return recorded


def _next_step(
    claim: ClaimedDelivery, outcome: StoreOutcome, delivery: Delivery, policy: RetryPolicy, finished_at: dt.datetime
) -> tuple[DeliveryEvent, float | None, dict[str, object]]:
    """The event, the retry delay and the column values an attempt's outcome leads to."""
    if outcome.stored:
        values: dict[str, object] = {
            "attempts": claim.failed_attempts + 1,
            "last_error": None,
            "next_attempt_at": None,
            "delivered_at": finished_at,
            "waiting_for_destination": False,
        }
        return DeliveryEvent.STORED, None, values
    if claim.woken_early and outcome.unreachable and claim.failed_attempts > 0:
        # Not counted: back on the schedule it had before it was woken, not to be woken early again.
        scheduled = as_utc(delivery.next_attempt_at) if delivery.next_attempt_at is not None else finished_at
        retry_in = max(0.0, (scheduled - finished_at).total_seconds())
        return DeliveryEvent.RETRY, retry_in, {"last_error": outcome.error, "waiting_for_destination": False}
    attempts = claim.failed_attempts + 1
    if policy.exhausted(attempts):
        values = {
            "attempts": attempts,
            "last_error": f"gave up after {attempts} attempt(s): {outcome.error}",
            "next_attempt_at": None,
            "waiting_for_destination": False,
        }
        return DeliveryEvent.GAVE_UP, None, values
    retry_in = policy.delay_after(attempts)
    values = {
        "attempts": attempts,
        "last_error": outcome.error,
        "next_attempt_at": finished_at + dt.timedelta(seconds=retry_in),
        "waiting_for_destination": outcome.unreachable,
    }
    return DeliveryEvent.RETRY, retry_in, values


def pending_by_destination(
    database: Database, *, overdue_seconds: float | None = None, now: dt.datetime | None = None
) -> dict[str, list[int]]:
    """Pending deliveries nobody holds a live lease on, grouped by destination.

    With ``overdue_seconds``, only those that could have been claimed at least that long ago
    and were not: due (``next_attempt_at`` passed, or never set) or woken early that long ago
    (their wake-up was lost: a stopped process, a broker that was down); and, at once, those
    whose worker died (its lease ran out). Without, every pending one that nobody is sending.
    """
    now = as_utc(now or utcnow())
    query = select(Delivery.id, Delivery.destination).where(Delivery.state == DeliveryState.PENDING, _unclaimed(now))
    if overdue_seconds is not None:
        cutoff = now - dt.timedelta(seconds=overdue_seconds)
        query = query.where(
            or_(
                Delivery.next_attempt_at.is_(None),
                Delivery.next_attempt_at <= cutoff,
                Delivery.woken_early_at <= cutoff,
                Delivery.claimed_until.is_not(None),  # unclaimed (above) yet claimed: its lease ran out
            )
        )
    grouped: dict[str, list[int]] = {}
    with database.session() as session:
        for delivery_id, destination in session.execute(query.order_by(Delivery.id)):
            grouped.setdefault(destination, []).append(delivery_id)
    return grouped


def _waiting(now: dt.datetime) -> ColumnElement[bool]:
    """Pending, backing off because its destination did not answer, not yet woken, nobody sending it."""
    return and_(
        Delivery.state == DeliveryState.PENDING,
        Delivery.waiting_for_destination.is_(True),
        Delivery.woken_early_at.is_(None),
        Delivery.next_attempt_at > now + dt.timedelta(seconds=DUE_TOLERANCE_SECONDS),
        _unclaimed(now),
    )


def waiting_destinations(database: Database, *, now: dt.datetime | None = None) -> dict[str, int]:
    """``{destination: deliveries backing off because it did not answer}``, for the probes."""
    now = as_utc(now or utcnow())
    with database.session() as session:
        rows = session.execute(
            select(Delivery.destination, func.count(Delivery.id)).where(_waiting(now)).group_by(Delivery.destination)
        ).all()
    return {destination: int(count) for destination, count in rows}


def wake_waiting(database: Database, destination: str, *, now: dt.datetime | None = None) -> list[int]:
    """Make every delivery backing off because ``destination`` did not answer due now; return their ids.

    Called when ``destination`` answers again (a send to it succeeded, or a probe did). The
    caller sends one wake-up with the ids; if that wake-up is lost, ``woken_early_at`` lets
    the sweep find them.
    """
    now = as_utc(now or utcnow())
    with database.session() as session:
        ids = list(
            session.scalars(
                select(Delivery.id).where(Delivery.destination == destination, _waiting(now)).order_by(Delivery.id)
            )
        )
        if ids:
            session.execute(
                update(Delivery)
                .where(Delivery.id.in_(ids), _waiting(now))
                .values(woken_early_at=now)
                .execution_options(synchronize_session=False)
            )
    return ids


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
        values={
            "attempts": 0,
            "next_attempt_at": now,
            "last_error": None,
            "updated_at": now,
            "waiting_for_destination": False,
            "woken_early_at": None,
        },
    )
