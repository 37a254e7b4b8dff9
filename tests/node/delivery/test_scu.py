"""The C-STORE SCU against real peers: a recording pynetdicom SCP and Orthanc."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from node.db import Database
from node.db.schema import OutputObject
from node.delivery.association import AssociationTimeouts
from node.delivery.items import StoreItem
from node.delivery.scu import presentation_contexts, send_files
from node.settings import RemoteNode, Settings
from tests.node.delivery.conftest import make_study_with_outputs
from tests.support.recording_scp import RecordingSCP
from tests.support.orthanc import OrthancServer, free_port


def _items(database: Database, settings: Settings, output_ids: list[int]) -> list[StoreItem]:
    with database.session() as session:
        rows = session.scalars(select(OutputObject).where(OutputObject.id.in_(output_ids)).order_by(OutputObject.id))
        return [
            StoreItem(settings.output_dir / r.path, r.sop_class_uid, r.sop_instance_uid, r.transfer_syntax_uid) for r in rows
        ]


def test_scu_proposes_exactly_one_context_per_sent_class_and_syntax(
    database: Database, settings: Settings, recording_scp: RecordingSCP
) -> None:
    files = make_study_with_outputs(database, settings, count=4, variants=True)
    items = _items(database, settings, files.output_ids)
    outcomes = send_files(RemoteNode.parse(recording_scp.node), items, calling_aet="CXRNODE")
    assert [o.stored for o in outcomes] == [True] * 4
    assert len(recording_scp.proposed) == 1
    proposed = recording_scp.proposed[0]
    expected = {(i.sop_class_uid, (i.transfer_syntax_uid,)) for i in items}
    assert len(expected) == 3  # DX explicit, CR explicit, DX implicit
    assert sorted(proposed) == sorted(expected)
    assert recording_scp.received == [i.sop_instance_uid for i in items]


@pytest.mark.parametrize("status", [0xB000, 0xB007, 0xB006])
def test_storage_warnings_count_as_stored(database: Database, settings: Settings, status: int) -> None:
    scp = RecordingSCP(status=status)
    try:
        files = make_study_with_outputs(database, settings, count=1)
        (outcome,) = send_files(RemoteNode.parse(scp.node), _items(database, settings, files.output_ids), calling_aet="CXRNODE")
    finally:
        scp.stop()
    assert outcome.stored and outcome.status == status and outcome.error is None


def test_a_failure_status_is_not_stored_and_is_explained(database: Database, settings: Settings) -> None:
    scp = RecordingSCP(status=0xA700)
    try:
        files = make_study_with_outputs(database, settings, count=1)
        (outcome,) = send_files(RemoteNode.parse(scp.node), _items(database, settings, files.output_ids), calling_aet="CXRNODE")
    finally:
        scp.stop()
    assert not outcome.stored
    assert outcome.status == 0xA700
    assert "0xA700" in (outcome.error or "")


def test_a_wrong_called_aet_is_reported_as_a_rejected_association(
    database: Database, settings: Settings, recording_scp: RecordingSCP, study_files
) -> None:
    wrong = RemoteNode("NOTTHEPACS", "127.0.0.1", recording_scp.port)
    outcomes = send_files(wrong, _items(database, settings, study_files.output_ids), calling_aet="CXRNODE")
    assert all(not o.stored and o.status is None for o in outcomes)
    assert "rejected the association" in (outcomes[0].error or "")


def test_nothing_listening_is_reported_per_object(database: Database, settings: Settings, study_files) -> None:
    nobody = RemoteNode("PACS", "127.0.0.1", free_port())
    outcomes = send_files(nobody, _items(database, settings, study_files.output_ids), calling_aet="CXRNODE", timeouts=AssociationTimeouts(acse=2))
    assert len(outcomes) == 2
    assert all(not o.stored for o in outcomes)
    assert "could not associate" in (outcomes[0].error or "")


def test_presentation_contexts_refuse_more_than_one_association_holds() -> None:
    items = [StoreItem(Path("x"), f"1.2.3.{i}", f"9.{i}", "1.2.840.10008.1.2.1") for i in range(129)]
    with pytest.raises(ValueError, match="at most 128"):
        presentation_contexts(items)


@pytest.mark.slow
def test_objects_sent_to_orthanc_are_stored_byte_for_byte_in_the_study(
    database: Database, settings: Settings, tmp_path: Path
) -> None:
    files = make_study_with_outputs(database, settings, count=3, variants=True)
    items = _items(database, settings, files.output_ids)
    with OrthancServer(tmp_path / "orthanc") as pacs:
        outcomes = send_files(RemoteNode(pacs.aet, "127.0.0.1", pacs.dicom_port), items, calling_aet="CXRNODE")
        assert [o.status for o in outcomes] == [0x0000] * 3
        assert sorted(pacs.sop_instance_uids(files.study_instance_uid)) == sorted(files.sop_instance_uids)
        stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(pacs.instance_file(items[0].sop_instance_uid)))
        assert stored.SOPInstanceUID == items[0].sop_instance_uid
        assert stored.PixelData == pydicom.dcmread(items[0].path).PixelData
