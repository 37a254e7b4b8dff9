"""A PostgreSQL crash and restart in the middle of a job: the job is released and run again, never failed.

The toy output builder kills the real PostgreSQL server (SIGKILL of the postmaster and its
backends, as a crash) while the job analyses its image, and starts it again a few seconds
later, so that the job's next database write meets a database that is away and then in
crash recovery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from node.completion import queue_quiet_studies
from node.constants import JobState, StudyState
from node.db import Database, Job, Study
from node.outputs.builders import DEFAULT_BUILDERS, BuildInput, OutputBuilder
from node.settings import Settings
from node.tasks.dispatch import InProcessDispatcher
from tests.node.test_pipeline import spool
from tests.support.polling import wait_for
from tests.support.postgres_server import PostgresServer
from training.dicom_export import RadiographIdentity
from training.phantoms import generate_phantom

pytestmark = pytest.mark.slow

#: Seconds the database stays down.
OUTAGE_SECONDS = 3.0


class CrashTheDatabaseOnce(OutputBuilder):
    """Kills PostgreSQL the first time it is asked, and starts it again after an outage; builds nothing."""

    kind = "DB-CRASH"
    sop_class_uid = "1.2.840.10008.5.1.4.1.1.7"
    transfer_syntaxes = ()
    per_policy = False

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.crashes = 0
        self.restarted = threading.Event()

    def skip_reason(self, given: BuildInput) -> str | None:
        if self.crashes == 0:
            self.crashes += 1
            self.server.kill()

            def restart() -> None:
                time.sleep(OUTAGE_SECONDS)
                self.server.start()
                self.restarted.set()

            threading.Thread(target=restart, daemon=True).start()
        return "builds nothing"

    def build(self, given: BuildInput) -> Dataset:  # pragma: no cover - always skipped
        raise AssertionError("unreachable")


@pytest.fixture()
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def test_a_database_crash_during_a_job_releases_it_and_it_is_run_again_to_done(tmp_path: Path, postgres: PostgresServer) -> None:
    settings = Settings(data_dir=tmp_path / "var", database_url=postgres.url, stable_seconds=0, device="cpu")
    database = Database(settings.resolved_database_url)
    database.ensure_schema()
    study_uid = RadiographIdentity.new().study_instance_uid
    phantom = generate_phantom(256, seed=11)
    spool(settings, database, study_uid, phantom.image, phantom.pixel_spacing_mm)
    [queued] = queue_quiet_studies(database, settings)
    dispatcher = InProcessDispatcher(settings, database)
    crasher = CrashTheDatabaseOnce(postgres)
    dispatcher.context.builders = (*DEFAULT_BUILDERS, crasher)
    try:
        dispatcher.process_study(queued.job_id)
        assert crasher.restarted.wait(60), "the database was not started again"

        def finished() -> bool:
            with database.session() as session:
                return session.scalar(select(Job.state).where(Job.id == queued.job_id)) in (JobState.DONE, JobState.FAILED)

        wait_for(finished, "the job to end", 120)
        assert dispatcher.wait_idle(30)
    finally:
        dispatcher.shutdown()
    with database.session() as session:
        job = session.get(Job, queued.job_id)
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        assert (job.state, job.error) == (JobState.DONE, None)
        assert job.attempts == 2  # the attempt the crash cut short, released; the one that finished
        assert not job.interruptions  # a database restart is not a worker's death
        assert study.state in (StudyState.DONE, StudyState.DELIVERED)
    database.engine.dispose()
