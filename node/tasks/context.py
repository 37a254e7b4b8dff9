"""What a task body gets besides its arguments: settings, database and a dispatcher."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.db import Database
from node.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from node.tasks.dispatch import Dispatcher

#: Longest worker name stored on a job (``jobs.worker`` is VARCHAR(128)).
WORKER_NAME_MAX = 128


@dataclass
class TaskContext:
    """The environment a task runs in, the same for both transports.

    ``dispatcher`` sends follow-up tasks (``context.dispatcher.enqueue(name, *args)``) through
    the transport this task came from.
    """

    settings: Settings
    database: Database
    dispatcher: "Dispatcher"

    def worker_name(self) -> str:
        """``host/pid/thread`` of the code running now, as recorded on a claimed job."""
        name = f"{socket.gethostname()}/{os.getpid()}/{threading.current_thread().name}"
        return name[:WORKER_NAME_MAX]
