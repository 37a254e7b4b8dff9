"""A DICOM peer on a raw socket, for tests that send what no well-behaved library would.

PDUs are encoded here byte by byte after PS3.8 9.3 (A-ASSOCIATE-RQ, P-DATA-TF) and the C-STORE
command after PS3.7 9.3.1.1 in Implicit VR Little Endian, so a test can send a PDU header and go
silent, trickle a request, announce a PDU longer than allowed, put any AE title or UID on the
wire, or send a C-STORE on a presentation context of another SOP Class.

Example::

    peer = RawAssociation.open(port, [(DX_FOR_PRESENTATION, [EXPLICIT_VR_LE])])
    status = peer.c_store(peer.context_for(DX_FOR_PRESENTATION), CT_IMAGE_STORAGE, sop_uid, data)
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
#: The P-DATA-TF message control header bits (PS3.8 E.2): command or data set, last or not.
DATA, DATA_LAST, COMMAND, COMMAND_LAST = 0x00, 0x02, 0x01, 0x03


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _uid_bytes(uid: str) -> bytes:
    return uid.encode("latin-1")


def associate_rq(
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    called_aet: str = "CXRNODE",
    calling_aet: str = "HOSTILE",
    max_pdu: int = 16384,
    protocol_version: int = 1,
    application_context: str = APPLICATION_CONTEXT,
    context_ids: Sequence[int] | None = None,
    user_information: bytes | None = None,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing ``(abstract syntax, [transfer syntaxes])``.

    AE titles are written as given (latin-1, padded or cut to 16 bytes), control characters included.
    The other keywords put wrong values in the fields a sane requestor never gets wrong: the
    protocol version, the application context name, the presentation context IDs (odd numbers
    1, 3, 5, ... by default; PS3.8 9.3.2.2) and the whole User Information item value
    (default: Maximum Length ``max_pdu`` and an Implementation Class UID).
    """
    body = struct.pack(">HH", protocol_version, 0)
    body += aet_field(called_aet) + aet_field(calling_aet) + b"\x00" * 32
    body += _item(0x10, _uid_bytes(application_context))
    for index, (abstract, syntaxes) in enumerate(contexts):
        context_id = context_ids[index] if context_ids is not None else 2 * index + 1
        value = struct.pack(">BBBB", context_id, 0, 0, 0) + _item(0x30, _uid_bytes(abstract))
        value += b"".join(_item(0x40, _uid_bytes(ts)) for ts in syntaxes)
        body += _item(0x20, value)
    if user_information is None:
        user_information = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, _uid_bytes("1.2.826.0.1.3680043.9.7433.1"))
    body += _item(0x50, user_information)
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def pdu(pdu_type: int, body: bytes) -> bytes:
    """Any PDU: the 6-byte header (PS3.8 9.3.1: type, reserved, length) and ``body``."""
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


#: A-RELEASE-RQ (PS3.8 9.3.6): type 5, length 4, four reserved bytes.
RELEASE_RQ = struct.pack(">BBLL", 0x05, 0, 4, 0)


def aet_field(aet: str) -> bytes:
    """An AE title as the 16-byte field of an A-ASSOCIATE-RQ."""
    return aet.encode("latin-1")[:16].ljust(16, b" ")


def p_data_tf(context_id: int, *fragments: tuple[int, bytes]) -> bytes:
    """A P-DATA-TF PDU (PS3.8 9.3.5) of ``(message control header, bytes)`` fragments."""
    items = b"".join(struct.pack(">LBB", len(data) + 2, context_id, header) + data for header, data in fragments)
    return struct.pack(">BBL", 0x04, 0, len(items)) + items


