"""PDU abuse and slow or idle sockets: upper-layer protocol faults (PS3.8) on raw sockets.

The answers come from PS3.8 and the listener's limits (:mod:`node.scp.limits`):

* a PDU longer than we accept is refused after its 6-byte header: A-ABORT, source 2
  (service-provider), reason 6 (invalid-PDU-parameter-value), PS3.8 Table 9-26;
* a PDU of unknown type or one that does not fit the state (PS3.8 Table 9-10): before the
  association (Sta2) action AA-1, A-ABORT with source 0 (service-user), reason 0; in an
  established association (Sta6) AA-8, A-ABORT with source 2, reason 0;
* A-ASSOCIATE-RQ fields: A-ASSOCIATE-RJ per PS3.8 Table 9-21, or context results per
  Table 9-18 (3: abstract syntax not supported, 4: transfer syntaxes not supported);
* a C-STORE whose SOP Class is not its context's: 0x0122 (PS3.7 C.5.3);
* silence and trickling: closed without a word before the association is established (ARTIM,
  ``CXR_NODE_ACSE_TIMEOUT``), A-ABORT (2, 0) after (``CXR_NODE_NETWORK_TIMEOUT``,
  ``CXR_NODE_PDU_TIMEOUT``); a connection past ``CXR_NODE_MAX_CONNECTIONS_PER_PEER`` from one
  address is closed at once.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

from pydicom.uid import ExplicitVRLittleEndian

from node.scp import statuses
from tests.hostile.attacks import Store, dx_request, raw_attack, request_attack, store_attack
from tests.hostile.cases import PDU, SLOW, Aborted, CaseContext, Closed, Contexts, Ended, HostileCase, Logged, Rejected, Status
from tests.hostile.datasets import SOP_CLASS_UID, radiograph, text_element
from tests.support.hostile_peer import (
    COMMAND_LAST,
    DATA,
    DATA_LAST,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    RELEASE_RQ,
    Answer,
    RawAssociation,
    associate_rq,
    c_store_rq,
    connect,
    next_answer,
    p_data_tf,
    pdu,
)
from training.dicom_export import CR_IMAGE, DX_FOR_PRESENTATION

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
VERIFICATION = "1.2.840.10008.1.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
#: PS3.8 Table 9-26 sources and reasons as the listener sends them.
USER, PROVIDER = 0x00, 0x02
NOT_SPECIFIED, INVALID_PARAMETER = 0x00, 0x06
TOO_LONG = Aborted(PROVIDER, INVALID_PARAMETER, within=5.0)
AA_1 = Aborted(USER, NOT_SPECIFIED, within=5.0)  #: PS3.8 Sta2 action AA-1
AA_8 = Aborted(PROVIDER, NOT_SPECIFIED, within=5.0)  #: PS3.8 Sta6 action AA-8
MIB = 1024 * 1024
#: Seconds allowed past a time limit before a connection must be gone (a loaded 2-core machine
#: runs 16 attacks at once; the limits themselves are 3 to 5 s).
SLACK = 4.0


def _header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def in_association(*after: bytes | Callable[[], bytes], timeout: float = 10.0) -> Callable[[CaseContext], Answer]:
    """Associate (DX, Explicit VR LE), then send ``after``; the answer to the last of it."""
    return raw_attack(lambda: [dx_request(), *[a() if callable(a) else a for a in after]], timeout)


def before_association(*chunks: bytes, timeout: float = 10.0) -> Callable[[CaseContext], Answer]:
    """Send ``chunks`` on a fresh connection with no association; the first answer."""
    return raw_attack(lambda: list(chunks), timeout)


def _command_pdv(context_id: int = 1) -> bytes:
    return p_data_tf(context_id, (COMMAND_LAST, c_store_rq(DX_FOR_PRESENTATION, "1.2.826.0.1.3680043.9.7433.5.1")))


def oversized_pdu_cases(max_pdu: int) -> list[HostileCase]:
    cases = []
    for name, length in (
        ("one-byte-over", max_pdu + 1),
        ("twice", 2 * max_pdu),
        ("16-mib", 16 * MIB),
        ("1-gib", 1 << 30),
        ("4-gib-minus-1", 0xFFFFFFFF),
    ):
        cases.append(HostileCase(f"p-data-{name}-the-maximum-length", PDU, in_association(_header(0x04, length) + b"\x00" * 64), TOO_LONG))
    cases += [
        HostileCase("a-associate-rq-of-1-gib", PDU, before_association(_header(0x01, 1 << 30) + b"\x00" * 64), TOO_LONG),
        HostileCase("a-release-rq-of-2-mib", PDU, in_association(_header(0x05, 2 * MIB) + b"\x00" * 64), TOO_LONG),
        HostileCase("a-abort-of-1-gib", PDU, in_association(_header(0x07, 1 << 30) + b"\x00" * 4), TOO_LONG),
    ]
    return cases


def wrong_pdu_cases() -> list[HostileCase]:
    cases = []
    for pdu_type in (0x00, 0x08, 0x10, 0x7F, 0xFF):
        cases.append(HostileCase(f"unknown-pdu-type-0x{pdu_type:02x}-before-association", PDU, before_association(pdu(pdu_type, b"\x00" * 4)), AA_1))
        cases.append(HostileCase(f"unknown-pdu-type-0x{pdu_type:02x}-in-an-association", PDU, in_association(pdu(pdu_type, b"\x00" * 4)), AA_8))
    cases += [
        HostileCase("p-data-before-association", PDU, before_association(_command_pdv()), AA_1),
        HostileCase("a-release-rq-before-association", PDU, before_association(RELEASE_RQ), AA_1),
        HostileCase("a-release-rp-before-association", PDU, before_association(pdu(0x06, b"\x00" * 4)), AA_1),
        HostileCase("a-associate-ac-to-the-acceptor", PDU, before_association(pdu(0x02, b"\x00" * 68)), AA_1),
        HostileCase("a-associate-rj-to-the-acceptor", PDU, before_association(pdu(0x03, b"\x00\x00\x01\x01")), AA_1),
        HostileCase("second-a-associate-rq-in-an-association", PDU, in_association(dx_request), AA_8),
        HostileCase("a-associate-ac-in-an-association", PDU, in_association(pdu(0x02, b"\x00" * 68)), AA_8),
        HostileCase("a-release-rp-in-an-association", PDU, in_association(pdu(0x06, b"\x00" * 4)), AA_8),
    ]
    return cases


def _fragment_for(context_id: int) -> Callable[[CaseContext], Answer]:
    return in_association(lambda: _command_pdv(context_id), timeout=10.0)


def context_fragment_cases(network_timeout: float) -> list[HostileCase]:
    """Messages on presentation contexts that were never accepted are ignored until the network timeout."""
    ignored = Ended(within=network_timeout + SLACK)
    return [
        HostileCase(f"command-on-context-id-{context_id}", PDU, _fragment_for(context_id), ignored)
        for context_id in (99, 2, 0, 255)
    ] + [
        # pynetdicom adds a PDV of any context to the open message: 16 zero bytes, no data set.
        HostileCase(
            "data-fragment-for-another-context-mid-message",
            PDU,
            in_association(_command_pdv(1), p_data_tf(3, (DATA_LAST, b"\x00" * 16))),
            Status(statuses.CANNOT_UNDERSTAND_CORRUPT),
        ),
    ]


def _user_item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def association_request_cases() -> list[HostileCase]:
    dx = [(DX_FOR_PRESENTATION, [EXPLICIT_VR_LE])]
    return [
        HostileCase(
            "called-ae-title-not-ours",
            PDU,
            request_attack(lambda: dx_request(called_aet="SOMEONEELSE")),
            Rejected(*statuses.REJECT_CALLED_AET[:3]),
        ),
        HostileCase(
            "called-ae-title-all-spaces",
            PDU,
            request_attack(lambda: dx_request(called_aet="")),
            AA_1,  # PS3.8 9.3.2: an AE title is not all spaces; an invalid PDU
        ),
        HostileCase(
            "protocol-version-0",
            PDU,
            request_attack(lambda: dx_request(protocol_version=0)),
            Rejected(statuses.RESULT_PERMANENT, statuses.SOURCE_SERVICE_PROVIDER_ACSE, 0x02),
        ),
        HostileCase(
            "protocol-version-2",
            PDU,
            request_attack(lambda: dx_request(protocol_version=2)),
            Rejected(statuses.RESULT_PERMANENT, statuses.SOURCE_SERVICE_PROVIDER_ACSE, 0x02),
        ),
        HostileCase(
            "unknown-application-context",
            PDU,
            request_attack(lambda: dx_request(application_context="1.2.3.4.5.6")),
            Contexts((0,)),  # pynetdicom does not check it; rejecting it is optional (PS3.8 Table 9-21)
        ),
        HostileCase("ct-only", PDU, request_attack(lambda: associate_rq([(CT_IMAGE_STORAGE, [EXPLICIT_VR_LE])])), Contexts((statuses.CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED,))),
        HostileCase(
            "big-endian-only",
            PDU,
            request_attack(lambda: associate_rq([(DX_FOR_PRESENTATION, [BIG_ENDIAN])])),
            Contexts((statuses.CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED,)),
        ),
        HostileCase(
            "unknown-transfer-syntax-uid",
            PDU,
            request_attack(lambda: associate_rq([(DX_FOR_PRESENTATION, ["1.2.3.4.5.6.7"])])),
            Contexts((statuses.CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED,)),
        ),
        HostileCase(
            "ct-and-dx",
            PDU,
            request_attack(lambda: associate_rq([(CT_IMAGE_STORAGE, [EXPLICIT_VR_LE]), *dx])),
            Contexts((statuses.CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED, 0)),
        ),
        HostileCase(
            "no-presentation-context",
            PDU,
            request_attack(lambda: associate_rq([])),
            Contexts(()),  # accepted with nothing to use; the node logs a warning
        ),
        HostileCase(
            "even-presentation-context-id",
            PDU,
            request_attack(lambda: associate_rq(dx, context_ids=[2])),
            AA_1,
        ),
        HostileCase(
            "duplicate-presentation-context-ids",
            PDU,
            request_attack(lambda: associate_rq([*dx, (VERIFICATION, [IMPLICIT_VR_LE])], context_ids=[1, 1])),
            Contexts((0,)),  # one context ID, one answer
        ),
        HostileCase(
            "no-user-information-items",
            PDU,
            request_attack(lambda: associate_rq(dx, user_information=b"")),
            Contexts((0,)),  # no Maximum Length: the peer's PDUs are unlimited
        ),
        HostileCase(
            "maximum-length-item-of-2-bytes",
            PDU,
            request_attack(lambda: associate_rq(dx, user_information=_user_item(0x51, b"\x00\x01"))),
            AA_1,
        ),
        HostileCase(
            "item-length-past-the-end-of-the-pdu",
            PDU,
            request_attack(lambda: dx_request()[:-4] + b"\xff\xff" + dx_request()[-2:]),
            AA_1,
        ),
        HostileCase(
            "pdu-length-shorter-than-its-items",
            PDU,
            request_attack(lambda: _header(0x01, 80) + dx_request()[6:86]),
            AA_1,
        ),
    ]


FORGED_AET = "EV\nFORGED\x1b[2J"
FORGED_SYNTAX = "1.2.840.10008.5.1.4.1.1.1.1\x1b[31m\r\n2026 INFO forged"


def _logged(request: Callable[[], bytes]) -> Callable[[CaseContext], tuple[Answer, str]]:
    send = request_attack(request)

    def attack(ctx: CaseContext) -> tuple[Answer, str]:
        answer = send(ctx)
        time.sleep(0.5)  # the log line of the association is written as it ends
        return answer, ctx.log_text()

    return attack


def control_character_cases() -> list[HostileCase]:
    return [
        HostileCase(
            "line-feed-and-escape-in-the-calling-ae-title",
            PDU,
            _logged(lambda: associate_rq([(VERIFICATION, [IMPLICIT_VR_LE])], calling_aet=FORGED_AET)),
            Logged(AA_1, ("EV\\x0aFORGED\\x1b[2J",)),
        ),
        HostileCase(
            "escape-and-crlf-in-an-abstract-syntax",
            PDU,
            _logged(lambda: associate_rq([(FORGED_SYNTAX, [EXPLICIT_VR_LE])], calling_aet="SENDER")),
            Logged(Contexts((statuses.CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED,)), ("\\x1b[31m\\x0d\\x0a2026 INFO forged",)),
        ),
        HostileCase(
            "nul-and-bell-in-the-called-ae-title",
            PDU,
            _logged(lambda: dx_request(called_aet="CXR\x00\x07NODE")),
            Logged(AA_1, ("CXR\\x00\\x07NODE",)),
        ),
        HostileCase(
            "escape-in-a-transfer-syntax",
            PDU,
            _logged(lambda: associate_rq([(DX_FOR_PRESENTATION, ["1.2.840.10008.1.2.1\x1b[5m"])], calling_aet="SENDER")),
            Logged(Contexts((statuses.CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED,)), ("\\x1b[5m",)),
        ),
    ]


def _ct_data_set(sop_class: str) -> Store:
    """A valid radiograph data set whose SOP Class UID says ``sop_class``, sent on the DX context."""
    r = radiograph()
    ds_bytes = r.join(r.replaced(SOP_CLASS_UID, text_element(SOP_CLASS_UID, b"UI", sop_class)))
    return Store(ds_bytes, r.sop_instance_uid, r.identity.study_instance_uid, sop_class, ExplicitVRLittleEndian, DX_FOR_PRESENTATION)


def sop_class_cases() -> list[HostileCase]:
    refused = Status(statuses.SOP_CLASS_NOT_SUPPORTED)
    return [
        HostileCase("ct-c-store-on-the-dx-context", PDU, store_attack(lambda: _ct_data_set(CT_IMAGE_STORAGE)), refused),
        HostileCase("cr-c-store-on-the-dx-context", PDU, store_attack(lambda: _ct_data_set(CR_IMAGE)), refused),
        HostileCase("secondary-capture-on-the-dx-context", PDU, store_attack(lambda: _ct_data_set(SECONDARY_CAPTURE)), refused),
        HostileCase("made-up-sop-class-on-the-dx-context", PDU, store_attack(lambda: _ct_data_set("1.2.826.0.1.3680043.9.7433.77.1")), refused),
        HostileCase("verification-class-in-a-c-store", PDU, store_attack(lambda: _ct_data_set(VERIFICATION)), refused),
    ]


def pdu_cases(max_pdu: int, network_timeout: float) -> list[HostileCase]:
    """Every PDU-abuse case (see the module docstring)."""
    return [
        *oversized_pdu_cases(max_pdu),
        *wrong_pdu_cases(),
        *context_fragment_cases(network_timeout),
        *association_request_cases(),
        *control_character_cases(),
        *sop_class_cases(),
    ]


# --- slow and idle sockets -------------------------------------------------------------------------
def _connected(ctx: CaseContext, associate: bool) -> tuple[socket.socket, Answer | None]:
    """A connection from an address of its own, associated (DX) when asked; the answer if that failed."""
    sock = connect(ctx.port, source=ctx.source())
    if not associate:
        return sock, None
    sock.sendall(dx_request())
    answer = next_answer(sock, 10)
    return sock, (None if answer.kind == "accepted" else answer)


def _idle(first: Callable[[], bytes] | None, *, associate: bool, wait: float) -> Callable[[CaseContext], Answer]:
    """Connect (and associate), send ``first``, then go silent; what happens within ``wait``."""

    def attack(ctx: CaseContext) -> Answer:
        sock, refused = _connected(ctx, associate)
        try:
            if refused is not None:
                return refused
            if first is not None:
                sock.sendall(first())
            return next_answer(sock, wait)
        finally:
            sock.close()

    return attack


def _trickle(data: Callable[[], bytes], *, associate: bool, every: float, wait: float) -> Callable[[CaseContext], Answer]:
    """Send ``data`` one byte each ``every`` seconds; the answer (or close) that cuts it short."""

    def attack(ctx: CaseContext) -> Answer:
        sock, refused = _connected(ctx, associate)
        try:
            if refused is not None:
                return refused
            started = time.monotonic()
            for byte in data():
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return Answer("closed", (), time.monotonic() - started)
                answer = next_answer(sock, every)
                if answer.kind != "open":
                    return Answer(answer.kind, answer.values, time.monotonic() - started)
                if time.monotonic() - started > wait:
                    break
            return Answer("open", (), time.monotonic() - started)
        finally:
            sock.close()

    return attack


def _per_peer(ctx: CaseContext) -> Answer:
    """Hold the per-peer limit of connections from one address; the next one from it must be closed at once."""
    source = ctx.source()
    held = [connect(ctx.port, source=source) for _ in range(ctx.max_connections_per_peer)]
    try:
        time.sleep(0.3)  # the listener counts them as it accepts them
        extra = connect(ctx.port, source=source)
        try:
            return next_answer(extra, 3)
        finally:
            extra.close()
    finally:
        for sock in held:
            sock.close()


def _many_silent(count: int) -> Callable[[CaseContext], Answer]:
    """``count`` silent connections from as many addresses: the last to close, and when."""

    def attack(ctx: CaseContext) -> Answer:
        socks = [connect(ctx.port, source=ctx.source()) for _ in range(count)]
        try:
            answers = [next_answer(s, ctx.acse_timeout + 10) for s in socks]
        finally:
            for sock in socks:
                sock.close()
        worst = max(answers, key=lambda a: (a.kind != "closed", a.seconds))
        return worst

    return attack


def _slow_store(ctx: CaseContext) -> Answer:
    """A C-STORE in 512-byte P-DATA PDUs, each whole, a sixth of the network timeout apart: slow, not hostile.

    The transfer lasts longer than the PDU timeout, but no one PDU does, and the peer is never
    silent for the network timeout: it must be stored.
    """
    r = radiograph(size=64)
    peer = RawAssociation.open(ctx.port, [(DX_FOR_PRESENTATION, [EXPLICIT_VR_LE])], source=ctx.source())
    try:
        data = r.join()
        peer.sock.sendall(p_data_tf(1, (COMMAND_LAST, c_store_rq(DX_FOR_PRESENTATION, r.sop_instance_uid))))
        for position in range(0, len(data), 512):
            last = position + 512 >= len(data)
            peer.sock.sendall(p_data_tf(1, (DATA_LAST if last else DATA, data[position : position + 512])))
            if not last:
                answer = next_answer(peer.sock, ctx.network_timeout / 6)
                if answer.kind != "open":
                    return answer
        answer = next_answer(peer.sock, 10)
        if answer.kind == "status" and answer.values == (statuses.SUCCESS,):
            ctx.note_stored(r.sop_instance_uid)
            peer.release()
        return answer
    finally:
        peer.sock.close()


def slow_cases(*, acse_timeout: float, network_timeout: float, pdu_timeout: float) -> list[HostileCase]:
    """Every slow/idle-socket case; the bounds are the listener's timeouts plus :data:`SLACK`."""
    before = Closed(within=acse_timeout + SLACK)
    silent_after = Ended(within=network_timeout + SLACK)
    request = dx_request
    wait = acse_timeout + 8
    return [
        HostileCase("silent-tcp-connection", SLOW, _idle(None, associate=False, wait=wait), before),
        HostileCase("silent-after-3-bytes-of-a-request-header", SLOW, _idle(lambda: request()[:3], associate=False, wait=wait), before),
        HostileCase("silent-after-a-request-header", SLOW, _idle(lambda: request()[:6], associate=False, wait=wait), before),
        HostileCase("silent-after-half-a-request", SLOW, _idle(lambda: request()[: len(request()) // 2], associate=False, wait=wait), before),
        HostileCase("slow-loris-request-a-byte-each-0.5-s", SLOW, _trickle(request, associate=False, every=0.5, wait=wait), before),
        HostileCase("slow-loris-request-a-byte-each-2-s", SLOW, _trickle(request, associate=False, every=2.0, wait=wait), before),
        HostileCase(
            "silent-after-3-bytes-of-a-p-data-header",
            SLOW,
            _idle(lambda: b"\x04\x00\x00", associate=True, wait=network_timeout + 8),
            silent_after,
        ),
        HostileCase(
            "silent-after-a-p-data-header",
            SLOW,
            _idle(lambda: _header(0x04, 1000), associate=True, wait=network_timeout + 8),
            silent_after,
        ),
        HostileCase(
            "silent-inside-a-pdv",
            SLOW,
            _idle(lambda: _header(0x04, 1000) + struct.pack(">LBB", 994, 1, 0) + b"\x00" * 4, associate=True, wait=network_timeout + 8),
            silent_after,
        ),
        HostileCase(
            "silent-after-a-command-before-its-data-set",
            SLOW,
            _idle(_command_pdv, associate=True, wait=network_timeout + 8),
            silent_after,
        ),
        HostileCase("silent-between-pdus", SLOW, _idle(None, associate=True, wait=network_timeout + 8), silent_after),
        HostileCase(
            "p-data-trickled-past-the-pdu-timeout",
            SLOW,
            _trickle(lambda: _header(0x04, 1000) + bytes(1000), associate=True, every=network_timeout / 3, wait=pdu_timeout + 8),
            Ended(within=pdu_timeout + SLACK),
        ),
        HostileCase("c-store-trickled-in-steps-under-the-network-timeout", SLOW, _slow_store, Status(statuses.SUCCESS)),
        HostileCase("one-connection-past-the-per-peer-limit", SLOW, _per_peer, Closed(within=2.0)),
        HostileCase("twenty-silent-connections", SLOW, _many_silent(20), before),
    ]

