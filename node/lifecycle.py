"""The one owner of state: the lifecycles of a study, a job and a delivery.

Each lifecycle is a transition table ``(state, event) -> next state``. Every write of a
``state`` column in the node goes through :meth:`Lifecycle.apply` (a conditional ``UPDATE``
built from the table) or :meth:`Lifecycle.initial`; no other module assigns a state. A move
the table does not allow is an :class:`IllegalTransition` that names the state and the event.

Study::

    received --quiet-------------> queued --job_claimed--> running --job_done-----> done
       ^  |                           ^                       |  \\--job_failed---> failed
       |  +--instance_arrived--+      +--worker_lost, job_released--+
       +--instance_arrived-- (queued, running, done, delivered, failed: re-opened)
    done | delivered | failed --reprocess--> received (a new generation)
    done | delivered | failed --deliveries_sent--> delivered
    done | delivered | failed --deliveries_failed--> failed
    queued --gave_up--> failed

Job::

    queued --claimed--> running --finished--> done
                        running --failed----> failed
                        running --superseded--> done
                        running --worker_lost--> queued
                        running --released--> queued
    queued | running --gave_up--> failed

Delivery::

    pending --stored--> delivered
    pending --retry---> pending
    pending --gave_up--> failed
    pending | delivered | failed --resend--> pending

The conditional ``UPDATE`` is what makes concurrent workers safe: two of them racing for the
same move both issue it, and the database lets exactly one match. A move that matches no row
(a duplicate wake-up, a job given up or closed meanwhile, a study re-opened meanwhile) is not an error: the
caller is told by the return value and decides.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, case, update
from sqlalchemy.orm import Session

from node.constants import DeliveryState, JobState, StudyState

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


class StudyEvent(enum.StrEnum):
    """What happens to a study."""

    INSTANCE_ARRIVED = "instance_arrived"  #: an image of the study was stored
    QUIET = "quiet"  #: nothing arrived for the quiet period; a job was created
    JOB_CLAIMED = "job_claimed"
    JOB_DONE = "job_done"
    JOB_FAILED = "job_failed"
    WORKER_LOST = "worker_lost"  #: the job's worker died; the job is queued again
    JOB_RELEASED = "job_released"  #: the job's worker gave it back (the database was away); queued again
    GAVE_UP = "gave_up"  #: the job was given up before it could run again
    REPROCESS = "reprocess"  #: an operator asked for the study to be processed again
    DELIVERIES_SENT = "deliveries_sent"  #: every output reached every destination
    DELIVERIES_FAILED = "deliveries_failed"  #: every delivery is final, one or more failed


class JobEvent(enum.StrEnum):
    """What happens to a job."""

    CLAIMED = "claimed"
    RELEASED = "released"  #: given back by its worker, not finished (the database was away)
    FINISHED = "finished"
    FAILED = "failed"
    SUPERSEDED = "superseded"  #: the study moved to a newer generation before the job ran
    WORKER_LOST = "worker_lost"  #: its worker stopped heartbeating (or the node restarted)
    GAVE_UP = "gave_up"


class DeliveryEvent(enum.StrEnum):
    """What happens to a delivery."""

    STORED = "stored"
    RETRY = "retry"
    GAVE_UP = "gave_up"
    RESEND = "resend"


class IllegalTransition(ValueError):
    """A move that the lifecycle's transition table does not allow."""


@dataclass(frozen=True)
class Lifecycle(Generic[S, E]):
    """One entity's transition table, and the conditional updates built from it.

    Parameters
    ----------
    entity:
        ``"study"``, ``"job"`` or ``"delivery"``, for messages.
    start:
        The state a new row is created in.
    table:
        ``(state, event) -> next state``; every pair not in it is illegal.
    """

    entity: str
    start: S
    table: Mapping[tuple[S, E], S]

    def next_state(self, state: S, event: E) -> S:
        """The state ``event`` moves ``state`` to; :class:`IllegalTransition` if it may not."""
        try:
            return self.table[(state, event)]
        except KeyError:
            allowed = ", ".join(s.value for s in self.sources(event)) or "nowhere"
            raise IllegalTransition(
                f"a {self.entity} in state {state.value!r} cannot take event {event.value!r} "
                f"(allowed from: {allowed})"
            ) from None

    def check_move(self, state: S, target: S) -> None:
        """Raise :class:`IllegalTransition` naming both states unless some event moves ``state`` to ``target``."""
        if not any(src == state and dst == target for (src, _), dst in self.table.items()):
            raise IllegalTransition(f"a {self.entity} cannot move from {state.value!r} to {target.value!r}")

    def sources(self, event: E) -> tuple[S, ...]:
        """The states ``event`` may leave, in table order."""
        return tuple(dict.fromkeys(src for (src, ev) in self.table if ev == event))

    def initial(self) -> S:
        """The state of a new row."""
        return self.start

    def apply(
        self,
        session: Session,
        model: Any,
        event: E,
        *conditions: ColumnElement[bool],
        values: Mapping[str, Any] | None = None,
    ) -> int:
        """Move the rows of ``model`` that match ``conditions`` and may take ``event``; return how many moved.

        One ``UPDATE ... SET state = CASE state WHEN <source> THEN <next> ... END WHERE state IN
        (<sources>) AND <conditions>``, with ``values`` set on the same rows. The database
        evaluates it on each row as it is when it holds the row lock, so it cannot lose a
        concurrent move.
        """
        sources = self.sources(event)
        if not sources:  # pragma: no cover - a table without the event is a programming error
            raise IllegalTransition(f"no {self.entity} state takes event {event.value!r}")
        targets = {self.table[(src, event)] for src in sources}
        if len(targets) == 1:
            new_state: Any = next(iter(targets))
        else:
            new_state = case({src: self.table[(src, event)] for src in sources}, value=model.state)
        statement = (
            update(model)
            .where(model.state.in_(sources), *conditions)
            .values(state=new_state, **dict(values or {}))
            .execution_options(synchronize_session=False)
        )
        return int(session.execute(statement).rowcount)

    def transitions(self) -> list[tuple[S, E, S]]:
        """Every legal ``(state, event, next state)``, in table order (for docs and tests)."""
        return [(src, ev, dst) for (src, ev), dst in self.table.items()]


