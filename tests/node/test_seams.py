"""The two seams of a study's way: a new output kind and a new destination protocol, each a few lines.

A toy output builder (a copy of the source header as its own object) and a toy sender
(records what it was given) are added to a node's task context and used end to end: the
job builds the toy object next to the SEG and SR, records it, and delivery hands it, with the
others, to the toy sender chosen by the destination's scheme.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select

from node.completion import queue_quiet_studies
from node.constants import DeliveryState, StudyState
from node.db import Database, Study
from node.db.schema import Delivery, OutputObject
from node.delivery.items import StoreItem, StoreOutcome
from node.delivery.senders import DEFAULT_SENDERS, Sender, sender_for
from node.outputs.builders import DEFAULT_BUILDERS, BuildInput, OutputBuilder
from node.settings import RemoteNode, Settings
from node.tasks.dispatch import InProcessDispatcher
from node.tasks.process import process_study
from tests.node.test_pipeline import spool
from training.dicom_export import RadiographIdentity
from training.phantoms import generate_phantom

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


class HeaderCopyBuilder(OutputBuilder):
    """A toy output: the source's study header as a pixel-less object of its own series."""

    kind = "TOY"
    sop_class_uid = SECONDARY_CAPTURE
    transfer_syntaxes = (ExplicitVRLittleEndian,)
    per_policy = False

    def build(self, given: BuildInput) -> Dataset:
        digest = int(hashlib.sha256(str(given.source.SOPInstanceUID).encode()).hexdigest()[:30], 16)
        ds = Dataset()
        ds.StudyInstanceUID = given.source.StudyInstanceUID
        ds.SeriesInstanceUID, ds.SOPInstanceUID = f"2.25.{digest}", f"2.25.{digest + 1}"
        ds.SOPClassUID, ds.Modality = self.sop_class_uid, "OT"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        return ds


class RecordingSender(Sender):
    """A toy protocol: accepts everything and remembers the SOP classes it was handed."""

    scheme = "toy"

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, destination: RemoteNode, items: Sequence[StoreItem], settings: Settings) -> list[StoreOutcome]:
        for item in items:
            self.sent.append((str(destination), str(pydicom.dcmread(item.path).SOPClassUID)))
        return [StoreOutcome(item.sop_instance_uid, 0x0000) for item in items]


def test_a_toy_builder_and_a_toy_sender_are_used_end_to_end(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var", stable_seconds=0, destinations="toy://TOY@127.0.0.1:9", device="cpu")
    database = Database(settings.resolved_database_url)
    database.ensure_schema()
    dispatcher = InProcessDispatcher(settings, database)
    sender = RecordingSender()
    dispatcher.context.builders = (*DEFAULT_BUILDERS, HeaderCopyBuilder())
    dispatcher.context.senders = {**DEFAULT_SENDERS, sender.scheme: sender}
    try:
        study_uid = RadiographIdentity.new().study_instance_uid
        phantom = generate_phantom(256, seed=5)
        spool(settings, database, study_uid, phantom.image, phantom.pixel_spacing_mm)
        (queued,) = queue_quiet_studies(database, settings)

        process_study(queued.job_id, context=dispatcher.context)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with database.session() as session:
                if session.scalar(select(Study.state)) is StudyState.DELIVERED:
                    break
            time.sleep(0.05)
    finally:
        dispatcher.shutdown()

    with database.session() as session:
        kinds = sorted(session.scalars(select(OutputObject.kind)))
        states = set(session.scalars(select(Delivery.state)))
        assert session.scalar(select(Study.state)) is StudyState.DELIVERED
    assert kinds == ["SEG", "SR", "TOY"]
    assert states == {DeliveryState.DELIVERED}
    assert sorted(sop_class for _, sop_class in sender.sent) == sorted(
        ["1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", SECONDARY_CAPTURE]
    )
    assert {destination for destination, _ in sender.sent} == {"toy://TOY@127.0.0.1:9"}


def test_a_destination_whose_scheme_has_no_sender_is_named_with_the_known_ones() -> None:
    with pytest.raises(LookupError, match=r"'dicomweb\+https'.*dicom://"):
        sender_for(RemoteNode.parse("dicomweb+https://PACS@pacs.example:443"))


def test_plain_and_dicom_scheme_destinations_are_the_same_peer() -> None:
    assert RemoteNode.parse("dicom://PACS@10.0.0.5:104") == RemoteNode.parse("PACS@10.0.0.5:104")
    assert str(RemoteNode.parse("dicom://PACS@10.0.0.5:104")) == "PACS@10.0.0.5:104"
