"""Engine, sessions and schema upgrades for one database URL."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from node.disk import DiskReserve, is_disk_full_error

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

#: PostgreSQL advisory lock key held while a process checks or migrates the schema
#: (``cxr-node serve`` and ``cxr-node worker`` may start at the same moment).
SCHEMA_LOCK_KEY = 0x63787273  # "cxrs"


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the listener commit while workers read; synchronous=FULL makes a commit durable
    # before the C-STORE is answered Success. busy_timeout rides out short write contention.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


#: The SQLite database holds patient data: the service account only (SQLite gives its -wal and
#: -shm files the database file's mode).
DATABASE_FILE_MODE = 0o600
DATABASE_DIRECTORY_MODE = 0o700


def _create_private_file(path: Path) -> None:
    """Create ``path`` (and its missing directories) readable by the service account only, unless it exists."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=DATABASE_DIRECTORY_MODE)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DATABASE_FILE_MODE))
    except FileExistsError:
        pass


#: Suffix of the disk reserve kept next to a SQLite database file (:meth:`Database.keep_disk_reserve`).
RESERVE_SUFFIX = ".reserve"


class Database:
    """A database URL with its engine and session factory.

    Use :meth:`session` as a context manager: it commits on success and rolls back on error.
    """

    #: The SQLite database's disk reserve, when one is kept (:meth:`keep_disk_reserve`).
    disk_reserve: DiskReserve | None = None

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                _create_private_file(Path(path))
            self.engine: Engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or ``None`` (another database, or SQLite in memory)."""
        url = make_url(self.url)
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        return Path(url.database)

    def keep_disk_reserve(self, size_bytes: int) -> DiskReserve | None:
        """Keep ``size_bytes`` of disk next to a SQLite database file for the writes that record failures.

        The reserve (``<database file>.reserve``, :class:`node.disk.DiskReserve`) is created now
        when there is room. Every :meth:`session` checks it first (one ``statvfs``): on a nearly
        full disk it is released before SQLite fails, and a transaction that still fails for lack
        of space releases it, so that the caller's next transaction (recording the failure) has
        room. Returns ``None``, keeping nothing, for ``size_bytes`` 0 and for databases that are
        not a SQLite file (a database server has its own disk).
        """
        path = self.sqlite_path
        if size_bytes <= 0 or path is None:
            self.disk_reserve = None
            return None
        reserve = DiskReserve(path.with_name(path.name + RESERVE_SUFFIX), size_bytes)
        reserve.check()
        self.disk_reserve = reserve
        return reserve

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed when the block ends, rolled back on error.

        With a disk reserve (:meth:`keep_disk_reserve`), the reserve is checked first and released
        when the transaction fails because the disk is full.
        """
        reserve = self.disk_reserve
        if reserve is not None:
            reserve.check()
        session = self._factory()
        try:
            yield session
            session.commit()
        except BaseException as error:
            try:
                session.rollback()
            finally:
                if reserve is not None and is_disk_full_error(error):
                    reserve.release(f"a database write failed: {type(error).__name__}")
            raise
        finally:
            session.close()

    def alembic_config(self):  # type: ignore[no-untyped-def]
        """An Alembic config for this database, independent of the working directory."""
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        config.attributes["engine"] = self.engine
        return config

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` (``cxr-node db upgrade``)."""
        with self._schema_lock():
            self._upgrade(revision)

    def _upgrade(self, revision: str = "head") -> None:
        from alembic import command

        command.upgrade(self.alembic_config(), revision)

    @contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """Serialise schema checks and migrations between processes sharing this database.

        SQLite: an exclusive ``flock`` on ``<database file>.schema-lock``; PostgreSQL: a
        session advisory lock. Other databases: no lock.
        """
        if self.url.startswith("sqlite"):
            path = self.url.split("///", 1)[-1]
            if not path or path == ":memory:":
                yield
                return
            lock_path = Path(f"{path}.schema-lock")
            _create_private_file(lock_path)
            with open(lock_path, "a+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            return
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                connection.commit()
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
                    connection.commit()
            return
        yield

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str:
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(self.alembic_config()).get_current_head()
        if head is None:
            raise RuntimeError(
                f"no Alembic migrations found in {MIGRATIONS_DIR}; the installation is incomplete, reinstall cxr-node"
            )
        return head

    def ensure_schema(self) -> None:
        """Upgrade an empty (new) database itself; refuse to run on an outdated non-empty one.

        A node must not silently migrate a production database: an outdated one stops start-up
        with the command that fixes it.
        """
        with self._schema_lock():
            self._ensure_schema_locked()

    def _ensure_schema_locked(self) -> None:
        current = self.current_revision()
        if current == self.head_revision():
            return
        has_tables = bool(inspect(self.engine).get_table_names())
        if current is None and not has_tables:
            log.info("empty database; creating schema at %s", self.head_revision())
            self._upgrade()
            return
        if current is None:
            raise RuntimeError(
                f"database {self.engine.url.render_as_string(hide_password=True)} has tables but no cxr-node schema "
                "revision; point CXR_NODE_DATABASE_URL at an empty database or the node's own, or run "
                "`cxr-node db upgrade` if it is a node database from before migrations"
            )
        if self.url.startswith("sqlite"):
            log.info("upgrading SQLite database from %s to %s", current, self.head_revision())
            self._upgrade()
            return
        raise RuntimeError(
            f"database schema is at revision {current}, this node needs {self.head_revision()}; "
            "run `cxr-node db upgrade` first"
        )