def _element(group: int, element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHL", group, element, len(value)) + value


def c_store_rq(sop_class_uid: str, sop_instance_uid: str, message_id: int = 1, *, data_set_type: int = 0x0000) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1) in Implicit VR Little Endian, with its group length.

    ``data_set_type`` is Command Data Set Type (0000,0800): 0x0000 says a data set follows,
    0x0101 (PS3.7 E.1) that none does.
    """
    elements = (
        _element(0x0000, 0x0002, _uid_bytes(sop_class_uid))
        + _element(0x0000, 0x0100, struct.pack("<H", 0x0001))
        + _element(0x0000, 0x0110, struct.pack("<H", message_id))
        + _element(0x0000, 0x0700, struct.pack("<H", 0))
        + _element(0x0000, 0x0800, struct.pack("<H", data_set_type))
        + _element(0x0000, 0x1000, _uid_bytes(sop_instance_uid))
    )
    return _element(0x0000, 0x0000, struct.pack("<L", len(elements))) + elements


def _command_status(command: bytes) -> int | None:
    position = 0
    while position + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHL", command, position)
        if (group, element) == (0x0000, 0x0900):
            return int(struct.unpack_from("<H", command, position + 8)[0])
        position += 8 + length
    return None


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file, without preamble and File Meta Information."""
    from pydicom import dcmread

    ds = dcmread(path)
    with open(path, "rb") as handle:
        handle.seek(ds.file_meta.get("FileMetaInformationGroupLength", 0) + 132 + 12)
        return handle.read()


def read_pdu(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes] | None:
    """The next PDU as ``(type, body)``; ``None`` when the peer closed the connection."""
    sock.settimeout(timeout)
    header = _read_exactly(sock, 6)
    if header is None:
        return None
    pdu_type, _reserved, length = struct.unpack(">BBL", header)
    body = _read_exactly(sock, length)
    return None if body is None else (pdu_type, body)


