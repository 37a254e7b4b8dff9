"""The delivery sweeper of a running node: wakes deliveries whose wake-up was lost, probes destinations.

Normally a delivery is woken by a message: the job that made it, or its own retry countdown.
That wake-up is lost when the process holding it stops (in-process timers) or when the
broker is down at the moment it is sent (a job finishing during a Redis outage); a worker
that dies mid-send leaves a claim whose lease runs out within seconds. All of these leave a
pending delivery that is due and unclaimed; every ``CXR_NODE_DELIVERY_SWEEP_INTERVAL_SECONDS``
this sweeper wakes those overdue by ``CXR_NODE_DELIVERY_SWEEP_GRACE_SECONDS``. A second
thread probes, every ``CXR_NODE_DELIVERY_PROBE_INTERVAL_SECONDS``, the destinations that
deliveries wait for (:class:`node.delivery.probe.DestinationProbe`), so that they go as soon
as their destination answers again. ``cxr-node resend`` run while the node is up leaves its
failures to this sweep too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from node.db import Database
from node.delivery.probe import DestinationProbe
from node.delivery.senders import DEFAULT_SENDERS, Sender
from node.delivery.task import sweep_overdue
from node.settings import Settings

log = logging.getLogger(__name__)


class DeliverySweeper:
    """Daemon threads: :func:`node.delivery.task.sweep_overdue` every ``interval`` seconds, probes every ``probe_interval``.

    ``settings`` gives the intervals and the grace (``CXR_NODE_DELIVERY_SWEEP_*``,
    ``CXR_NODE_DELIVERY_PROBE_INTERVAL_SECONDS``) and enables the probes; ``interval`` and
    ``grace_seconds`` override them. Without ``settings`` only the sweep runs, with the
    defaults of :class:`node.settings.Settings`.
    """

    def __init__(
        self,
        database: Database,
        dispatcher: object,
        *,
        settings: Settings | None = None,
        senders: Mapping[str, Sender] = DEFAULT_SENDERS,
        interval: float | None = None,
        grace_seconds: float | None = None,
    ) -> None:
        defaults = Settings.model_fields
        self.interval = float(
            interval
            if interval is not None
            else settings.delivery_sweep_interval_seconds if settings is not None
            else defaults["delivery_sweep_interval_seconds"].default
        )
        self.grace_seconds = float(
            grace_seconds
            if grace_seconds is not None
            else settings.delivery_sweep_grace_seconds if settings is not None
            else defaults["delivery_sweep_grace_seconds"].default
        )
        if self.interval <= 0:
            raise ValueError(f"the sweep interval must be positive; got {self.interval}")
        self.database = database
        self.dispatcher = dispatcher
        self.probe = DestinationProbe(database, dispatcher, settings, senders) if settings is not None else None
        self.probe_interval = settings.delivery_probe_interval_seconds if settings is not None else 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the threads (idempotent)."""
        if self._threads:
            return
        self._threads.append(
            threading.Thread(
                target=self._loop, args=(self.interval, self._sweep, "delivery sweep"), name="delivery-sweeper", daemon=True
            )
        )
        if self.probe is not None:
            self._threads.append(
                threading.Thread(
                    target=self._loop,
                    args=(self.probe_interval, self.probe.probe_once, "destination probe"),
                    name="delivery-prober",
                    daemon=True,
                )
            )
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads and wait for the sweep or probe in progress."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def _sweep(self) -> None:
        sweep_overdue(self.database, self.dispatcher, grace_seconds=self.grace_seconds)

    def _loop(self, interval: float, step: Callable[[], object], what: str) -> None:
        failing = False
        while not self._stop.wait(interval):
            try:
                step()
            except Exception as exc:  # a database hiccup or a broker outage must not end the thread
                if not failing:  # logged once per outage, not every few seconds
                    log.warning("%s failed (%s); retrying every %g s", what, exc, interval, exc_info=True)
                failing = True
                continue
            if failing:
                log.info("%s works again", what)
            failing = False
