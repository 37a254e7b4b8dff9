"""Alembic migrations on SQLite: from nothing to head, matching the models, and back."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from node.db import Base, Database
from tests.support.concurrent_start import ensure_schema_concurrently


def _schema_differences(database: Database) -> list[object]:
    with database.engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def test_empty_sqlite_database_is_created_at_head_and_matches_the_models(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'node.sqlite3'}")

    database.ensure_schema()

    assert database.current_revision() == database.head_revision()
    assert {"studies", "instances", "jobs"} <= set(inspect(database.engine).get_table_names())
    assert _schema_differences(database) == []


def test_migrations_downgrade_to_nothing_and_upgrade_again(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'node.sqlite3'}")
    database.upgrade()

    from alembic import command

    command.downgrade(database.alembic_config(), "base")
    assert set(inspect(database.engine).get_table_names()) <= {"alembic_version"}
    database.upgrade()
    assert _schema_differences(database) == []


def test_outdated_sqlite_database_is_upgraded_by_the_node(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'node.sqlite3'}")
    database.upgrade("0001")
    assert database.current_revision() == "0001"

    database.ensure_schema()

    assert database.current_revision() == database.head_revision()


def test_non_empty_database_without_a_revision_is_refused(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'node.sqlite3'}")
    with database.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE foreign_table (id INTEGER)")
    with pytest.raises(RuntimeError, match="cxr-node db upgrade"):
        database.ensure_schema()


def test_processes_starting_together_create_the_schema_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.sqlite3'}"
    for engine in ensure_schema_concurrently(url, starters=4, timeout=60):
        engine.engine.dispose()
    database = Database(url)
    assert database.current_revision() == database.head_revision()
    assert _schema_differences(database) == []


def test_state_enum_migration_keeps_existing_rows_and_refuses_unknown_states(tmp_path: Path) -> None:
    from sqlalchemy.exc import IntegrityError, StatementError

    from node.constants import StudyState
    from node.db import Study

    database = Database(f"sqlite:///{tmp_path / 'node.sqlite3'}")
    database.upgrade("0002")
    with database.engine.begin() as connection:
        for n, state in enumerate(("received", "running", "delivered")):
            connection.exec_driver_sql(
                "INSERT INTO studies (study_instance_uid, state, first_received_at, last_received_at, generation, updated_at) "
                f"VALUES ('1.2.{n}', '{state}', '2026-12-01 10:00:00', '2026-12-01 10:00:00', 0, '2026-12-01 10:00:00')"
            )

    database.upgrade()

    with database.session() as session:
        states = [row.state for row in session.query(Study).order_by(Study.study_instance_uid)]
    assert states == [StudyState.RECEIVED, StudyState.RUNNING, StudyState.DELIVERED]
    with pytest.raises(IntegrityError):  # the CHECK constraint of the enum type
        with database.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE studies SET state = 'lost' WHERE study_instance_uid = '1.2.0'")
    with pytest.raises(StatementError, match="lost"):
        with database.session() as session:
            session.query(Study).filter_by(study_instance_uid="1.2.0").update({"state": "lost"})