def _table(rows: Iterable[tuple[Iterable[S], E, S]]) -> dict[tuple[S, E], S]:
    table: dict[tuple[S, E], S] = {}
    for sources, event, target in rows:
        for source in sources:
            table[(source, event)] = target
    return table


_S = StudyState
_REOPENABLE = (_S.QUEUED, _S.RUNNING, _S.DONE, _S.DELIVERED, _S.FAILED)
_PROCESSED = (_S.DONE, _S.DELIVERED, _S.FAILED)

STUDY: Lifecycle[StudyState, StudyEvent] = Lifecycle(
    "study",
    _S.RECEIVED,
    _table(
        [
            ((_S.RECEIVED, *_REOPENABLE), StudyEvent.INSTANCE_ARRIVED, _S.RECEIVED),
            ((_S.RECEIVED,), StudyEvent.QUIET, _S.QUEUED),
            ((_S.QUEUED,), StudyEvent.JOB_CLAIMED, _S.RUNNING),
            ((_S.RUNNING,), StudyEvent.JOB_DONE, _S.DONE),
            ((_S.RUNNING,), StudyEvent.JOB_FAILED, _S.FAILED),
            ((_S.RUNNING,), StudyEvent.WORKER_LOST, _S.QUEUED),
            ((_S.RUNNING,), StudyEvent.JOB_RELEASED, _S.QUEUED),
            ((_S.QUEUED, _S.RUNNING), StudyEvent.GAVE_UP, _S.FAILED),
            (_PROCESSED, StudyEvent.REPROCESS, _S.RECEIVED),
            (_PROCESSED, StudyEvent.DELIVERIES_SENT, _S.DELIVERED),
            (_PROCESSED, StudyEvent.DELIVERIES_FAILED, _S.FAILED),
        ]
    ),
)

_J = JobState
JOB: Lifecycle[JobState, JobEvent] = Lifecycle(
    "job",
    _J.QUEUED,
    _table(
        [
            ((_J.QUEUED,), JobEvent.CLAIMED, _J.RUNNING),
            ((_J.RUNNING,), JobEvent.FINISHED, _J.DONE),
            ((_J.RUNNING,), JobEvent.FAILED, _J.FAILED),
            ((_J.RUNNING,), JobEvent.SUPERSEDED, _J.DONE),
            ((_J.RUNNING,), JobEvent.WORKER_LOST, _J.QUEUED),
            ((_J.RUNNING,), JobEvent.RELEASED, _J.QUEUED),
            ((_J.QUEUED, _J.RUNNING), JobEvent.GAVE_UP, _J.FAILED),
        ]
    ),
)

_D = DeliveryState
DELIVERY: Lifecycle[DeliveryState, DeliveryEvent] = Lifecycle(
    "delivery",
    _D.PENDING,
    _table(
        [
            ((_D.PENDING,), DeliveryEvent.STORED, _D.DELIVERED),
            ((_D.PENDING,), DeliveryEvent.RETRY, _D.PENDING),
            ((_D.PENDING,), DeliveryEvent.GAVE_UP, _D.FAILED),
            ((_D.PENDING, _D.DELIVERED, _D.FAILED), DeliveryEvent.RESEND, _D.PENDING),
        ]
    ),
)

#: Every lifecycle, for the documentation and the table test.
LIFECYCLES: tuple[Lifecycle[Any, Any], ...] = (STUDY, JOB, DELIVERY)

