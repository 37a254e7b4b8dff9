"""Probes of destinations that deliveries wait for: when one answers again, its deliveries go at once.

A delivery whose attempt found its destination unreachable backs off (1, 2, 4 ... times the
base delay). Without probes, after a PACS outage each delivery would wait out its own
backoff, minutes after the PACS is back. :class:`DestinationProbe` asks each destination that
deliveries wait for whether it answers (:meth:`node.delivery.senders.Sender.probe`: C-ECHO for
DICOM) and, when it answers after it did not (or at its first probe), makes all of them due
and sends one wake-up. Down and up are logged once per transition, not at every probe.

Only a transition wakes deliveries: a destination that answers C-ECHO while its deliveries
still fail is not probed into a retry loop (see :func:`node.delivery.records.record_outcomes`
for how such early attempts are counted).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from node.db import Database
from node.delivery.records import waiting_destinations, wake_waiting
from node.delivery.senders import DEFAULT_SENDERS, Sender, sender_for
from node.delivery.task import send_wakeup
from node.settings import RemoteNode, Settings

log = logging.getLogger(__name__)


class DestinationProbe:
    """Remembers, per destination that deliveries wait for, whether it answered at the last probe."""

    def __init__(
        self, database: Database, dispatcher: object, settings: Settings, senders: Mapping[str, Sender] = DEFAULT_SENDERS
    ) -> None:
        self.database = database
        self.dispatcher = dispatcher
        self.settings = settings
        self.senders = senders
        self.answered: dict[str, bool] = {}

    def probe_once(self) -> dict[str, list[int]]:
        """Probe every destination deliveries wait for; return ``{destination: delivery ids woken}``."""
        waiting = waiting_destinations(self.database)
        for gone in set(self.answered) - set(waiting):  # nobody waits for it any more
            del self.answered[gone]
        woken: dict[str, list[int]] = {}
        for destination, count in sorted(waiting.items()):
            answered = self._probe(destination)
            if answered is None:
                continue
            before = self.answered.get(destination)
            self.answered[destination] = answered
            if not answered:
                if before is not False:
                    log.warning(
                        "destination %s does not answer; %d delivery(ies) wait for it (probed every %g s)",
                        destination,
                        count,
                        self.settings.delivery_probe_interval_seconds,
                    )
                continue
            if before is True:  # it answered last time too: these failures are not an outage ending
                continue
            ids = wake_waiting(self.database, destination)
            if ids:
                log.info("destination %s answers again: sending the %d delivery(ies) that waited for it", destination, len(ids))
                woken[destination] = ids
                send_wakeup(self.dispatcher, destination, ids, countdown=0.0)
        return woken

    def _probe(self, destination: str) -> bool | None:
        try:
            remote = RemoteNode.parse(destination)
            sender = sender_for(remote, self.senders)
        except (LookupError, ValueError):  # a destination removed from the configuration; not probed
            return None
        try:
            return sender.probe(remote, self.settings)
        except Exception:  # a sender must not raise; one that does is treated as "cannot tell"
            log.exception("probe of %s failed", destination)
            return None