def _read_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = bytearray()
    while len(data) < count:
        try:
            chunk = sock.recv(count - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def connect(port: int, *, source: str = "127.0.0.1", host: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to the listener from ``source`` (any 127.x.y.z is this machine)."""
    sock = socket.create_connection((host, port), timeout=10, source_address=(source, 0))
    return sock


def seconds_until_closed(sock: socket.socket, timeout: float) -> float | None:
    """Read and discard until the listener closes the connection; the seconds it took, ``None`` if it did not."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return time.monotonic() - start
        if not chunk:
            return time.monotonic() - start


@dataclass
class RawAssociation:
    """An established association on a raw socket and the contexts the listener accepted."""

    sock: socket.socket
    accepted: dict[int, str] = field(default_factory=dict)  #: context ID -> abstract syntax
    abstract_syntaxes: list[str] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        port: int,
        contexts: Sequence[tuple[str, Sequence[str]]],
        *,
        source: str = "127.0.0.1",
        calling_aet: str = "HOSTILE",
        called_aet: str = "CXRNODE",
    ) -> "RawAssociation":
        """Connect, request and read the answer; raise ``AssertionError`` unless accepted."""
        sock = connect(port, source=source)
        sock.sendall(associate_rq(contexts, calling_aet=calling_aet, called_aet=called_aet))
        answer = read_pdu(sock)
        if answer is None or answer[0] != 0x02:
            sock.close()
            raise AssertionError(f"association not accepted: {answer!r}")
        accepted = {}
        body = answer[1]
        position = 68
        while position + 4 <= len(body):
            item_type, _r, length = struct.unpack_from(">BBH", body, position)
            if item_type == 0x21 and body[position + 6] == 0:  # presentation context, acceptance
                context_id = body[position + 4]
                accepted[context_id] = contexts[(context_id - 1) // 2][0]
            position += 4 + length
        return cls(sock, accepted, [c[0] for c in contexts])

    def context_for(self, abstract_syntax: str) -> int:
        """The accepted context ID of ``abstract_syntax``."""
        for context_id, syntax in self.accepted.items():
            if syntax == abstract_syntax:
                return context_id
        raise AssertionError(f"no accepted context for {abstract_syntax}: {self.accepted}")

    def send_c_store(
        self, context_id: int, sop_class_uid: str, sop_instance_uid: str, data: bytes | Iterator[bytes], *, fragment: int = 16000
    ) -> None:
        """Send a C-STORE-RQ and its data set (bytes, or an iterator of chunks sent as they come)."""
        self.sock.sendall(p_data_tf(context_id, (COMMAND_LAST, c_store_rq(sop_class_uid, sop_instance_uid))))
        chunks = [data] if isinstance(data, bytes) else data
        pending = b""
        for chunk in chunks:
            pending += chunk
            while len(pending) > fragment:
                self.sock.sendall(p_data_tf(context_id, (DATA, pending[:fragment])))
                pending = pending[fragment:]
        self.sock.sendall(p_data_tf(context_id, (DATA_LAST, pending)))

    def read_status(self, timeout: float = 30.0) -> int | None:
        """The Status of the next DIMSE response; ``None`` when the listener aborted, closed or said nothing."""
        answer = next_answer(self.sock, timeout)
        return answer.values[0] if answer.kind == "status" and answer.values else None

    def release(self) -> None:
        """A-RELEASE-RQ, wait for the answer, close."""
        try:
            self.sock.sendall(RELEASE_RQ)
            read_pdu(self.sock, 10)
        finally:
            self.sock.close()


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no {field_name} line")


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size (``VmHWM`` in ``/proc/<pid>/status``), in bytes."""
    return _status_kib(pid, "VmHWM")


def rss_bytes(pid: int) -> int:
    """The process's resident set size now (``VmRSS``), in bytes."""
    return _status_kib(pid, "VmRSS")


def reset_peak_rss(pid: int) -> int:
    """Reset the process's ``VmHWM`` to its current RSS (``5`` into ``/proc/<pid>/clear_refs``); return that RSS.

    Lets a test measure the peak of one phase (an attack) apart from an earlier one (model loading).
    Needs the right to write the file: the process's owner or root.
    """
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return peak_rss_bytes(pid)


# --- reading what the listener answered ----------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """What the listener did next, as a test compares it.

    ``kind`` is one of ``"status"`` (a DIMSE response; ``values`` = (Status,)), ``"accepted"``
    (A-ASSOCIATE-AC; ``values`` = the presentation context results, PS3.8 Table 9-18, in
    context ID order), ``"rejected"`` (A-ASSOCIATE-RJ; (result, source, reason), PS3.8 Table 9-21),
    ``"aborted"`` (A-ABORT; (source, reason), PS3.8 Table 9-26), ``"released"`` (A-RELEASE-RP),
    ``"pdu"`` (any other PDU; (type,)), ``"closed"`` (the connection ended without a PDU) or
    ``"open"`` (nothing happened within the wait). ``seconds`` is how long it took.
    """

    kind: str
    values: tuple[int, ...] = ()
    seconds: float = 0.0

    def __str__(self) -> str:
        shown = ", ".join(f"0x{v:04X}" if self.kind == "status" else str(v) for v in self.values)
        return f"{self.kind}({shown}) after {self.seconds:.2f} s"


def _context_results(body: bytes) -> tuple[int, ...]:
    results = []
    position = 68  # protocol version, reserved, AE titles, reserved (PS3.8 9.3.3)
    while position + 4 <= len(body):
        item_type, _r, length = struct.unpack_from(">BBH", body, position)
        if item_type == 0x21 and position + 7 <= len(body):
            results.append((body[position + 4], body[position + 6]))  # context ID, result
        position += 4 + length
    return tuple(result for _id, result in sorted(results))


def answer_of(pdu_read: tuple[int, bytes] | None, started: float) -> Answer:
    """The :class:`Answer` for a PDU read by :func:`read_pdu` (``None``: closed)."""
    took = time.monotonic() - started
    if pdu_read is None:
        return Answer("closed", (), took)
    pdu_type, body = pdu_read
    if pdu_type == 0x02:
        return Answer("accepted", _context_results(body), took)
    if pdu_type == 0x03 and len(body) >= 4:
        return Answer("rejected", (body[1], body[2], body[3]), took)
    if pdu_type == 0x07 and len(body) >= 4:
        return Answer("aborted", (body[2], body[3]), took)
    if pdu_type == 0x06:
        return Answer("released", (), took)
    return Answer("pdu", (pdu_type,), took)


def next_answer(sock: socket.socket, timeout: float) -> Answer:
    """Wait up to ``timeout`` s for the listener's next PDU (or close) and say what it was.

    A P-DATA-TF is read to the end of its message: a complete DIMSE command gives its Status.
    """
    started = time.monotonic()
    command = b""
    while True:
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            return Answer("open", (), time.monotonic() - started)
        try:
            read = read_pdu(sock, remaining)
        except TimeoutError:
            return Answer("open", (), time.monotonic() - started)
        except OSError:
            read = None
        if read is None or read[0] != 0x04:
            return answer_of(read, started)
        body = read[1]
        position = 0
        while position + 6 <= len(body):
            length = struct.unpack_from(">L", body, position)[0]
            header = body[position + 5]
            if header & COMMAND:
                command += body[position + 6 : position + 4 + length]
                if header & 0x02:
                    status = _command_status(command)
                    return Answer("status", () if status is None else (status,), time.monotonic() - started)
            position += 4 + length
