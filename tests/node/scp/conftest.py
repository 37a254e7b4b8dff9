"""Fixtures for listener tests: a real listener on a free loopback port, a real SQLite database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.listener import Node, start_node as _start_node


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start a listener with settings overrides; every node started is stopped at teardown."""
    started: list[Node] = []

    def start(**overrides: Any) -> Node:
        overrides.setdefault("data_dir", tmp_path / f"node{len(started)}")
        node = _start_node(**overrides)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def node(start_node: Callable[..., Node]) -> Node:
    """A listener with the default checks (called AE title required, everyone may call)."""
    return start_node()
