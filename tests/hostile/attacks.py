"""The moves attacks are made of: send a C-STORE of given bytes, send raw PDUs, wait for the answer.

Each returns what the listener did as a :class:`tests.support.hostile_peer.Answer` (or, for a
processed instance, ``(store status, result status, reason)``), from a loopback address of its
own (:meth:`CaseContext.source`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.hostile.cases import CaseContext
from tests.support.hostile_peer import (
    EXPLICIT_VR_LE,
    RELEASE_RQ,
    Answer,
    RawAssociation,
    associate_rq,
    connect,
    next_answer,
)
from training.dicom_export import DX_FOR_PRESENTATION

#: Seconds an attack waits for a DIMSE answer to a data set it sent.
ANSWER_TIMEOUT = 30.0


@dataclass(frozen=True)
class Store:
    """A C-STORE to make: the data set bytes and what the request says about them."""

    data: bytes
    sop_instance_uid: str
    study_instance_uid: str = ""
    sop_class_uid: str = DX_FOR_PRESENTATION  #: Affected SOP Class UID of the request
    transfer_syntax: str = EXPLICIT_VR_LE  #: the only one proposed
    context_sop_class: str | None = None  #: abstract syntax proposed; the request's by default


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def send_store(ctx: CaseContext, store: Store) -> Answer:
    """Associate, send the C-STORE, read the answer, release; note a Success as stored."""
    abstract = store.context_sop_class or store.sop_class_uid
    peer = RawAssociation.open(ctx.port, [(abstract, [store.transfer_syntax])], source=ctx.source())
    try:
        try:
            peer.send_c_store(peer.context_for(abstract), store.sop_class_uid, store.sop_instance_uid, store.data)
        except OSError:
            pass  # cut off while sending: the answer (an A-ABORT) is read below
        answer = next_answer(peer.sock, ANSWER_TIMEOUT)
        if answer.kind == "status" and answer.values == (0x0000,):
            ctx.note_stored(store.sop_instance_uid)
            try:
                peer.sock.sendall(RELEASE_RQ)
                next_answer(peer.sock, 5)
            except OSError:
                pass
        return answer
    finally:
        _close(peer.sock)


def store_attack(build: Callable[[], Store]) -> Callable[[CaseContext], Answer]:
    """An attack that builds its C-STORE when it runs (fresh UIDs each run) and sends it."""

    def attack(ctx: CaseContext) -> Answer:
        return send_store(ctx, build())

    return attack


def processed_attack(build: Callable[[], Store], timeout: float = 90.0) -> Callable[[CaseContext], Any]:
    """Send the C-STORE; on Success wait until its study is processed and return its result.

    Observed as ``(store status, result status, reason)``: the first result row of the instance
    (every mask policy gets the same for a data fault), ``(status, None, None)`` when not stored.
    """

    def attack(ctx: CaseContext) -> Any:
        store = build()
        answer = send_store(ctx, store)
        if answer.kind != "status" or answer.values != (0x0000,):
            return (answer, None, None)
        report = ctx.wait_for_report(store.study_instance_uid, "done", timeout)
        if report is None:
            return (0x0000, None, "study never reported")
        rows = [r for r in report.get("results", []) if r["sop_instance_uid"] == store.sop_instance_uid]
        if not rows:
            return (0x0000, None, f"study {report['study']['state']}, no result for the instance")
        return (0x0000, rows[0]["status"], rows[0]["reason"])

    return attack


def raw_attack(chunks: Callable[[], list[bytes]], timeout: float) -> Callable[[CaseContext], Answer]:
    """Connect, send ``chunks()`` one after another, and report the first answer within ``timeout``.

    The answer to an A-ASSOCIATE-RQ in the chunks is read before the next chunk is sent, so a
    PDU that follows an association goes into an established one.
    """

    def attack(ctx: CaseContext) -> Answer:
        sock = connect(ctx.port, source=ctx.source())
        try:
            pieces = chunks()
            for index, piece in enumerate(pieces):
                try:
                    sock.sendall(piece)
                except OSError:
                    break
                if piece[:1] == b"\x01" and index < len(pieces) - 1:
                    answer = next_answer(sock, timeout)
                    if answer.kind != "accepted":
                        return answer
            return next_answer(sock, timeout)
        finally:
            _close(sock)

    return attack


def request_attack(request: Callable[[], bytes], timeout: float = 10.0) -> Callable[[CaseContext], Answer]:
    """Send one A-ASSOCIATE-RQ (as bytes) and report the answer; release when it was accepted."""

    def attack(ctx: CaseContext) -> Answer:
        sock = connect(ctx.port, source=ctx.source())
        try:
            sock.sendall(request())
            answer = next_answer(sock, timeout)
            if answer.kind == "accepted":
                try:
                    sock.sendall(RELEASE_RQ)
                    next_answer(sock, 5)
                except OSError:
                    pass
            return answer
        finally:
            _close(sock)

    return attack


def dx_request(**kwargs: Any) -> bytes:
    """An A-ASSOCIATE-RQ for DX for Presentation in Explicit VR Little Endian (keywords to ``associate_rq``)."""
    return associate_rq([(DX_FOR_PRESENTATION, [EXPLICIT_VR_LE])], **kwargs)
