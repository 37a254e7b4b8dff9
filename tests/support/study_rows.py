"""Studies, instances and spool files put straight into a node's database, for workflow tests.

The listener is not needed to test the completion scanner, the queue or the commands: these
helpers write what the listener would (a Part 10 file under the spool, its rows) so that each
test controls the times and states exactly.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from node.constants import StudyState
from node.db import Database, Instance, Study
from node.db.schema import utcnow
from node.settings import Settings
from training.dicom_export import RadiographIdentity, write_radiograph


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a node whose data directory is ``tmp_path / 'var'`` (SQLite there)."""
    values: dict[str, object] = {"data_dir": tmp_path / "var", "stable_seconds": 1.0, "scan_interval_seconds": 0.1}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def make_database(settings: Settings) -> Database:
    """The settings' database with its schema at head."""
    database = Database(settings.resolved_database_url)
    database.ensure_schema()
    return database


def add_study(
    database: Database,
    *,
    uid: str | None = None,
    state: StudyState = StudyState.RECEIVED,
    quiet_for: float = 3600.0,
    calling_aet: str | None = "MODALITY",
    generation: int = 0,
) -> tuple[int, str]:
    """Insert a study whose last instance arrived ``quiet_for`` seconds ago; return ``(id, uid)``."""
    uid = uid or generate_uid()
    received = utcnow() - dt.timedelta(seconds=quiet_for)
    with database.session() as session:
        study = Study(
            study_instance_uid=uid,
            state=state.value,
            calling_aet=calling_aet,
            called_aet="CXRNODE",
            first_received_at=received,
            last_received_at=received,
            generation=generation,
        )
        session.add(study)
        session.flush()
        return study.id, uid


def add_instance(
    database: Database,
    settings: Settings,
    study_id: int,
    study_uid: str,
    *,
    size: int = 64,
    seed: int = 0,
    view_position: str = "PA",
    transfer_syntax_uid: str | None = None,
    file_bytes: bytes | None = None,
) -> tuple[int, Path]:
    """Write a small DX radiograph into the spool and record it; return ``(instance id, path)``.

    ``transfer_syntax_uid`` re-encodes the file (RLE, JPEG-LS, JPEG 2000 via pydicom; others
    must be produced by the caller and passed as ``file_bytes``, which replace the file).
    """
    identity = RadiographIdentity.new(study_uid)
    relative = f"{study_uid}/{identity.series_instance_uid}/{identity.sop_instance_uid}.dcm"
    path = settings.spool_dir / relative
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(size, size), dtype=np.uint16)
    write_radiograph(path, pixels, identity, view_position=view_position)
    ts = "1.2.840.10008.1.2.1"
    if transfer_syntax_uid is not None and file_bytes is None:
        import pydicom

        ds = pydicom.dcmread(path)
        ds.compress(transfer_syntax_uid)
        ds.save_as(path, enforce_file_format=True)
        ts = transfer_syntax_uid
    if file_bytes is not None:
        path.write_bytes(file_bytes)
        ts = transfer_syntax_uid or ts
    with database.session() as session:
        instance = Instance(
            study_id=study_id,
            sop_instance_uid=identity.sop_instance_uid,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            series_instance_uid=identity.series_instance_uid,
            transfer_syntax_uid=ts,
            path=relative,
            size_bytes=path.stat().st_size,
            calling_aet="MODALITY",
        )
        session.add(instance)
        session.flush()
        return instance.id, path
