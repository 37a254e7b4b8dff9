"""The one place the node opens an outgoing DICOM association (delivery, ``cxr-node echo``, the demo).

Every outgoing association proposes exactly the presentation contexts it will use (PS3.8
7.1.1.13) with the node's timeouts, so a PACS that refuses associations proposing every SOP
class still accepts the node's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pynetdicom import AE
from pynetdicom.association import Association

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
    log.info("associating %s -> %s with %d context(s)", calling_aet, remote, len(contexts))
    return ae.associate(remote.host, remote.port, ae_title=remote.ae_title, max_pdu=max_pdu)
