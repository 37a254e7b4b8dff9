"""SQLAlchemy 2 typed models. The database is the source of truth for every state.

Every schema change comes with an Alembic migration in ``node/db/migrations/versions``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import enum

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Enum, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from node.constants import DeliveryState, JobState, StudyState

UID = String(64)  # PS3.5 UI VR: at most 64 characters
AET = String(16)


def state_type(states: type[enum.Enum], name: str) -> Enum:
    """The column type of a lifecycle state: a native enum on PostgreSQL, a checked VARCHAR on SQLite.

    Values are the members' values (``"received"``), as they were stored when the columns
    were ``VARCHAR(16)``; a value outside the enum is refused by the database itself.
    """
    return Enum(
        states,
        name=name,
        values_callable=lambda members: [member.value for member in members],
        create_constraint=True,
        validate_strings=True,
        length=16,
    )


STUDY_STATE = state_type(StudyState, "study_state")
JOB_STATE = state_type(JobState, "job_state")
DELIVERY_STATE = state_type(DeliveryState, "delivery_state")


def utcnow() -> dt.datetime:
    """Timezone-aware now in UTC; every timestamp in the database is UTC."""
    return dt.datetime.now(dt.timezone.utc)


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC, for reports (SQLite returns naive UTC datetimes)."""
    return None if value is None else as_utc(value).isoformat()


def as_utc(value: dt.datetime) -> dt.datetime:
    """``value`` as an aware UTC datetime (SQLite hands back naive UTC values)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, dt.datetime: DateTime(timezone=True)}


class Study(Base):
    """One study as the node knows it; ``state`` moves only through :data:`node.lifecycle.STUDY`."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True, index=True)
    state: Mapped[StudyState] = mapped_column(STUDY_STATE, index=True)
    calling_aet: Mapped[str | None] = mapped_column(AET)
    called_aet: Mapped[str | None] = mapped_column(AET)
    first_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    #: Bumped each time a late instance re-opens the study; a job belongs to one generation.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    instances: Mapped[list["Instance"]] = relationship(back_populates="study", order_by="Instance.id")
    jobs: Mapped[list["Job"]] = relationship(back_populates="study", order_by="Job.id")


class Instance(Base):
    """One received SOP instance, durable in the spool at ``path`` (relative to the spool)."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_aet: Mapped[str | None] = mapped_column(AET)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: What process_study found when it opened the file (modality, view, rows, columns, ...).
    inspection: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)

    study: Mapped[Study] = relationship(back_populates="instances")


class InstanceConflict(Base):
    """A C-STORE of a known SOP Instance UID with different content: discarded, and kept here on record."""

    __tablename__ = "instance_conflicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    calling_aet: Mapped[str | None] = mapped_column(AET)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: sha256 of the discarded data set's bytes, and of the stored one's
    sha256: Mapped[str] = mapped_column(String(64))
    stored_sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One processing run of one study generation; ``state`` moves only through :data:`node.lifecycle.JOB`."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("study_id", "generation", name="uq_job_study_generation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    state: Mapped[JobState] = mapped_column(JOB_STATE, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    worker: Mapped[str | None] = mapped_column(String(128), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    #: Renewed every few seconds by the worker running the job (``node.tasks.heartbeat``).
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    #: The point the running attempt reached: ``{"image": n, "of": total, "stage": name}``.
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    #: Attempts cut short by the death of their process (``node.tasks.interruptions``).
    interruptions: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)

    study: Mapped[Study] = relationship(back_populates="jobs")


# --- results, outputs and deliveries ----------------------------------------------------------


class Result(Base):
    """What one job concluded about one instance under one mask policy.

    ``status`` is a :class:`node.constants.ResultStatus`. For a skipped or failed image the
    ``reason`` says why and the model fields stay empty. One row per (job, instance, policy):
    a retried job updates its rows instead of adding new ones.
    """

    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("job_id", "instance_id", "policy", name="uq_result_job_instance_policy"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    policy: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    #: finding -> probability in [0, 1]
    probabilities: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    no_finding: Mapped[float | None] = mapped_column(Float, default=None)
    #: finding -> operating threshold of the classifier
    thresholds: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    #: finding -> probability >= threshold
    decisions: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    #: role -> {name, version, device_uid, sha256, clinical_use, ...}
    model_versions: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    #: stage -> seconds (decode, analyze stages, build_seg, build_sr, write)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    job: Mapped[Job] = relationship()
    instance: Mapped[Instance] = relationship()
    outputs: Mapped[list["OutputObject"]] = relationship(back_populates="result", order_by="OutputObject.id")


class OutputObject(Base):
    """One DICOM object the node wrote (SEG or SR), kept at ``path`` under the output directory.

    ``kind`` is a :class:`node.constants.OutputKind`. UIDs are deterministic, so a retried job
    finds its row again by (job, SOP Instance UID).
    """

    __tablename__ = "output_objects"
    __table_args__ = (UniqueConstraint("job_id", "sop_instance_uid", name="uq_output_job_sop_instance"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    result_id: Mapped[int | None] = mapped_column(ForeignKey("results.id"), index=True, default=None)
    kind: Mapped[str] = mapped_column(String(8))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    #: relative to the output directory (``data_dir/outputs``)
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship()
    result: Mapped[Result | None] = relationship(back_populates="outputs")
    deliveries: Mapped[list["Delivery"]] = relationship(back_populates="output", order_by="Delivery.id")


class Delivery(Base):
    """One output object on its way to one destination (``AET@host:port``).

    ``state`` moves only through :data:`node.lifecycle.DELIVERY`. A pending delivery is due at
    ``next_attempt_at``; a sweep re-queues due ones, so retries survive a restart.
    """

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("output_object_id", "destination", name="uq_delivery_output_destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    output_object_id: Mapped[int] = mapped_column(ForeignKey("output_objects.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    state: Mapped[DeliveryState] = mapped_column(DELIVERY_STATE, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(default=None, index=True)
    #: Lease of the worker sending it now, renewed by its heartbeat; None when nobody sends it.
    claimed_until: Mapped[dt.datetime | None] = mapped_column(default=None)
    #: Who holds the lease (one random token per ``deliver`` run); None when nobody does.
    claim_token: Mapped[str | None] = mapped_column(String(32), default=None)
    #: The last attempt found the destination unreachable: a sign of life from it makes this due at once.
    waiting_for_destination: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Made due before its backoff ended because its destination answered again (None otherwise).
    woken_early_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    #: DIMSE status of the last answer (None when no answer came: refused, timed out, aborted)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    output: Mapped[OutputObject] = relationship(back_populates="deliveries")
    attempt_log: Mapped[list["DeliveryAttempt"]] = relationship(
        back_populates="delivery", order_by="DeliveryAttempt.number"
    )


class DeliveryAttempt(Base):
    """One C-STORE attempt of one delivery, with its DIMSE status or the error."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (UniqueConstraint("delivery_id", "number", name="uq_delivery_attempt_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    #: DIMSE status (None when no answer came)
    status: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)

    delivery: Mapped[Delivery] = relationship(back_populates="attempt_log")
