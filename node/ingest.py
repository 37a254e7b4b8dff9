"""Recording a received instance in the database.

The listener calls :func:`record_instance` after the instance's file is durable in the spool
and before it answers Success. One transaction:

1. the study row is got or created; an instance for a study that was already ``queued``,
   ``running``, ``done``, ``delivered`` or ``failed`` re-opens it: the state goes back to
   ``received`` and ``generation`` is bumped, so the completion scanner makes a new job for
   the new generation. A study still ``received`` only has ``last_received_at`` moved on,
   which restarts its quiet period. An instance of a *companion* class
   (:data:`node.constants.COMPANION_SOP_CLASSES`: SEG, SR, KOS, GSPS, such as the node's own
   outputs coming back in a whole study that a PACS forwards) changes neither the state, nor
   the generation, nor ``last_received_at``: it is stored and recorded, but never re-opens a
   processed study (no processing loop with an auto-routing PACS) nor prolongs the quiet
   period of one still receiving (the worker skips it anyway). A companion instance of a study
   the node has not seen creates the study as usual;
2. the instance row is inserted (``sop_instance_uid`` is unique: the same instance sent twice
   is stored once, and the second arrival is reported as a duplicate).

The study update is a single ``UPDATE`` statement (no read-modify-write), so concurrent
associations and the completion scanner cannot lose each other's changes, on SQLite (where
the statement takes the write lock at once) as on PostgreSQL (row lock).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass

from sqlalchemy import case, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from node.constants import COMPANION_SOP_CLASSES, StudyState
from node.db import Database, Instance, Study
from node.db.schema import InstanceConflict, utcnow
from node.lifecycle import STUDY, StudyEvent

log = logging.getLogger(__name__)

#: How often a transaction that lost an insert race (two associations creating the same study)
#: is retried; the retry finds the row the other one committed.
_INSERT_RACE_ATTEMPTS = 3


@dataclass(frozen=True)
class ReceivedInstance:
    """What the listener knows about one received, spooled instance (UIDs already validated)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str  #: relative to the spool root
    size_bytes: int
    calling_aet: str | None
    called_aet: str | None


class IngestOutcome(str, enum.Enum):
    """What :func:`record_instance` did."""

    NEW_STUDY = "new-study"  #: first instance of a study the node had never seen
    ADDED = "added"  #: added to a study still receiving, or a companion (SEG/SR) to any study
    REOPENED = "reopened"  #: added to a study that had left ``received``; generation bumped
    DUPLICATE = "duplicate"  #: this SOP Instance UID was already stored; nothing changed


@dataclass(frozen=True)
class StoredInstance:
    """An instance that is durable in the spool with its row committed.

    Passed to the listener's ``on_instance_stored`` callback after each new instance (not for
    duplicates).
    """

    instance: ReceivedInstance
    outcome: IngestOutcome
    study_id: int
    generation: int
    received_at: dt.datetime

    @property
    def study_instance_uid(self) -> str:
        return self.instance.study_instance_uid

    @property
    def sop_instance_uid(self) -> str:
        return self.instance.sop_instance_uid


#: States an arriving image re-opens (a new generation); ``received`` only restarts the quiet period.
_REOPENABLE = tuple(state for state in STUDY.sources(StudyEvent.INSTANCE_ARRIVED) if state is not StudyState.RECEIVED)


def stored_path(database: Database, sop_instance_uid: str) -> str | None:
    """The spool path (relative) of the stored instance with this SOP Instance UID, or None."""
    with database.session() as session:
        return session.scalar(select(Instance.path).where(Instance.sop_instance_uid == sop_instance_uid))


def record_conflict(
    database: Database, sop_instance_uid: str, *, calling_aet: str | None, size_bytes: int, sha256: str, stored_sha256: str
) -> None:
    """Record a discarded C-STORE of a known SOP Instance UID whose content differs from the stored one."""
    with database.session() as session:
        session.add(
            InstanceConflict(
                sop_instance_uid=sop_instance_uid,
                calling_aet=calling_aet,
                size_bytes=size_bytes,
                sha256=sha256,
                stored_sha256=stored_sha256,
            )
        )


