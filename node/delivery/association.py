"""The one place the node opens an outgoing DICOM association (delivery, probes, ``cxr-node echo``, the demo).

Every outgoing association proposes exactly the presentation contexts it will use (PS3.8
7.1.1.13) with the node's timeouts, so a PACS that refuses associations proposing every SOP
class still accepts the node's.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.settings import RemoteNode, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssociationTimeouts:
    """Seconds to wait for the association (ACSE), each DIMSE answer and any network read."""

    acse: float = 30.0
    dimse: float = 60.0
    network: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "AssociationTimeouts":
        return cls(acse=settings.acse_timeout, dimse=settings.dimse_timeout, network=settings.network_timeout)


def open_association(
    remote: RemoteNode,
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    calling_aet: str,
    timeouts: AssociationTimeouts = AssociationTimeouts(),
    max_pdu: int = 0,
    log_level: int = logging.INFO,
) -> Association:
    """Request an association with ``remote`` proposing ``contexts``; return it, established or not.

    Parameters
    ----------
    remote:
        The peer (``AET@host:port``); its AE title is the called AE title.
    contexts:
        ``(abstract syntax UID, [transfer syntax UIDs])`` pairs, one presentation context each.
    calling_aet:
        The node's own AE title as the peer will see it.
    timeouts, max_pdu:
        ACSE, DIMSE and network timeouts; the maximum PDU length the node receives (0: no limit).
    log_level:
        Level of the "associating" line (probes, repeated every few seconds, log it at DEBUG).

    The caller checks ``is_established`` (a refused connection, an A-ASSOCIATE-RJ or a timeout
    give an association that is not) and releases it when done.
    """
    if not contexts:
        raise ValueError("an association needs at least one presentation context; name what will be sent")
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    for abstract_syntax, transfer_syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, list(transfer_syntaxes))
    log.log(log_level, "associating %s -> %s with %d context(s)", calling_aet, remote, len(contexts))
    return ae.associate(remote.host, remote.port, ae_title=remote.ae_title, max_pdu=max_pdu)


def echo(remote: RemoteNode, *, calling_aet: str, timeouts: AssociationTimeouts = AssociationTimeouts()) -> bool:
    """C-ECHO ``remote``; True when it answered Success. Never raises for network trouble.

    A plain TCP connection is tried first: a peer that is down then costs no association,
    and a probe repeated every few seconds writes no pynetdicom error lines.
    """
    try:
        with socket.create_connection((remote.host, remote.port), timeout=timeouts.acse):
            pass
    except OSError as exc:
        log.debug("C-ECHO %s: no connection (%s)", remote, exc)
        return False
    assoc = open_association(
        remote,
        [(Verification, DEFAULT_TRANSFER_SYNTAXES)],
        calling_aet=calling_aet,
        timeouts=timeouts,
        log_level=logging.DEBUG,
    )
    if not assoc.is_established:
        log.debug("C-ECHO %s: association not established", remote)
        return False
    try:
        answer = assoc.send_c_echo()
        return getattr(answer, "Status", None) == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()
