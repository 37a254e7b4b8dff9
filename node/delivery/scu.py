"""C-STORE SCU: send output files to one destination over one association.

A PACS may reject an association that proposes every storage SOP class (Orthanc, for one,
refuses a SEG from ``storescu`` unless it proposes only what it sends). So the
association proposes exactly what is sent: one presentation context per distinct
(SOP Class UID, Transfer Syntax UID) pair of the files, nothing else (PS3.8 7.1.1.13).

Statuses (PS3.4 Annex B.2.3, PS3.7 Annex C): ``0x0000`` Success and the Storage warnings
``0xB000`` (coercion of data elements), ``0xB007`` (data set does not match SOP class) and
``0xB006`` (elements discarded) mean the object was stored; every other answer, and no answer
at all, is a failure of that object.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydicom.uid import UID

from node.delivery.association import AssociationTimeouts, open_association
from node.delivery.items import STATUS_SUCCESS, StoreItem, StoreOutcome, is_stored_status
from node.settings import RemoteNode

log = logging.getLogger(__name__)

#: PS3.8 9.3.2.2: at most 128 presentation contexts (odd IDs 1..255) in one association.
MAX_PRESENTATION_CONTEXTS = 128


#: Start of the error of an object that got no C-STORE response at all.
NO_RESPONSE = "no C-STORE response"


def presentation_contexts(items: Sequence[StoreItem]) -> list[tuple[str, str]]:
    """The distinct (SOP Class UID, Transfer Syntax UID) pairs of ``items``, in first-seen order.

    Raises ``ValueError`` when they do not fit one association (128 contexts).
    """
    pairs = list(dict.fromkeys((item.sop_class_uid, item.transfer_syntax_uid) for item in items))
    if len(pairs) > MAX_PRESENTATION_CONTEXTS:
        raise ValueError(
            f"{len(pairs)} distinct SOP class / transfer syntax pairs do not fit one association "
            f"(at most {MAX_PRESENTATION_CONTEXTS}); send them in smaller batches"
        )
    return pairs


def _uid_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def send_files(
    destination: RemoteNode,
    items: Sequence[StoreItem],
    *,
    calling_aet: str,
    timeouts: AssociationTimeouts = AssociationTimeouts(),
    max_pdu: int = 0,
) -> list[StoreOutcome]:
    """C-STORE ``items`` to ``destination`` in one association; one outcome per item, same order.

    Only the (SOP class, transfer syntax) pairs of ``items`` are proposed. An item whose
    context the destination rejected fails with a message naming both UIDs; a failed
    association fails every item with the reason (refused connection, A-ASSOCIATE-RJ with
    its result/source/reason, abort). This function does not raise for network trouble.
    """
    if not items:
        return []
    pairs = presentation_contexts(items)
    assoc = open_association(
        destination,
        [(sop_class, [syntax]) for sop_class, syntax in pairs],
        calling_aet=calling_aet,
        timeouts=timeouts,
        max_pdu=max_pdu,
    )
    if not assoc.is_established:
        reason = association_failure(assoc, destination)
        log.warning("delivery to %s failed: %s", destination, reason)
        unreachable = not accepted_no_context(assoc)
        return [StoreOutcome(item.sop_instance_uid, None, reason, unreachable=unreachable) for item in items]

    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    outcomes: list[StoreOutcome] = []
    peer_gone = False
    try:
        for item in items:
            outcome = _store_one(assoc, item, accepted, destination)
            outcomes.append(outcome)
            if not assoc.is_established:
                break
            if outcome.status is None and outcome.error and outcome.error.startswith(NO_RESPONSE):
                # No answer at all: the peer is gone or hung. pynetdicom may still call the
                # association established for a moment; waiting the DIMSE timeout once more for
                # each remaining object would hold them for minutes. Abort and retry later.
                assoc.abort()
                outcomes[-1] = StoreOutcome(outcome.sop_instance_uid, None, outcome.error, unreachable=True)
                peer_gone = True
                break
    finally:
        if assoc.is_established:
            assoc.release()
    lost = f"association with {destination} ended before this object was sent (aborted or released by the peer)"
    outcomes += [StoreOutcome(item.sop_instance_uid, None, lost, unreachable=peer_gone) for item in items[len(outcomes) :]]
    return outcomes


def _store_one(assoc, item: StoreItem, accepted: set[tuple[str, str]], destination: RemoteNode) -> StoreOutcome:  # type: ignore[no-untyped-def]
    if (item.sop_class_uid, item.transfer_syntax_uid) not in accepted:
        return StoreOutcome(
            item.sop_instance_uid,
            None,
            f"{destination} rejected the presentation context for {_uid_name(item.sop_class_uid)} "
            f"in {_uid_name(item.transfer_syntax_uid)}; configure the destination to accept it",
        )
    try:
        answer = assoc.send_c_store(item.path)
    except (OSError, ValueError, AttributeError) as exc:  # unreadable file, context mismatch in the file
        return StoreOutcome(item.sop_instance_uid, None, f"could not send {item.path.name}: {exc}")
    status = answer.get("Status") if answer is not None else None
    if status is None:
        return StoreOutcome(
            item.sop_instance_uid, None, f"{NO_RESPONSE} from {destination} (timeout, abort or invalid answer)"
        )
    status = int(status)
    if is_stored_status(status):
        if status != STATUS_SUCCESS:
            log.info("%s stored %s with warning 0x%04X", destination, item.sop_instance_uid, status)
        return StoreOutcome(item.sop_instance_uid, status)
    comment = answer.get("ErrorComment")
    detail = f": {comment}" if comment else ""
    return StoreOutcome(item.sop_instance_uid, status, f"{destination} answered C-STORE status 0x{status:04X}{detail}")


def accepted_no_context(assoc) -> bool:  # type: ignore[no-untyped-def]
    """True when the peer answered the association request but accepted none of its contexts.

    The one association failure that is about what was proposed rather than about the peer
    being unreachable (refused, rejected, no answer).
    """
    primitive = getattr(assoc.acceptor, "primitive", None)
    return not assoc.is_rejected and primitive is not None and getattr(primitive, "result", None) == 0x00


def association_failure(assoc, destination: RemoteNode) -> str:  # type: ignore[no-untyped-def]
    """Why an association with ``destination`` was not established, in words (result, source, reason)."""
    primitive = getattr(assoc.acceptor, "primitive", None)
    if assoc.is_rejected and primitive is not None:
        return (
            f"{destination} rejected the association ({primitive.result_str}, source: {primitive.source_str}, "
            f"reason: {primitive.reason_str})"
        )
    if accepted_no_context(assoc):
        return f"{destination} accepted none of the proposed presentation contexts"
    if assoc.is_aborted and primitive is not None:
        return f"{destination} aborted the association"
    return f"could not associate with {destination}: connection refused, unreachable or no answer in time"