def _touch_or_reopen_study(session: Session, item: ReceivedInstance, now: dt.datetime) -> tuple[int, int, bool] | None:
    """Update the study row in one statement; return ``(id, generation, reopened)`` or ``None``."""
    before = session.execute(
        select(Study.id, Study.generation).where(Study.study_instance_uid == item.study_instance_uid)
    ).first()
    if before is None:
        return None
    if item.sop_class_uid in COMPANION_SOP_CLASSES:
        # Stored alongside, never a reason to (re-)process: state, generation and quiet period
        # stay as they are. Still one UPDATE, so the row is locked like for an image.
        moved = session.execute(
            update(Study)
            .where(Study.id == before.id)
            .values(updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
    else:
        # The CASE is evaluated by the database on the row as it is when the UPDATE holds it, so
        # a scanner that queued the study a moment ago is seen and the study is re-opened.
        moved = STUDY.apply(
            session,
            Study,
            StudyEvent.INSTANCE_ARRIVED,
            Study.id == before.id,
            values={
                "generation": case((Study.state.in_(_REOPENABLE), Study.generation + 1), else_=Study.generation),
                "last_received_at": now,
                "updated_at": now,
            },
        )
    if moved != 1:  # deleted between the two statements; treat as new
        return None
    generation = session.execute(select(Study.generation).where(Study.id == before.id)).scalar_one()
    return before.id, generation, generation != before.generation


def _record_once(session: Session, item: ReceivedInstance) -> StoredInstance:
    now = utcnow()
    exists = session.execute(
        select(Instance.id).where(Instance.sop_instance_uid == item.sop_instance_uid)
    ).first()
    if exists is not None:
        study_id, generation = session.execute(
            select(Study.id, Study.generation).join(Instance).where(Instance.id == exists.id)
        ).one()
        return StoredInstance(item, IngestOutcome.DUPLICATE, study_id, generation, now)

    touched = _touch_or_reopen_study(session, item, now)
    if touched is None:
        study = Study(
            study_instance_uid=item.study_instance_uid,
            state=STUDY.initial(),
            calling_aet=item.calling_aet,
            called_aet=item.called_aet,
            first_received_at=now,
            last_received_at=now,
            generation=0,
            updated_at=now,
        )
        session.add(study)
        session.flush()
        study_id, generation, outcome = study.id, 0, IngestOutcome.NEW_STUDY
    else:
        study_id, generation, reopened = touched
        outcome = IngestOutcome.REOPENED if reopened else IngestOutcome.ADDED

    session.add(
        Instance(
            study_id=study_id,
            sop_instance_uid=item.sop_instance_uid,
            sop_class_uid=item.sop_class_uid,
            series_instance_uid=item.series_instance_uid,
            transfer_syntax_uid=item.transfer_syntax_uid,
            path=item.path,
            size_bytes=item.size_bytes,
            calling_aet=item.calling_aet,
            received_at=now,
        )
    )
    session.flush()
    return StoredInstance(item, outcome, study_id, generation, now)


def record_instance(database: Database, item: ReceivedInstance) -> StoredInstance:
    """Record a spooled instance and its study in one committed transaction.

    Returns the outcome; :attr:`IngestOutcome.DUPLICATE` when the SOP Instance UID was already
    recorded (also when another association recorded it a moment earlier). Database errors
    other than that race propagate (``sqlalchemy.exc.SQLAlchemyError``): the caller must not
    answer Success then.
    """
    attempt = 1
    while True:
        try:
            with database.session() as session:
                return _record_once(session, item)
        except IntegrityError:
            # Another association inserted the same study or the same instance between our
            # SELECT and INSERT; the next attempt sees its committed row.
            if attempt >= _INSERT_RACE_ATTEMPTS:
                raise
            attempt += 1
            log.info(
                "insert race on study %s / instance %s; retrying",
                item.study_instance_uid,
                item.sop_instance_uid,
            )
