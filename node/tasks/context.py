"""What a task body gets besides its arguments: settings, database and a dispatcher."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from node.db import Database
from node.delivery.senders import DEFAULT_SENDERS, Sender
from node.outputs.builders import DEFAULT_BUILDERS, OutputBuilder
from node.settings import Settings
from node.tasks.isolation import IsolationGate

if TYPE_CHECKING:  # pragma: no cover
    from node.tasks.dispatch import Dispatcher

#: Longest worker name stored on a job (``jobs.worker`` is VARCHAR(128)).
WORKER_NAME_MAX = 128


@dataclass
class TaskContext:
    """The environment a task runs in, the same for both transports.

    ``dispatcher`` sends follow-up tasks (``context.dispatcher.enqueue(name, *args)``) through
    the transport this task came from. ``builders`` are the output builders a job runs, in
    order; ``senders`` the protocols delivery can speak, by destination scheme.
    ``isolation`` is the process's gate that runs a job interrupted before alone.
    """

    settings: Settings
    database: Database
    dispatcher: "Dispatcher"
    builders: Sequence[OutputBuilder] = DEFAULT_BUILDERS
    senders: Mapping[str, Sender] = field(default_factory=lambda: dict(DEFAULT_SENDERS))
    isolation: IsolationGate = field(default_factory=IsolationGate)

    def worker_name(self) -> str:
        """``host/pid/thread`` of the code running now, as recorded on a claimed job."""
        name = f"{socket.gethostname()}/{os.getpid()}/{threading.current_thread().name}"
        return name[:WORKER_NAME_MAX]
