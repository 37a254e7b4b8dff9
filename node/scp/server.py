"""The DICOM listener: a pynetdicom Application Entity serving C-ECHO and C-STORE.

Public API (used by ``cxr-node serve`` through :mod:`node.service`)::

    ae = build_application_entity(settings)            # configured, not listening
    handle = start_listener(settings, database, on_instance_stored=callback)
    handle.port                                          # the bound TCP port (settings.port, or
                                                         # the one the OS chose for port 0)
    handle.shutdown()                                    # stop listening, abort open associations

:func:`start_listener` does not block: pynetdicom serves in a background thread, one thread per
association. ``database`` must already be at the schema head (``Database.ensure_schema()``).
``on_instance_stored`` is called with a :class:`node.ingest.StoredInstance` after each new
instance is durable and committed, from the association's thread; keep it short (e.g. wake the
completion scanner).

Memory: pynetdicom assembles each received data set in memory before the C-STORE handler runs
(the handler then writes those bytes to the spool without decoding them), so an association
holds up to one instance in memory at a time. A data set growing past ``max_instance_bytes``
aborts the association while it arrives (:mod:`node.scp.incoming`), a PDU longer than
``max_pdu_size`` is refused after its header, and time limits close connections that
overstay (:mod:`node.scp.limits`). Restrict who may send with ``allowed_calling_aets``.

Settings used: ``ae_title``, ``host``, ``port``, ``require_called_aet``,
``allowed_calling_aets`` (empty: everyone), ``max_pdu_size`` (0: unlimited),
``max_associations``, ``max_instance_bytes``, ``min_free_disk_bytes``, ``dimse_timeout``,
``network_timeout``, ``acse_timeout``, ``pdu_timeout``, ``max_connections_per_peer``, ``data_dir`` (spool under ``settings.spool_dir``),
``database_reserve_bytes``.

Free disk: ``min_free_disk_bytes`` is checked when an association is requested (rejected
transiently), for every C-STORE before anything of the instance is written, and while a data set
arrives (refused with :data:`node.scp.statuses.OUT_OF_RESOURCES_LOW_DISK`). The listener also has
the database keep its disk reserve (:meth:`node.db.Database.keep_disk_reserve`), so that when the
disk fills up anyway the failures can still be recorded.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pynetdicom import AE, _config, evt

from node.db import Database
from node.scp.contexts import supported_contexts
from node.scp.limits import (
    UNREACHABLE_ASSOCIATION_CEILING,
    AssociationSlots,
    ConnectionLimits,
    GuardedAssociationServer,
    GuardedRequestHandler,
    PeerConnections,
)
from node.scp.incoming import IncomingWriter
from node.scp.handlers import (
    InstanceCallback,
    StoreHandler,
    handle_echo,
    log_aborted,
    log_accepted,
    log_rejected,
    make_disk_watermark_check,
)
from node.spool import Spool

if TYPE_CHECKING:
    from node.settings import Settings

log = logging.getLogger(__name__)


def build_application_entity(settings: "Settings") -> AE:
    """A pynetdicom AE configured from ``settings``: contexts, AE title checks, limits, timeouts.

    The association limit is :class:`node.scp.limits.AssociationSlots`, bound by
    :func:`start_listener`. The called AE title check and the calling AE allow-list are pynetdicom's own
    (``AE.require_called_aet``, ``AE.require_calling_aet``); their rejections are listed in
    :mod:`node.scp.statuses`.
    """
    ae = AE(ae_title=settings.ae_title)
    ae.supported_contexts = supported_contexts()
    ae.require_called_aet = settings.require_called_aet
    ae.require_calling_aet = list(settings.allowed_calling_aets)
    ae.maximum_pdu_size = settings.max_pdu_size
    # Established associations are counted by node.scp.limits.AssociationSlots (pynetdicom's
    # own count includes connections that never sent a complete A-ASSOCIATE-RQ).
    ae.maximum_associations = UNREACHABLE_ASSOCIATION_CEILING
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = settings.acse_timeout
    return ae


@dataclass
class ListenerHandle:
    """A running listener. :meth:`shutdown` is idempotent."""

    ae: AE
    server: GuardedAssociationServer
    spool: Spool
    incoming: IncomingWriter
    _stopped: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        """The TCP port the listener is bound to."""
        return int(self.server.server_address[1])

    @property
    def host(self) -> str:
        return str(self.server.server_address[0])

    def shutdown(self) -> None:
        """Stop accepting associations, abort the open ones and close the socket."""
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()  # stop accepting and close the listening socket
        # Abort what is in flight: an unanswered C-STORE is not stored and the sender retries.
        # Rejected associations that wait for the peer to close are left to end by themselves
        # (aborting them there is an invalid DUL event).
        for assoc in self.ae.active_associations:
            if assoc.is_established:
                assoc.abort()
        self.incoming.close()
        log.info("DICOM listener on port %d stopped", self.port)


def start_listener(
    settings: "Settings",
    database: Database,
    *,
    on_instance_stored: InstanceCallback | None = None,
) -> ListenerHandle:
    """Start the listener in the background and return its handle (see the module docstring).

    Creates the spool directory and removes ``.part`` files an interrupted write left behind;
    creates the database's disk reserve (a SQLite file database only).
    Raises ``OSError`` when the address cannot be bound (e.g. the port is in use).
    """
    if _config.STORE_RECV_CHUNKED_DATASET:
        # The C-STORE handler reads the received bytes from memory (Event.encoded_dataset's
        # buffer); in chunked mode pynetdicom puts them in a temporary file instead.
        raise ValueError(
            "pynetdicom._config.STORE_RECV_CHUNKED_DATASET is set; the listener needs it False "
            "(it writes the received bytes into the spool itself)"
        )
    spool = Spool(settings.spool_dir)
    spool.ensure_root()
    spool.remove_partials()
    database.keep_disk_reserve(settings.database_reserve_bytes)
    incoming = IncomingWriter(
        spool.root, max_data_bytes=settings.max_instance_bytes, min_free_bytes=settings.min_free_disk_bytes
    )
    ae = build_application_entity(settings)
    handlers: list[tuple] = [
        *incoming.handlers(),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, StoreHandler(settings, database, spool, on_instance_stored, incoming)),
        (evt.EVT_REJECTED, log_rejected),
        (evt.EVT_ACCEPTED, log_accepted),
        (evt.EVT_ABORTED, log_aborted),
    ]
    if settings.min_free_disk_bytes > 0:
        handlers.append((evt.EVT_REQUESTED, make_disk_watermark_check(spool, settings.min_free_disk_bytes)))
    handlers.append((evt.EVT_REQUESTED, AssociationSlots(settings.max_associations)))
    server = ae.make_server(
        (settings.host, settings.port),
        evt_handlers=handlers,
        server_class=GuardedAssociationServer,
        request_handler=GuardedRequestHandler,
        limits=ConnectionLimits.from_settings(settings),
        peers=PeerConnections(settings.max_connections_per_peer),
    )
    # As AE.start_server(block=False) does, with our server class: serve in a daemon thread.
    threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{settings.port}", daemon=True).start()
    ae._servers.append(server)  # AssociationServer.shutdown() removes it again
    handle = ListenerHandle(ae, server, spool, incoming)
    free = spool.free_bytes()
    log.info(
        "DICOM listener %s on %s:%d (spool %s, %d bytes free, watermark %d)",
        settings.ae_title,
        handle.host,
        handle.port,
        spool.root,
        free,
        settings.min_free_disk_bytes,
    )
    if free < settings.min_free_disk_bytes:
        log.warning("free disk is already under the watermark: associations will be rejected until space is freed")
    return handle
