"""Bounded memory in ``cxr-node serve``: oversized PDUs, instances and deflate bombs are cut short.

Each test starts a real ``cxr-node serve``, reads its peak resident set size (``VmHWM``) once it
answers C-ECHO, attacks it from a raw socket and reads the peak again: the growth must stay far
under what buffering the attack would cost.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from node.scp import statuses
from tests.support.dicom_files import make_instance
from tests.support.hostile_peer import (
    COMMAND_LAST,
    DATA,
    EXPLICIT_VR_LE,
    RawAssociation,
    c_store_rq,
    p_data_tf,
    peak_rss_bytes,
)
from tests.support.node_process import NodeProcess
from training.dicom_export import DX_FOR_PRESENTATION

MIB = 1024 * 1024
ZEROS = bytes(MIB)


def _stream_until_cut(peer: RawAssociation, chunks: int, make_chunk) -> int:  # type: ignore[no-untyped-def]
    """Send ``chunks`` MiB-sized pieces until the listener closes; return the MiB it took."""
    sent = 0
    try:
        for index in range(chunks):
            peer.sock.sendall(make_chunk(index))
            sent += 1
    except OSError:
        pass
    return sent


def test_a_pdata_pdu_over_the_maximum_length_is_aborted_before_it_is_buffered(tmp_path: Path) -> None:
    with NodeProcess(tmp_path / "var", env={"CXR_NODE_MAX_PDU_SIZE": "65536"}) as node:
        assert node.process is not None
        before = peak_rss_bytes(node.process.pid)
        peer = RawAssociation.open(node.port, [(DX_FOR_PRESENTATION, [EXPLICIT_VR_LE])])
        announced = 300 * MIB
        peer.sock.sendall(b"\x04\x00" + announced.to_bytes(4, "big"))
        sent = _stream_until_cut(peer, 300, lambda _i: ZEROS)
        peer.sock.close()
        growth = peak_rss_bytes(node.process.pid) - before
        log = node.log_text()
    print(f"P-DATA of {announced // MIB} MiB announced: cut after {sent} MiB sent, peak RSS grew {growth / MIB:.1f} MiB")
    assert sent < 32, f"the listener read {sent} MiB of a PDU over the maximum length"
    assert growth < 32 * MIB
    assert "longer than the limit of 65536 (CXR_NODE_MAX_PDU_SIZE)" in log


def test_an_instance_over_the_size_limit_is_aborted_while_it_arrives(tmp_path: Path) -> None:
    made = make_instance(tmp_path / "dx.dcm", size=16)
    with NodeProcess(tmp_path / "var", env={"CXR_NODE_MAX_INSTANCE_BYTES": str(10 * MIB)}) as node:
        assert node.process is not None
        before = peak_rss_bytes(node.process.pid)
        peer = RawAssociation.open(node.port, [(DX_FOR_PRESENTATION, [EXPLICIT_VR_LE])])
        context = peer.context_for(DX_FOR_PRESENTATION)
        peer.sock.sendall(p_data_tf(context, (COMMAND_LAST, c_store_rq(DX_FOR_PRESENTATION, made.identity.sop_instance_uid))))
        sent = _stream_until_cut(peer, 300, lambda _i: p_data_tf(context, (DATA, ZEROS)))  # a 300 MiB data set
        peer.sock.close()
        growth = peak_rss_bytes(node.process.pid) - before
        spool = node.data_dir / "spool"
        kept = [p for p in spool.rglob("*") if p.is_file()]
        log = node.log_text()
    print(f"300 MiB instance against a 10 MiB limit: cut after {sent} MiB, peak RSS grew {growth / MIB:.1f} MiB")
    assert sent < 40, f"the listener took {sent} MiB of an instance over its 10 MiB limit"
    assert growth < 48 * MIB
    assert kept == [], f"left on disk: {kept}"
    assert "(CXR_NODE_MAX_INSTANCE_BYTES) while still arriving" in log


def _deflate_bomb(made_path: Path, inflated_pixels: int) -> bytes:
    """A DX data set, Deflated Explicit VR Little Endian, whose Pixel Data inflates to ``inflated_pixels`` zeros."""
    ds = dcmread(made_path)
    del ds.PixelData
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    head = buffer.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + inflated_pixels.to_bytes(4, "little")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(head)]
    block = bytes(16 * MIB)
    for _ in range(inflated_pixels // len(block)):
        parts.append(deflater.compress(block))
    parts.append(deflater.flush())
    return b"".join(parts)


def test_a_deflate_bomb_is_refused_without_inflating_it_whole(tmp_path: Path) -> None:
    made = make_instance(tmp_path / "dx.dcm", size=16)
    bomb = _deflate_bomb(made.path, 1024 * MIB)
    with NodeProcess(tmp_path / "var", env={"CXR_NODE_MAX_INSTANCE_BYTES": str(10 * MIB)}) as node:
        assert node.process is not None
        before = peak_rss_bytes(node.process.pid)
        peer = RawAssociation.open(node.port, [(DX_FOR_PRESENTATION, [DeflatedExplicitVRLittleEndian])])
        peer.send_c_store(peer.context_for(DX_FOR_PRESENTATION), DX_FOR_PRESENTATION, made.identity.sop_instance_uid, bomb)
        status = peer.read_status()
        peer.release()
        growth = peak_rss_bytes(node.process.pid) - before
    print(f"deflate bomb of {len(bomb) / MIB:.2f} MiB inflating to 1 GiB: status 0x{status or 0:04X}, peak RSS grew {growth / MIB:.1f} MiB")
    assert status == statuses.OUT_OF_RESOURCES_INFLATED_TOO_LARGE
    assert growth < 64 * MIB
