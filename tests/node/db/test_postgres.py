"""The database layer against a real PostgreSQL server: migrations, ingest, completion, claiming."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.completion import queue_quiet_studies
from node.constants import JobState, StudyState
from node.db import Base, Database, Job, Study
from node.ingest import IngestOutcome, ReceivedInstance, record_instance
from node.reports import status_report
from node.settings import Settings
from node.tasks.jobs import claim_job, finish_job, requeue_unfinished
from tests.support.concurrent_start import ensure_schema_concurrently
from tests.support.postgres_server import PostgresServer

CXR_NODE = str(Path(sys.executable).with_name("cxr-node"))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


_SERIES: dict[str, str] = {}


def _instance(study_uid: str, n: int) -> ReceivedInstance:
    series = _SERIES.setdefault(study_uid, generate_uid())
    sop = generate_uid()
    return ReceivedInstance(
        study_instance_uid=study_uid,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"{study_uid}/{series}/{sop}.dcm",
        size_bytes=1000 + n,
        calling_aet="MODALITY",
        called_aet="CXRNODE",
    )


def test_db_upgrade_command_migrates_an_empty_postgres_database_to_the_models(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.create_database("upgrade_cli")
    env = {**os.environ, "CXR_NODE_DATABASE_URL": url, "CXR_NODE_DATA_DIR": str(tmp_path)}

    result = subprocess.run([CXR_NODE, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    database = Database(url)
    assert database.current_revision() == database.head_revision()
    assert f"empty -> {database.head_revision()}" in result.stdout
    with database.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    database.engine.dispose()


def test_serve_and_workers_starting_together_create_the_schema_once(postgres: PostgresServer) -> None:
    url = postgres.create_database("concurrent_start")
    engines = ensure_schema_concurrently(url, starters=4, timeout=120)
    assert engines[0].current_revision() == engines[0].head_revision()
    for database in engines:
        database.engine.dispose()


def test_node_refuses_an_outdated_postgres_schema_with_the_fix(postgres: PostgresServer) -> None:
    database = Database(postgres.create_database("outdated"))
    database.upgrade("0001")
    with pytest.raises(RuntimeError, match="run `cxr-node db upgrade` first"):
        database.ensure_schema()
    database.engine.dispose()


def test_ingest_completion_and_claiming_on_postgres(postgres: PostgresServer, tmp_path: Path) -> None:
    database = Database(postgres.create_database("workflow"))
    database.ensure_schema()
    settings = Settings(data_dir=tmp_path, database_url=database.url, stable_seconds=0)
    study_uids = [generate_uid() for _ in range(5)]

    # four associations at once, each storing every study's instances (duplicates included)
    items = [_instance(uid, n) for uid in study_uids for n in range(3)]
    outcomes: list[IngestOutcome] = []

    def store() -> None:
        for item in items:
            outcomes.append(record_instance(database, item).outcome)

    threads = [threading.Thread(target=store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes.count(IngestOutcome.DUPLICATE) == 3 * len(items)
    assert len(outcomes) - outcomes.count(IngestOutcome.DUPLICATE) == len(items)

    # four scanners at once: each study gets exactly one job
    won: list[int] = []
    barrier = threading.Barrier(4)

    def scan() -> None:
        barrier.wait()
        won.extend(q.job_id for q in queue_quiet_studies(database, settings))

    threads = [threading.Thread(target=scan) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == len(set(won)) == len(study_uids)

    # eight workers woken for the same job: one claims it
    job_id = won[0]
    claims = []
    barrier8 = threading.Barrier(8)

    def claim(n: int) -> None:
        barrier8.wait()
        claims.append(claim_job(database, job_id, worker=f"w{n}"))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1
    assert finish_job(database, winners[0], {"instances": 3})

    # a late instance re-opens the finished study under a new generation
    late = record_instance(database, _instance(winners[0].study_instance_uid, 9))
    assert late.outcome == IngestOutcome.REOPENED and late.generation == 1
    [requeued] = queue_quiet_studies(database, settings)
    assert requeued.generation == 1

    with database.session() as session:
        report = status_report(session)
        states = dict(session.execute(select(Study.study_instance_uid, Study.state)).all())
        jobs = session.execute(select(Job.id, Job.state)).all()
    assert report["studies"]["by_state"][StudyState.QUEUED.value] == len(study_uids)
    assert report["jobs"]["by_state"] == {"queued": 5, "running": 0, "done": 1, "failed": 0}
    assert states[winners[0].study_instance_uid] == StudyState.QUEUED.value
    assert sorted(requeue_unfinished(database, settings, running_are_dead=True)) == sorted(
        j for j, state in jobs if state == JobState.QUEUED.value
    )
    database.engine.dispose()


def test_serve_keeps_its_state_in_postgres_end_to_end(postgres: PostgresServer, tmp_path: Path) -> None:
    from pydicom.uid import ExplicitVRLittleEndian

    from tests.support.dcmtk import storescu
    from tests.support.dicom_files import make_study
    from tests.support.node_process import NodeProcess

    url = postgres.create_database("serve_e2e")
    instances = make_study(tmp_path / "send", 2, ExplicitVRLittleEndian)
    study_uid = instances[0].identity.study_instance_uid
    with NodeProcess(tmp_path / "var", env={"CXR_NODE_DATABASE_URL": url}) as node:
        sent = storescu(node.port, [i.path for i in instances], calling_aet="MODALITY")
        assert sent.returncode == 0 and sent.statuses == [0x0000, 0x0000], sent.output
        report = node.wait_for_study(study_uid, "done")
        status = node.status()
    assert status["node"]["database"].startswith("postgresql+psycopg://")
    assert status["studies"]["by_state"]["done"] == 1
    [job] = report["jobs"]
    assert job["state"] == "done" and all(i["inspection"]["decoded"] for i in report["instances"])
    assert not (tmp_path / "var" / "cxr-node.sqlite3").exists()  # nothing went to SQLite
