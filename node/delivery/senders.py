"""Senders: one small class per protocol a destination can name, chosen by the destination's scheme.

A destination is written ``[scheme://]AET@host:port`` (:class:`node.settings.RemoteNode`);
delivery asks :func:`sender_for` for the sender of its scheme and hands it the files, never
knowing which protocol it speaks. A new protocol is one :class:`Sender` subclass and one
entry in :data:`DEFAULT_SENDERS`; :meth:`Sender.probe` is optional (without it, deliveries
to a destination that was down wait out their backoff instead of going when it is back).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import ClassVar

from node.delivery.association import AssociationTimeouts, echo
from node.delivery.items import StoreItem, StoreOutcome
from node.delivery.scu import send_files
from node.settings import DICOM_SCHEME, RemoteNode, Settings


#: A probe gives up on a destination that has not answered within this many seconds per step.
PROBE_TIMEOUT_SECONDS = 5.0


class Sender(abc.ABC):
    """Sends output files to one destination; one outcome per file, in order, never raising for network trouble."""

    #: The destination scheme this sender speaks (``dicom`` for ``dicom://`` and plain ``AET@host:port``).
    scheme: ClassVar[str]

    @abc.abstractmethod
    def send(self, destination: RemoteNode, items: Sequence[StoreItem], settings: Settings) -> list[StoreOutcome]:
        """Send ``items`` to ``destination``; return one :class:`StoreOutcome` per item, same order."""

    def probe(self, destination: RemoteNode, settings: Settings) -> bool | None:
        """Does ``destination`` answer now? True or False; None when this protocol cannot tell.

        Asked every few seconds while deliveries wait for a destination that did not answer;
        must be cheap, quiet and bounded in time, and never raise for network trouble.
        """
        return None


class DicomStoreSender(Sender):
    """DICOM C-STORE over one association per round, proposing only what is sent."""

    scheme = DICOM_SCHEME

    def send(self, destination: RemoteNode, items: Sequence[StoreItem], settings: Settings) -> list[StoreOutcome]:
        return send_files(
            destination,
            items,
            calling_aet=settings.ae_title,
            timeouts=AssociationTimeouts.from_settings(settings),
            max_pdu=settings.max_pdu_size,
        )

    def probe(self, destination: RemoteNode, settings: Settings) -> bool | None:
        """C-ECHO the destination, waiting at most :data:`PROBE_TIMEOUT_SECONDS` for each step."""
        timeouts = AssociationTimeouts.from_settings(settings)
        return echo(
            destination,
            calling_aet=settings.ae_title,
            timeouts=AssociationTimeouts(
                acse=min(timeouts.acse, PROBE_TIMEOUT_SECONDS),
                dimse=min(timeouts.dimse, PROBE_TIMEOUT_SECONDS),
                network=min(timeouts.network, PROBE_TIMEOUT_SECONDS),
            ),
        )


#: Scheme -> sender: what the node can deliver with.
DEFAULT_SENDERS: Mapping[str, Sender] = {DicomStoreSender.scheme: DicomStoreSender()}


def sender_for(destination: RemoteNode, senders: Mapping[str, Sender] = DEFAULT_SENDERS) -> Sender:
    """The sender of ``destination``'s scheme; ``LookupError`` naming the schemes the node speaks."""
    try:
        return senders[destination.scheme]
    except KeyError:
        known = ", ".join(f"{scheme}://" for scheme in sorted(senders))
        raise LookupError(
            f"destination {destination} names the scheme {destination.scheme!r}, which this node cannot send "
            f"with (it speaks {known}); correct CXR_NODE_DESTINATIONS or CXR_NODE_KNOWN_PACS"
        ) from None


def check_destinations(settings: Settings, senders: Mapping[str, Sender] = DEFAULT_SENDERS) -> None:
    """Fail fast, at start-up, on a configured destination whose scheme has no sender."""
    for destination in (*settings.destinations, *settings.known_pacs):
        sender_for(destination, senders)
