"""Senders racing with one SOP Instance UID: exactly one stores it, the others are told and recorded."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from node.constants import PARTIAL_SUFFIX
from node.db.schema import InstanceConflict
from node.scp import statuses
from node.spool import dataset_sha256
from tests.support.dicom_files import make_instance
from tests.support.listener import Node
from training.dicom_export import RadiographIdentity

SENDERS = 8
ROUNDS = 3


def _dataset_digest(path: Path) -> str:
    return dataset_sha256(path)


@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_racing_senders_of_one_uid_store_exactly_the_winners_bytes(start_node, tmp_path: Path, round_number: int) -> None:  # type: ignore[no-untyped-def]
    node: Node = start_node(max_connections_per_peer=SENDERS + 2, max_associations=SENDERS + 2)
    identity = RadiographIdentity.new()
    files = [make_instance(tmp_path / f"sender-{n}.dcm", identity=identity, seed=n) for n in range(SENDERS)]
    sop_class = str(pydicom.dcmread(files[0].path, stop_before_pixels=True).SOPClassUID)
    syntax = str(pydicom.dcmread(files[0].path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    associations = [node.associate([(sop_class, [syntax])], calling_aet=f"SENDER{n}") for n in range(SENDERS)]
    assert all(a.is_established for a in associations)
    start = threading.Barrier(SENDERS)
    answers: dict[int, int] = {}

    def send(n: int) -> None:
        start.wait()
        answers[n] = int(associations[n].send_c_store(files[n].path).Status)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for association in associations:
        association.release()

    winners = [n for n, status in answers.items() if status == statuses.SUCCESS]
    assert len(winners) == 1, answers
    assert sorted(answers.values()).count(statuses.WARNING_CONFLICTING_DUPLICATE) == SENDERS - 1, answers
    stored = list(node.spool.rglob("*.dcm"))
    assert len(stored) == 1 and not list(node.spool.rglob(f"*{PARTIAL_SUFFIX}")), stored
    assert len(node.instances()) == 1
    # The stored data set is byte-for-byte the winner's (the meta differs: Source AE Title).
    winner_ds = pydicom.dcmread(files[winners[0]].path)
    stored_ds = pydicom.dcmread(stored[0])
    assert stored_ds.PixelData == winner_ds.PixelData
    with node.database.session() as session:
        conflicts = list(session.scalars(select(InstanceConflict)))
    assert len(conflicts) == SENDERS - 1
    assert {c.calling_aet for c in conflicts} == {f"SENDER{n}" for n in range(SENDERS) if n != winners[0]}
    assert {c.stored_sha256 for c in conflicts} == {_dataset_digest(stored[0])}


def test_the_same_data_set_sent_again_is_a_plain_duplicate(node: Node, tmp_path: Path) -> None:
    made = make_instance(tmp_path / "in.dcm")
    sop_class = str(pydicom.dcmread(made.path, stop_before_pixels=True).SOPClassUID)
    syntax = str(pydicom.dcmread(made.path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    answers = []
    for calling in ("FIRST", "SECOND"):  # another sender: other meta, same data set
        association = node.associate([(sop_class, [syntax])], calling_aet=calling)
        answers.append(int(association.send_c_store(made.path).Status))
        association.release()
    assert answers == [statuses.SUCCESS, statuses.SUCCESS]
    with node.database.session() as session:
        assert list(session.scalars(select(InstanceConflict))) == []
