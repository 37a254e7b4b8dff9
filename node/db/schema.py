"""SQLAlchemy 2 typed models. The database is the source of truth for every state.

Every schema change comes with an Alembic migration in ``node/db/migrations/versions``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)  # PS3.5 UI VR: at most 64 characters
AET = String(16)


def utcnow() -> dt.datetime:
    """Timezone-aware now in UTC; every timestamp in the database is UTC."""
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, dt.datetime: DateTime(timezone=True)}


class Study(Base):
    """One study as the node knows it; ``state`` is a :class:`node.constants.StudyState`."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True, index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
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


class Job(Base):
    """One processing run of one study generation; ``state`` is a :class:`node.constants.JobState`."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("study_id", "generation", name="uq_job_study_generation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    worker: Mapped[str | None] = mapped_column(String(128), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)

    study: Mapped[Study] = relationship(back_populates="jobs")
