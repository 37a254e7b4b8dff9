"""Hostile peers on raw sockets cannot hold the listener's slots, and a good sender gets through.

Each test shrinks the time limits through settings, attacks from 127.0.0.2 (any 127.x.y.z is
this machine) and sends the good study from 127.0.0.1, so the per-peer limit and the attack
are told apart.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.scp import statuses
from tests.support.dcmtk import storescu
from tests.support.dicom_files import make_instance
from tests.support.hostile_peer import (
    EXPLICIT_VR_LE,
    RawAssociation,
    associate_rq,
    connect,
    seconds_until_closed,
)
from tests.support.listener import VERIFICATION_CONTEXT, Node
from tests.support.polling import wait_for
from training.dicom_export import DX_FOR_PRESENTATION

ATTACKER = "127.0.0.2"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _good_sender_gets_through(node: Node, path: Path, timeout: float) -> float:
    """Send ``path`` with DCMTK storescu until it is stored; the seconds it took."""
    start = time.monotonic()
    last = None
    while time.monotonic() - start < timeout:
        last = storescu(node.port, [path], calling_aet="GOODPACS", timeout=30)
        if last.statuses == [statuses.SUCCESS]:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"the good sender did not get through within {timeout} s: {last.output if last else ''}")


def test_idle_sockets_do_not_lock_out_a_good_sender(start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node(max_associations=10, network_timeout=1.5, pdu_timeout=30, max_connections_per_peer=20)
    attackers = [RawAssociation.open(node.port, [(DX_FOR_PRESENTATION, [EXPLICIT_VR_LE])], source=ATTACKER) for _ in range(10)]
    started = time.monotonic()
    for peer in attackers:
        # A P-DATA-TF header announcing 1000 bytes and the start of one PDV: 16 bytes, then silence.
        peer.sock.sendall(struct.pack(">BBL", 0x04, 0, 1000) + struct.pack(">LBB", 994, 1, 0) + b"\x00" * 4)
    good = make_instance(tmp_path / "good.dcm", size=16)

    took = _good_sender_gets_through(node, good.path, timeout=15)

    closed = [seconds_until_closed(peer.sock, 5) for peer in attackers]
    for peer in attackers:
        peer.sock.close()
    assert all(c is not None for c in closed), f"attacker sockets left open: {closed}"
    assert time.monotonic() - started < 1.5 + 8
    assert took < 10, f"the good sender waited {took:.1f} s"
    assert [row.sop_instance_uid for row in node.instances()] == [good.identity.sop_instance_uid]
    print(f"good sender through after {took:.2f} s with 10 silent half-PDUs open")


def test_trickled_and_silent_connections_hold_no_slot_and_are_closed(start_node: Callable[..., Node]) -> None:
    node = start_node(max_associations=2, acse_timeout=2.0, max_connections_per_peer=20)
    request = associate_rq([VERIFICATION_CONTEXT])
    trickling = [connect(node.port, source=ATTACKER) for _ in range(6)]
    silent = [connect(node.port, source=ATTACKER) for _ in range(5)]
    opened = time.monotonic()
    stop = threading.Event()

    def trickle() -> None:  # one byte per socket every 0.25 s; stops by itself
        for index in range(len(request)):
            if stop.wait(0.25) or time.monotonic() - opened > 10:
                return
            for sock in trickling:
                try:
                    sock.send(request[index : index + 1])
                except OSError:
                    continue

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        # While the eleven are open, a good sender is not told "local limit exceeded".
        assoc = node.associate([VERIFICATION_CONTEXT], calling_aet="GOODPACS")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == statuses.SUCCESS
        assoc.release()
        closed = [seconds_until_closed(sock, 6) for sock in [*trickling, *silent]]
    finally:
        stop.set()
        sender.join()
        for sock in [*trickling, *silent]:
            sock.close()
    assert all(c is not None for c in closed), f"sockets still open past the ACSE timeout: {closed}"
    assert time.monotonic() - opened < 2.0 + 4
    print(f"trickling and silent sockets closed after at most {max(c for c in closed if c is not None):.2f} s more")


def test_connections_beyond_the_per_peer_limit_are_closed_at_once(start_node: Callable[..., Node]) -> None:
    node = start_node(max_connections_per_peer=3)
    held = [connect(node.port, source=ATTACKER) for _ in range(3)]
    try:
        wait_for(lambda: node.handle.server.peers.count(ATTACKER) == 3, "three counted connections", timeout=5)
        extra = connect(node.port, source=ATTACKER)
        took = seconds_until_closed(extra, 2)
        extra.close()
        assert took is not None and took < 1.0, f"the fourth connection was not closed at once ({took})"
        assoc = node.associate([VERIFICATION_CONTEXT], calling_aet="GOODPACS")  # another address
        assert assoc.is_established
        assoc.release()
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: node.handle.server.peers.count(ATTACKER) == 0, "closed connections uncounted", timeout=5)


def test_a_pdu_trickled_past_the_pdu_timeout_is_cut_off(start_node: Callable[..., Node]) -> None:
    node = start_node(network_timeout=2.0, pdu_timeout=1.5)
    peer = RawAssociation.open(node.port, [(DX_FOR_PRESENTATION, [EXPLICIT_VR_LE])], source=ATTACKER)
    started = time.monotonic()
    peer.sock.sendall(struct.pack(">BBL", 0x04, 0, 1000))
    cut = None
    for _ in range(40):  # one byte each 0.25 s: never silent for the network timeout
        try:
            peer.sock.send(b"\x00")
        except OSError:
            cut = time.monotonic() - started
            break
        if seconds_until_closed(peer.sock, 0.25) is not None:
            cut = time.monotonic() - started
            break
    peer.sock.close()
    assert cut is not None and cut < 1.5 + 1.5, f"a PDU trickling for {cut} s was not cut off"
    print(f"trickled PDU cut off after {cut:.2f} s (pdu_timeout 1.5 s)")


def test_silence_between_pdus_closes_the_socket(start_node: Callable[..., Node]) -> None:
    node = start_node(network_timeout=1.0)
    peer = RawAssociation.open(node.port, [(DX_FOR_PRESENTATION, [EXPLICIT_VR_LE])], source=ATTACKER)
    took = seconds_until_closed(peer.sock, 5)
    peer.sock.close()
    assert took is not None and took < 1.0 + 2


def test_a_ct_store_on_a_dx_context_is_refused_with_0122(node: Node, tmp_path: Path) -> None:
    made = make_instance(tmp_path / "dx.dcm", size=16)
    ct = dcmread(made.path)
    ct.SOPClassUID = CT_IMAGE_STORAGE
    ct.Modality = "CT"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ct)
    data = buffer.getvalue()  # a valid CT data set, sent on the DX context
    peer = RawAssociation.open(node.port, [(DX_FOR_PRESENTATION, [ExplicitVRLittleEndian])])
    peer.send_c_store(peer.context_for(DX_FOR_PRESENTATION), CT_IMAGE_STORAGE, made.identity.sop_instance_uid, data)
    status = peer.read_status()
    peer.release()
    assert status == statuses.SOP_CLASS_NOT_SUPPORTED
    assert node.instances() == []


def test_an_instance_over_the_limit_aborts_only_its_own_association(start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node(max_instance_bytes=4096)
    big = make_instance(tmp_path / "big.dcm", size=64)  # 8 KiB of pixels
    small = [make_instance(tmp_path / f"small{i}.dcm", size=8) for i in range(6)]
    good = node.associate([(DX_FOR_PRESENTATION, [ExplicitVRLittleEndian])], calling_aet="GOODPACS")
    bad = node.associate([(DX_FOR_PRESENTATION, [ExplicitVRLittleEndian])], calling_aet="BADPACS")
    assert good.is_established and bad.is_established
    answered = [int(good.send_c_store(s.path).Status) for s in small[:3]]
    refused = bad.send_c_store(big.path)
    wait_for(lambda: bad.is_aborted, "the oversized association aborted", timeout=10)
    answered += [int(good.send_c_store(s.path).Status) for s in small[3:]]
    good.release()
    assert "Status" not in refused  # no answer: aborted while the data set arrived
    assert answered == [statuses.SUCCESS] * len(small)
    assert {row.sop_instance_uid for row in node.instances()} == {s.identity.sop_instance_uid for s in small}
    assert not list((node.spool / ".incoming").iterdir())
