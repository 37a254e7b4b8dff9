"""A real listener for tests: started in-process on a free loopback port with a real SQLite database.

:func:`start_node` starts one with settings overrides and returns a :class:`Node` that knows its
settings, database, spool and the instances it reported stored, and opens pynetdicom
associations to it. Stop it with ``node.stop()``. The pytest fixtures wrapping it are in
``tests/node/scp/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from sqlalchemy import select

from node.db import Database, Instance, Study
from node.ingest import StoredInstance
from node.scp import ListenerHandle, start_listener
from node.scp.contexts import VERIFICATION
from node.settings import Settings
from tests.support.ports import free_port

NODE_AET = "CXRNODE"
#: The Verification context as ``(SOP Class, [transfer syntaxes])`` for :meth:`Node.associate`.
VERIFICATION_CONTEXT = (VERIFICATION, ["1.2.840.10008.1.2"])


class Node:
    """A started listener with its settings, database and what it reported stored."""

    def __init__(self, settings: Settings, database: Database, handle: ListenerHandle) -> None:
        self.settings = settings
        self.database = database
        self.handle = handle
        self.stored: list[StoredInstance] = []

    @property
    def port(self) -> int:
        return self.handle.port

    @property
    def spool(self) -> Path:
        return self.settings.spool_dir

    def study(self, study_uid: str) -> Study | None:
        with self.database.session() as session:
            return session.execute(select(Study).where(Study.study_instance_uid == study_uid)).scalar_one_or_none()

    def instances(self) -> list[Instance]:
        with self.database.session() as session:
            return list(session.execute(select(Instance).order_by(Instance.id)).scalars())

    def stop(self) -> None:
        self.handle.shutdown()
        self.database.engine.dispose()

    def associate(
        self,
        contexts: list[tuple[str, list[str]]],
        *,
        calling_aet: str = "TESTSCU",
        called_aet: str = NODE_AET,
    ) -> Association:
        """An association from a pynetdicom SCU proposing ``(sop_class, [transfer syntaxes])``."""
        ae = AE(ae_title=calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        for sop_class, syntaxes in contexts:
            ae.add_requested_context(sop_class, syntaxes)
        return ae.associate("127.0.0.1", self.port, ae_title=called_aet)


def start_node(data_dir: Path, **overrides: Any) -> Node:
    """Start a listener on 127.0.0.1 with fast timeouts, no disk watermark nor database reserve, and ``overrides``."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "host": "127.0.0.1",
        "port": free_port(),
        "min_free_disk_bytes": 0,
        "database_reserve_bytes": 0,
        "dimse_timeout": 20.0,
        "network_timeout": 20.0,
        "acse_timeout": 20.0,
    }
    values.update(overrides)
    settings = Settings(**values)
    database = Database(settings.resolved_database_url)
    database.ensure_schema()
    stored: list[StoredInstance] = []
    handle = start_listener(settings, database, on_instance_stored=stored.append)
    node = Node(settings, database, handle)
    node.stored = stored
    return node
