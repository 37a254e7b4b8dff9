"""The progressive writer: data set fragments reach the disk while they arrive, with File Meta;
mismatches and unfinished transfers leave nothing behind."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem

from node.constants import PARTIAL_SUFFIX
from node.scp.incoming import IncomingWriter
from tests.support.dicom_files import make_instance

CONTEXT_ID = 3
COMMAND, COMMAND_LAST, DATA, DATA_LAST = 0x01, 0x03, 0x00, 0x02


def _command(sop_class: str | None, sop_instance: str | None) -> bytes:
    ds = Dataset()
    ds.CommandGroupLength = 0
    if sop_class:
        ds.AffectedSOPClassUID = sop_class
    ds.CommandField = 0x0001
    ds.MessageID = 1
    ds.CommandDataSetType = 0x0000
    if sop_instance:
        ds.AffectedSOPInstanceUID = sop_instance
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _pdu(*fragments: tuple[int, bytes]) -> P_DATA_TF:
    pdu = P_DATA_TF()
    for header, payload in fragments:
        item = PresentationDataValueItem()
        item.presentation_context_id = CONTEXT_ID
        item.presentation_data_value = bytes([header]) + payload
        pdu.presentation_data_value_items.append(item)
    return pdu


def _assoc(transfer_syntax: str = ExplicitVRLittleEndian) -> SimpleNamespace:
    context = SimpleNamespace(context_id=CONTEXT_ID, transfer_syntax=[transfer_syntax])
    return SimpleNamespace(accepted_contexts=[context], requestor=SimpleNamespace(ae_title="MODALITY"))


def _send(writer: IncomingWriter, assoc: SimpleNamespace, command: bytes, data: bytes, pieces: int, last: bool = True) -> None:
    writer.on_pdu(SimpleNamespace(assoc=assoc, pdu=_pdu((COMMAND, command[:10]), (COMMAND_LAST, command[10:]))))
    chunks = np.array_split(np.frombuffer(data, np.uint8), pieces)
    for index, chunk in enumerate(chunks):
        header = DATA_LAST if last and index == len(chunks) - 1 else DATA
        writer.on_pdu(SimpleNamespace(assoc=assoc, pdu=_pdu((header, chunk.tobytes()))))


@pytest.fixture
def received(tmp_path: Path):  # type: ignore[no-untyped-def]
    made = make_instance(tmp_path / "in.dcm", size=64)
    _meta, offset = split_dataset(made.path)
    return made, made.path.read_bytes()[offset:]


def test_data_set_is_on_disk_with_its_file_meta_when_the_handler_takes_it(tmp_path: Path, received) -> None:  # type: ignore[no-untyped-def]
    made, data = received
    writer = IncomingWriter(tmp_path / "spool", flush_every_bytes=1024)
    assoc = _assoc()
    _send(writer, assoc, _command(made.sop_class_uid, made.identity.sop_instance_uid), data, pieces=5)

    incoming = writer.take(assoc, made.identity.sop_instance_uid, len(data), ExplicitVRLittleEndian)
    assert incoming is not None and incoming.flush is not None  # a background flush was started
    incoming.finish()
    ds = dcmread(incoming.path)
    assert ds.file_meta.MediaStorageSOPInstanceUID == made.identity.sop_instance_uid
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert np.array_equal(ds.pixel_array, made.pixels)
    assert (writer.taken, writer.missed) == (1, 0)
    writer.close()


@pytest.mark.parametrize("what", ["instance", "length", "transfer syntax"])
def test_a_file_that_does_not_match_the_request_is_discarded(tmp_path: Path, received, what: str) -> None:  # type: ignore[no-untyped-def]
    made, data = received
    writer = IncomingWriter(tmp_path / "spool")
    assoc = _assoc()
    _send(writer, assoc, _command(made.sop_class_uid, made.identity.sop_instance_uid), data, pieces=2)
    request = {
        "instance": ("1.2.3.4", len(data), ExplicitVRLittleEndian),
        "length": (made.identity.sop_instance_uid, len(data) + 2, ExplicitVRLittleEndian),
        "transfer syntax": (made.identity.sop_instance_uid, len(data), "1.2.840.10008.1.2"),
    }[what]
    assert writer.take(assoc, *request) is None
    assert (writer.taken, writer.missed) == (0, 1)
    assert not list(writer.directory.iterdir())
    writer.close()


def test_unfinished_transfer_is_deleted_when_the_association_ends(tmp_path: Path, received) -> None:  # type: ignore[no-untyped-def]
    made, data = received
    writer = IncomingWriter(tmp_path / "spool")
    assoc = _assoc()
    _send(writer, assoc, _command(made.sop_class_uid, made.identity.sop_instance_uid), data, pieces=3, last=False)
    assert len(list(writer.directory.glob(f"*{PARTIAL_SUFFIX}"))) == 1
    writer.on_end(SimpleNamespace(assoc=assoc))
    assert not list(writer.directory.iterdir())
    writer.close()


def test_messages_without_affected_uids_are_not_written(tmp_path: Path, received) -> None:  # type: ignore[no-untyped-def]
    made, data = received
    writer = IncomingWriter(tmp_path / "spool")
    assoc = _assoc()
    _send(writer, assoc, _command(None, None), data, pieces=2)
    assert not list(writer.directory.iterdir())
    assert writer.take(assoc, made.identity.sop_instance_uid, len(data), ExplicitVRLittleEndian) is None
    writer.close()


def test_consecutive_instances_on_one_association_are_kept_apart(tmp_path: Path) -> None:
    writer = IncomingWriter(tmp_path / "spool")
    assoc = _assoc()
    sent = []
    for index in range(3):
        made = make_instance(tmp_path / f"{index}.dcm", size=16, seed=index)
        _meta, offset = split_dataset(made.path)
        data = made.path.read_bytes()[offset:]
        _send(writer, assoc, _command(made.sop_class_uid, made.identity.sop_instance_uid), data, pieces=2)
        sent.append((made, data))
    for made, data in sent:
        incoming = writer.take(assoc, made.identity.sop_instance_uid, len(data), ExplicitVRLittleEndian)
        assert incoming is not None
        incoming.finish()
        assert np.array_equal(dcmread(incoming.path).pixel_array, made.pixels)
    writer.close()


def test_a_data_set_over_the_size_limit_is_dropped_from_disk_while_it_arrives(tmp_path: Path, received) -> None:  # type: ignore[no-untyped-def]
    made, data = received
    writer = IncomingWriter(tmp_path / "spool", max_data_bytes=len(data) // 2)
    assoc = _assoc()
    _send(writer, assoc, _command(made.sop_class_uid, made.identity.sop_instance_uid), data, pieces=4, last=False)
    assert not list(writer.directory.iterdir())
    writer.on_pdu(SimpleNamespace(assoc=assoc, pdu=_pdu((DATA_LAST, b""))))
    assert writer.take(assoc, made.identity.sop_instance_uid, len(data), ExplicitVRLittleEndian) is None
    writer.close()
