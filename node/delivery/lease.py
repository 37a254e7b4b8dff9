"""The heartbeat that keeps a delivery claim alive while its association runs.

A claim (:func:`node.delivery.records.claim_due`) holds for a short lease, a few seconds, so
that a delivery whose worker died is sent again within seconds. A send that is slow but alive
(a large object, a slow PACS) must not lose its claim to a sweep, so while it runs this thread
renews the lease every quarter of its length. If renewing fails (the database is unreachable)
the lease may run out and another worker may send the same objects too; their UIDs are
deterministic, so the destination stores them once.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from node.db import Database
from node.delivery.records import renew_lease

log = logging.getLogger(__name__)


class LeaseHeartbeat:
    """Renews the lease of every delivery claimed with ``token`` until the block ends.

    Use as a context manager around the sending::

        with LeaseHeartbeat(database, token, lease_seconds):
            outcomes = sender.send(...)
    """

    def __init__(self, database: Database, token: str, lease_seconds: float, *, interval: float | None = None) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"the lease must be positive (CXR_NODE_DELIVERY_LEASE_SECONDS); got {lease_seconds}")
        self.database = database
        self.token = token
        self.lease_seconds = lease_seconds
        self.interval = interval if interval is not None else lease_seconds / 4
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery-lease", daemon=True)

    def __enter__(self) -> "LeaseHeartbeat":
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                held = renew_lease(self.database, self.token, self.lease_seconds)
            except Exception:  # a database hiccup: try again at the next beat, the lease may still hold
                log.exception("could not renew a delivery lease; another worker may send these objects too")
                continue
            self.renewals += 1
            if held == 0:  # everything recorded already, or taken over after the lease ran out
                return
