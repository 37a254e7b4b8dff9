"""Recording instances: one study row per study under concurrency, duplicates once, re-opening."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from node.constants import StudyState
from node.db import Database, Instance, Study
from node.ingest import IngestOutcome, ReceivedInstance, stored_path, record_instance

STUDY = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture
def database(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    db.ensure_schema()
    return db


def _item(sop: str, study: str = STUDY) -> ReceivedInstance:
    return ReceivedInstance(
        study_instance_uid=study,
        series_instance_uid=study + ".1",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"{study}/{study}.1/{sop}.dcm",
        size_bytes=100,
        calling_aet="PACS",
        called_aet="CXRNODE",
    )


def test_concurrent_first_instances_make_one_study_row(database: Database) -> None:
    items = [_item(f"{STUDY}.1.{i}") for i in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda item: record_instance(database, item).outcome, items))
    assert outcomes.count(IngestOutcome.NEW_STUDY) == 1
    assert outcomes.count(IngestOutcome.ADDED) == len(items) - 1
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == 1
        assert session.scalar(select(func.count()).select_from(Instance)) == len(items)


def test_concurrent_duplicates_are_recorded_once(database: Database) -> None:
    item = _item(f"{STUDY}.1.1")
    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(lambda _: record_instance(database, item).outcome, range(12)))
    assert outcomes.count(IngestOutcome.NEW_STUDY) == 1
    assert outcomes.count(IngestOutcome.DUPLICATE) == 11
    assert stored_path(database, item.sop_instance_uid) == item.path
    assert stored_path(database, f"{STUDY}.9.9") is None


def test_reopen_bumps_generation_once_per_reopening(database: Database) -> None:
    assert record_instance(database, _item(f"{STUDY}.1.1")).generation == 0
    with database.session() as session:
        session.execute(update(Study).values(state=StudyState.QUEUED.value))
    stored = record_instance(database, _item(f"{STUDY}.1.2"))
    assert (stored.outcome, stored.generation) == (IngestOutcome.REOPENED, 1)
    stored = record_instance(database, _item(f"{STUDY}.1.3"))
    assert (stored.outcome, stored.generation) == (IngestOutcome.ADDED, 1)
    duplicate = record_instance(database, _item(f"{STUDY}.1.1"))
    assert (duplicate.outcome, duplicate.generation) == (IngestOutcome.DUPLICATE, 1)
    with database.session() as session:
        study = session.execute(select(Study)).scalar_one()
        assert (study.state, study.generation) == (StudyState.RECEIVED.value, 1)
