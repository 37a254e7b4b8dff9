"""Fixtures for delivery tests: a database with output rows, small DICOM files, a recording SCP."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.constants import JobState, OutputKind, StudyState
from node.db import Database, Instance, Job, Study
from node.db.schema import OutputObject
from node.settings import Settings
from tests.support.recording_scp import RecordingSCP
from training.dicom_export import CR_IMAGE, RadiographIdentity, write_radiograph


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        ae_title="CXRNODE",
        delivery_backoff_seconds=0.2,
        delivery_backoff_max_seconds=0.8,
        delivery_max_attempts=8,
        acse_timeout=5,
        dimse_timeout=10,
        network_timeout=10,
    )


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    db = Database(settings.resolved_database_url)
    db.ensure_schema()
    yield db
    db.engine.dispose()


def small_image(seed: int) -> np.ndarray:
    """A 32x32 float image in [0, 1]; the content does not matter for delivery."""
    return np.random.default_rng(seed).random((32, 32)).astype(np.float32)


@dataclass
class StudyFiles:
    """A study's files written under the output directory, and their rows."""

    study_instance_uid: str
    job_id: int
    output_ids: list[int] = field(default_factory=list)
    sop_instance_uids: list[str] = field(default_factory=list)


def make_study_with_outputs(
    database: Database, settings: Settings, *, count: int = 2, calling_aet: str = "ORTHANC", variants: bool = False
) -> StudyFiles:
    """A done study with ``count`` DICOM files recorded as output objects of its job.

    With ``variants``, the files differ in SOP class and transfer syntax: DX in Explicit VR,
    CR in Explicit VR, DX in Implicit VR (three presentation contexts).
    """
    identity = RadiographIdentity.new()
    study_uid = identity.study_instance_uid
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    kinds = [
        ({}, ExplicitVRLittleEndian),
        ({"modality": "CR", "sop_class_uid": CR_IMAGE}, ExplicitVRLittleEndian),
        ({}, ImplicitVRLittleEndian),
    ]
    with database.session() as session:
        study = Study(study_instance_uid=study_uid, state=StudyState.DONE.value, calling_aet=calling_aet, called_aet="CXRNODE")
        session.add(study)
        session.flush()
        source = Instance(
            study_id=study.id,
            sop_instance_uid=identity.sop_instance_uid,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            series_instance_uid=identity.series_instance_uid,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            path="x.dcm",
            size_bytes=1,
        )
        session.add(source)
        job = Job(study_id=study.id, generation=0, state=JobState.DONE.value, attempts=1)
        session.add(job)
        session.flush()
        files = StudyFiles(study_uid, job.id)
        for index in range(count):
            extra, syntax = kinds[index % len(kinds)] if variants else ({}, ExplicitVRLittleEndian)
            ident = RadiographIdentity.new(study_uid)
            relative = Path(study_uid) / f"{ident.sop_instance_uid}.dcm"
            path = write_radiograph(settings.output_dir / relative, small_image(index), ident, **extra)
            if syntax != ExplicitVRLittleEndian:
                ds = pydicom.dcmread(path)
                ds.file_meta.TransferSyntaxUID = syntax
                ds.save_as(path, implicit_vr=True, little_endian=True)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            output = OutputObject(
                job_id=job.id,
                kind=OutputKind.SEG.value,
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=ident.sop_instance_uid,
                series_instance_uid=ident.series_instance_uid,
                study_instance_uid=study_uid,
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                path=str(relative),
                size_bytes=path.stat().st_size,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            )
            session.add(output)
            session.flush()
            files.output_ids.append(output.id)
            files.sop_instance_uids.append(ident.sop_instance_uid)
    return files


@pytest.fixture
def study_files(database: Database, settings: Settings) -> StudyFiles:
    return make_study_with_outputs(database, settings)


@pytest.fixture
def recording_scp() -> Iterator[RecordingSCP]:
    scp = RecordingSCP()
    yield scp
    scp.stop()
