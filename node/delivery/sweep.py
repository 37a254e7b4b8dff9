"""The periodic delivery sweep of a running node: wakes deliveries whose wake-up was lost.

Normally a failed delivery schedules its own next wake-up (a countdown). That wake-up is lost
when the process holding it stops (in-process timers), and a claim is left behind when a
worker dies mid-send. Both leave a pending delivery whose ``next_attempt_at`` has passed; this
thread finds those overdue by :data:`node.delivery.task.OVERDUE_GRACE_SECONDS` and wakes them.
``cxr-node resend`` run while the node is up leaves its failures to this sweep too.
"""

from __future__ import annotations

import logging
import threading

from node.db import Database
from node.delivery.task import OVERDUE_GRACE_SECONDS, sweep_overdue

log = logging.getLogger(__name__)

#: Seconds between two sweeps.
SWEEP_INTERVAL_SECONDS = 10.0


class DeliverySweeper:
    """A daemon thread calling :func:`node.delivery.task.sweep_overdue` every ``interval`` seconds."""

    def __init__(
        self,
        database: Database,
        dispatcher: object,
        *,
        interval: float = SWEEP_INTERVAL_SECONDS,
        grace_seconds: float = OVERDUE_GRACE_SECONDS,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"the sweep interval must be positive; got {interval}")
        self.database = database
        self.dispatcher = dispatcher
        self.interval = interval
        self.grace_seconds = grace_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="delivery-sweeper", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and wait for the sweep in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                sweep_overdue(self.database, self.dispatcher, grace_seconds=self.grace_seconds)
            except Exception:  # a database hiccup or a stopping dispatcher must not end the thread
                log.exception("delivery sweep failed; retrying in %.0f s", self.interval)
