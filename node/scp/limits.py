"""Connection limits of the listener: no peer can hold a slot, a thread or memory hostage.

pynetdicom reads each PDU with blocking ``recv`` calls on a socket without a timeout and keeps
the whole PDU in memory (``DULServiceProvider._read_pdu_data``): a peer that sends a PDU header
and goes silent, or trickles an A-ASSOCIATE-RQ one byte at a time, blocks the DUL thread for
ever, so neither the ARTIM timer (PS3.8 9.1.5) nor the network timeout can close the connection;
a P-DATA-TF header announcing 4 GiB makes it buffer 4 GiB. pynetdicom also counts every open
connection, established or not, against ``AE.maximum_associations``.

This module keeps pynetdicom's state machine and replaces only the transport under it:

* :class:`GuardedSocket`, an :class:`~pynetdicom.transport.AssociationSocket` whose ``recv``
  never blocks past a deadline and whose ``ready`` closes a connection that overstays:

  - until the association is established, ``acse_timeout`` from the TCP connection, bytes or
    no bytes (PS3.8 9.1.5 ARTIM: the acceptor closes the transport connection);
  - between PDUs, ``network_timeout`` of silence from the peer;
  - for one whole PDU, ``pdu_timeout`` from its first byte, and ``network_timeout`` of silence
    inside it;
  - a P-DATA-TF PDU longer than the Maximum Length we announced (PS3.8 D.1, Maximum Length
    Sub-Item; ``max_pdu_size``) and any other PDU longer than :data:`MAX_CONTROL_PDU_BYTES` is
    refused after its 6-byte header (PS3.8 9.3.1), before its body is read: A-ABORT with source
    service-provider, reason invalid-PDU-parameter-value (PS3.8 Table 9-26), then close.
* :class:`GuardedAssociationServer`, the threaded pynetdicom server, which refuses a TCP
  connection at once when its peer address already has ``max_connections_per_peer`` open.
* :class:`AssociationSlots`, the ``EVT_REQUESTED`` check that counts only associations whose
  A-ASSOCIATE-RQ arrived complete (and are not rejected, released or aborted) against
  ``max_associations``.

Every close is one log line with the peer address, the limit and its setting; no PDU content.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pynetdicom import evt
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.scp import statuses

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

    from node.settings import Settings

log = logging.getLogger(__name__)

#: Longest PDU other than P-DATA-TF accepted (A-ASSOCIATE-RQ with many presentation contexts and
#: a user identity token fits with room to spare; A-RELEASE and A-ABORT are 4 bytes).
MAX_CONTROL_PDU_BYTES = 1024 * 1024
#: Room for the command set and PDV headers in a P-DATA-TF when no Maximum Length is announced
#: (``max_pdu_size`` 0): such a PDU may then be as long as the largest instance plus this.
PDATA_OVERHEAD_BYTES = 64 * 1024
_P_DATA_TF = 0x04
_PDU_HEADER = struct.Struct(">BBL")  # PDU-type, reserved, PDU-length (PS3.8 9.3.1)
#: PS3.8 Table 9-26: A-ABORT source 2 (DICOM UL service-provider), reason 6
#: (invalid-PDU-parameter-value); reason 0 (reason-not-specified).
ABORT_SOURCE_PROVIDER = 0x02
ABORT_REASON_INVALID_PARAMETER = 0x06
ABORT_REASON_NOT_SPECIFIED = 0x00


@dataclass(frozen=True)
class ConnectionLimits:
    """The time and size limits of one connection, in seconds and bytes (see the module docstring)."""

    acse_timeout: float
    network_timeout: float
    pdu_timeout: float
    max_pdata_bytes: int

    @classmethod
    def from_settings(cls, settings: "Settings") -> "ConnectionLimits":
        """Limits from ``acse_timeout``, ``network_timeout``, ``pdu_timeout``, ``max_pdu_size``."""
        max_pdata = settings.max_pdu_size or settings.max_instance_bytes + PDATA_OVERHEAD_BYTES
        return cls(settings.acse_timeout, settings.network_timeout, settings.pdu_timeout, max_pdata)


class GuardedSocket(AssociationSocket):
    """The acceptor's socket with deadlines and PDU length checks (see the module docstring).

    Parameters
    ----------
    plain:
        The socket pynetdicom's request handler created for the connection; this one takes its
        place (its transport-connection indication is already queued for the state machine).
    limits:
        The connection's limits.
    on_close:
        Called once, with this socket, when the connection's TCP socket is closed.
    """

    def __init__(
        self, plain: AssociationSocket, limits: ConnectionLimits, on_close: Callable[["GuardedSocket"], None]
    ) -> None:
        # Take over the connected socket rather than wrapping it again (a second
        # AssociationSocket would queue a second transport-connection indication, Evt5).
        self.__dict__.update(plain.__dict__)
        self.limits = limits
        self._on_close = on_close
        self._raw: socket.socket = plain.socket  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._released = False
        self.accepted_at = time.monotonic()
        #: When the peer last completed a PDU or we last sent one: the start of "between PDUs".
        self.last_activity = self.accepted_at
        self.closed_reason: str | None = None
        self._abort_requested: str | None = None
        self._pdu_pending = False  # a PDU header was read, its body not yet
        self._pdu_started = self.accepted_at
        peer = self._raw.getpeername()
        self.peer_address = str(peer[0])
        self.peer = f"{peer[0]}:{peer[1]}"

    # --- state -------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        """Whether the TCP connection is still open."""
        return self._raw.fileno() != -1

    def _established(self) -> bool:
        assoc = self.assoc
        return bool(assoc.is_established or assoc.is_rejected or assoc.is_released or assoc.is_aborted)

    def request_abort(self, reason: str) -> None:
        """Abort the association from any thread: the DUL thread sends A-ABORT and closes.

        Used from event handlers (which run in the DUL thread while it decodes a PDU, where
        closing at once would confuse pynetdicom's state machine).
        """
        self._abort_requested = reason

    def _drop(self, reason: str, *, abort_reason: int | None = None) -> None:
        """Close the TCP connection now (once), after an A-ABORT when ``abort_reason`` is given."""
        with self._lock:
            if self.closed_reason is not None:
                return
            self.closed_reason = reason
        log.warning("connection from %s closed: %s", self.peer, reason)
        if abort_reason is not None:
            pdu = A_ABORT_RQ()
            pdu.source = ABORT_SOURCE_PROVIDER
            pdu.reason_diagnostic = abort_reason
            try:
                self._raw.settimeout(1.0)
                self._raw.sendall(pdu.encode())
            except OSError:
                pass  # the peer is gone or not reading; closing is what matters
        self.socket = None
        self._is_connected = False
        self._shutdown_raw()

    def _shutdown_raw(self) -> None:
        try:
            self._raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._raw.close()
        with self._lock:
            if self._released:
                return
            self._released = True
        self._on_close(self)

    def _shutdown_socket(self) -> None:
        """pynetdicom's close paths (AssociationSocket.close, AA-4, AA-5, AR-5) end here."""
        self._shutdown_raw()

    def _overstay(self, now: float) -> tuple[str, int | None] | None:
        """Why the connection must close now, with the A-ABORT reason to send; ``None`` if it may stay."""
        if self._abort_requested is not None:
            return self._abort_requested, ABORT_REASON_NOT_SPECIFIED
        if not self._established():
            if now - self.accepted_at > self.limits.acse_timeout:
                return f"no association within {self.limits.acse_timeout:g} s (CXR_NODE_ACSE_TIMEOUT)", None
            return None
        if self.assoc.is_established and now - self.last_activity > self.limits.network_timeout:
            return (
                f"silent for {self.limits.network_timeout:g} s between PDUs (CXR_NODE_NETWORK_TIMEOUT)",
                ABORT_REASON_NOT_SPECIFIED,
            )
        return None

    # --- pynetdicom's transport interface -------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether a PDU can be read; closes the connection when it overstays (then ``False``)."""
        if self.socket is None:
            return False
        overstay = self._overstay(time.monotonic())
        if overstay is not None:
            self._drop(overstay[0], abort_reason=overstay[1])
            self.event_queue.put("Evt17")  # transport connection closed (PS3.8 Table 9-10)
            return False
        return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (a PDU header, then its body) within the PDU's deadlines.

        Returns fewer bytes when the connection is closed meanwhile; pynetdicom's DUL then
        signals the closed transport connection (Evt17) itself.
        """
        data = bytearray()
        if self.socket is None:
            return data
        now = time.monotonic()
        header = nr_bytes == _PDU_HEADER.size and not self._pdu_pending
        if header:
            self._pdu_started = now
        deadline = self._pdu_started + self.limits.pdu_timeout
        if not self._established():
            deadline = min(deadline, self.accepted_at + self.limits.acse_timeout)
        while len(data) < nr_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._drop(self._deadline_reason(), abort_reason=self._abort_reason_for_timeout())
                return data
            try:
                self._raw.settimeout(min(remaining, self.limits.network_timeout))
                chunk = self._raw.recv(min(65536, nr_bytes - len(data)))
            except TimeoutError:
                if time.monotonic() < deadline:
                    reason = f"silent for {self.limits.network_timeout:g} s inside a PDU (CXR_NODE_NETWORK_TIMEOUT)"
                else:
                    reason = self._deadline_reason()
                self._drop(reason, abort_reason=self._abort_reason_for_timeout())
                return data
            except OSError:
                return data  # reset by the peer, or closed here meanwhile
            if not chunk:
                return data
            data += chunk
        if header:
            self._check_header(data)
        else:
            self._pdu_pending = False
            self.last_activity = time.monotonic()
        return data

    def _check_header(self, data: bytearray) -> None:
        pdu_type, _reserved, length = _PDU_HEADER.unpack(bytes(data))
        self._pdu_pending = True
        limit = self.limits.max_pdata_bytes if pdu_type == _P_DATA_TF else MAX_CONTROL_PDU_BYTES
        setting = " (CXR_NODE_MAX_PDU_SIZE)" if pdu_type == _P_DATA_TF else ""
        if length > limit:
            # PS3.8 D.1: a P-DATA-TF longer than the announced Maximum Length is a protocol
            # error; refused before its body is read, so it is never held in memory.
            self._drop(
                f"PDU type 0x{pdu_type:02X} of {length} bytes is longer than the limit of {limit}{setting}",
                abort_reason=ABORT_REASON_INVALID_PARAMETER,
            )

    def _deadline_reason(self) -> str:
        if not self._established() and self.accepted_at + self.limits.acse_timeout <= time.monotonic():
            return f"no association within {self.limits.acse_timeout:g} s (CXR_NODE_ACSE_TIMEOUT)"
        return f"a PDU took longer than {self.limits.pdu_timeout:g} s (CXR_NODE_PDU_TIMEOUT)"

    def _abort_reason_for_timeout(self) -> int | None:
        # Before the association exists the acceptor just closes (PS3.8 9.1.5, AA-2);
        # afterwards the peer is told (A-ABORT, reason not specified).
        return ABORT_REASON_NOT_SPECIFIED if self.assoc.is_established else None

    def send(self, bytestream: bytes) -> None:
        """Send, and count it as activity (the peer may then be silent while it answers)."""
        super().send(bytestream)
        self.last_activity = time.monotonic()


def abort_association(assoc: "Association", reason: str) -> bool:
    """Ask the association's guarded socket to abort it (A-ABORT, close); return whether it could.

    Safe to call from pynetdicom event handlers in the DUL thread (e.g. ``EVT_PDU_RECV``).
    """
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    if isinstance(sock, GuardedSocket):
        sock.request_abort(reason)
        return True
    return False


class PeerConnections:
    """Open TCP connections per peer address, with a ceiling (``max_connections_per_peer``)."""

    def __init__(self, max_per_peer: int) -> None:
        self.max_per_peer = max_per_peer
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; ``False`` (not counted) when at the ceiling."""
        with self._lock:
            count = self._open.get(address, 0)
            if count >= self.max_per_peer:
                return False
            self._open[address] = count + 1
            return True

    def release(self, address: str) -> None:
        """A connection from ``address`` closed."""
        with self._lock:
            count = self._open.get(address, 0) - 1
            if count > 0:
                self._open[address] = count
            else:
                self._open.pop(address, None)

    def count(self, address: str) -> int:
        """Open connections from ``address``."""
        with self._lock:
            return self._open.get(address, 0)


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's request handler, with a :class:`GuardedSocket` under the association."""

    server: "GuardedAssociationServer"

    def _create_association(self) -> "Association":
        assoc = super()._create_association()
        plain = assoc.dul.socket
        assoc.dul.socket = GuardedSocket(plain, self.server.limits, self.server.connection_closed)
        return assoc


class GuardedAssociationServer(ThreadedAssociationServer):
    """The threaded pynetdicom server with per-peer connection counting and guarded sockets.

    Made by ``AE.make_server(address, ..., server_class=GuardedAssociationServer,
    request_handler=GuardedRequestHandler, limits=..., peers=...)``.
    """

    def __init__(self, *args: Any, limits: ConnectionLimits, peers: PeerConnections, **kwargs: Any) -> None:
        self.limits = limits
        self.peers = peers
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse (close at once) a connection from a peer already at its ceiling."""
        address = str(client_address[0])
        if self.peers.admit(address):
            return True
        log.warning(
            "connection from %s:%s refused: %d connections from this address are open "
            "(CXR_NODE_MAX_CONNECTIONS_PER_PEER)",
            address,
            client_address[1],
            self.peers.max_per_peer,
        )
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to its association thread.

        Creating and starting the association is quick, so it is done here in the accepting
        thread rather than in one more thread per connection (the association has its own);
        the per-peer count is then exact when the next connection is accepted.
        """
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.peers.release(str(client_address[0]))
            raise

    def connection_closed(self, sock: GuardedSocket) -> None:
        """A guarded socket closed: its peer has one connection less."""
        self.peers.release(sock.peer_address)


class AssociationSlots:
    """``EVT_REQUESTED`` check: at most ``max_associations`` associations hold a slot.

    A slot is taken when a complete A-ASSOCIATE-RQ arrives and held until the association is
    rejected, released or aborted or its connection closes; a connection that never completes
    its request holds none. Beyond the limit the request is rejected with
    :data:`node.scp.statuses.REJECT_TOO_MANY_ASSOCIATIONS` (PS3.8 Table 9-21, rejected-transient,
    local-limit-exceeded), so the sender retries later.
    """

    def __init__(self, max_associations: int) -> None:
        self.max_associations = max_associations
        self._holders: list["Association"] = []
        self._lock = threading.Lock()

    @staticmethod
    def _holds(assoc: "Association") -> bool:
        if assoc.is_rejected or assoc.is_released or assoc.is_aborted:
            return False
        sock = assoc.dul.socket
        return not isinstance(sock, GuardedSocket) or sock.is_open

    def held(self) -> int:
        """How many slots are held now."""
        with self._lock:
            self._holders = [a for a in self._holders if self._holds(a)]
            return len(self._holders)

    def take(self, assoc: "Association") -> bool:
        """Take a slot for ``assoc``; ``False`` when all are held."""
        with self._lock:
            self._holders = [a for a in self._holders if self._holds(a)]
            if len(self._holders) >= self.max_associations:
                return False
            self._holders.append(assoc)
            return True

    def __call__(self, event: "Event") -> None:
        assoc = event.assoc
        if assoc.is_rejected or assoc.is_aborted:
            return  # an earlier EVT_REQUESTED check already answered
        if self.take(assoc):
            return
        reject = statuses.REJECT_TOO_MANY_ASSOCIATIONS
        log.warning(
            "rejecting association from %s:%s: %d associations are established (CXR_NODE_MAX_ASSOCIATIONS); answered %s",
            assoc.requestor.address,
            assoc.requestor.port,
            self.max_associations,
            statuses.rejection_name(reject.result, reject.source, reject.reason),
        )
        assoc.acse.send_reject(reject.result, reject.source, reject.reason)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()


#: pynetdicom's own association count includes connections that never completed a request;
#: :class:`AssociationSlots` does the counting, so pynetdicom's ceiling is set out of reach.
UNREACHABLE_ASSOCIATION_CEILING = 1 << 30

__all__ = [
    "AssociationSlots",
    "ConnectionLimits",
    "GuardedAssociationServer",
    "GuardedSocket",
    "PeerConnections",
    "abort_association",
]
