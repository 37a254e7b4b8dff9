"""Fixtures for listener tests: a real listener on a free loopback port, a real SQLite database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
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


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start a listener with settings overrides; every node started is shut down at teardown."""
    started: list[Node] = []

    def start(**overrides: Any) -> Node:
        values: dict[str, Any] = {
            "data_dir": tmp_path / f"node{len(started)}",
            "host": "127.0.0.1",
            "port": free_port(),
            "min_free_disk_bytes": 0,
            "dimse_timeout": 20.0,
            "network_timeout": 20.0,
            "acse_timeout": 20.0,
        }
        values.update(overrides)
        settings = Settings(**values)
        database = Database(settings.resolved_database_url)
        database.ensure_schema()
        node: Node
        handle = start_listener(settings, database, on_instance_stored=lambda item: node.stored.append(item))
        node = Node(settings, database, handle)
        started.append(node)
        return node

    yield start
    for node in started:
        node.handle.shutdown()
        node.database.engine.dispose()


@pytest.fixture
def node(start_node: Callable[..., Node]) -> Node:
    """A listener with the default checks (called AE title required, everyone may call)."""
    return start_node()


VERIFICATION_CONTEXT = (VERIFICATION, ["1.2.840.10008.1.2"])
