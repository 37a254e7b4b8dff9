"""Destination probes: wake on a down-to-up transition only, log each transition once, skip what cannot be probed."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from node.db import Database
from node.db.schema import utcnow
from node.delivery.items import StoreItem, StoreOutcome
from node.delivery.policy import RetryPolicy
from node.delivery.probe import DestinationProbe
from node.delivery.records import claim_due, create_deliveries, record_outcomes
from node.delivery.senders import DicomStoreSender, Sender
from node.settings import RemoteNode, Settings
from tests.node.delivery.conftest import StudyFiles
from tests.support.orthanc import free_port

PACS = RemoteNode("PACS", "127.0.0.1", 104)


class ScriptedSender(Sender):
    """Answers probes from a script (True: the destination answers); never asked to send here."""

    scheme = "dicom"

    def __init__(self, answers: Sequence[bool | None]) -> None:
        self.answers = list(answers)
        self.probed = 0

    def send(self, destination: RemoteNode, items: Sequence[StoreItem], settings: Settings) -> list[StoreOutcome]:
        raise AssertionError("probes never send")

    def probe(self, destination: RemoteNode, settings: Settings) -> bool | None:
        self.probed += 1
        return self.answers.pop(0)


class SilentSender(ScriptedSender):
    """A protocol without probes: the base class's ``probe``."""

    def probe(self, destination: RemoteNode, settings: Settings) -> bool | None:
        return Sender.probe(self, destination, settings)


class Recorder:
    def __init__(self) -> None:
        self.woken: list[list[int]] = []

    def enqueue(self, name: str, *args: object, **kwargs: object) -> None:
        self.woken.append(list(args[0]))  # type: ignore[call-overload]


def waiting_deliveries(database: Database, settings: Settings, files: StudyFiles) -> list[int]:
    """Deliveries to PACS whose one attempt found it unreachable, backing off for 60 s."""
    with database.session() as session:
        ids = create_deliveries(session, files.output_ids, [PACS])
    claims = claim_due(database, ids, lease_seconds=30, output_dir=settings.output_dir)
    outcomes = [StoreOutcome(c.item.sop_instance_uid, None, "down", unreachable=True) for c in claims]
    record_outcomes(database, claims, outcomes, policy=RetryPolicy(60, 600, 8), started_at=utcnow())
    return ids


def test_waiting_deliveries_are_woken_once_when_their_destination_answers_after_it_did_not(
    database: Database, settings: Settings, study_files: StudyFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="node.delivery.probe")
    ids = waiting_deliveries(database, settings, study_files)
    dispatcher = Recorder()
    sender = ScriptedSender([False, False, False, True, True])
    probe = DestinationProbe(database, dispatcher, settings, {"dicom": sender})
    results = [probe.probe_once() for _ in range(3)]
    assert results == [{}, {}, {}] and dispatcher.woken == []
    assert probe.probe_once() == {str(PACS): ids}
    assert dispatcher.woken == [ids]  # one wake-up for the destination
    assert probe.probe_once() == {}  # woken: nothing waits any more, so it is not even probed
    assert sender.probed == 4
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "does not answer" in m] == [
        f"destination {PACS} does not answer; 2 delivery(ies) wait for it (probed every 5 s)"
    ]
    assert len([m for m in messages if "answers again" in m]) == 1


def test_a_destination_that_keeps_answering_while_its_deliveries_fail_is_not_probed_into_a_retry_loop(
    database: Database, settings: Settings, study_files: StudyFiles
) -> None:
    ids = waiting_deliveries(database, settings, study_files)
    dispatcher = Recorder()
    probe = DestinationProbe(database, dispatcher, settings, {"dicom": ScriptedSender([True] * 5)})
    assert probe.probe_once() == {str(PACS): ids}  # first seen answering: one early try
    claims = claim_due(database, ids, lease_seconds=30, output_dir=settings.output_dir)
    outcomes = [StoreOutcome(c.item.sop_instance_uid, None, "down again", unreachable=True) for c in claims]
    record_outcomes(database, claims, outcomes, policy=RetryPolicy(60, 600, 8), started_at=utcnow())
    assert [probe.probe_once() for _ in range(3)] == [{}, {}, {}]  # it waits for its scheduled attempt now
    assert dispatcher.woken == [ids]


def test_a_protocol_without_probes_is_left_to_its_backoff(
    database: Database, settings: Settings, study_files: StudyFiles
) -> None:
    waiting_deliveries(database, settings, study_files)
    dispatcher = Recorder()
    probe = DestinationProbe(database, dispatcher, settings, {"dicom": SilentSender([])})
    assert probe.probe_once() == {} and dispatcher.woken == [] and probe.answered == {}


def test_the_dicom_probe_is_c_echo_and_says_false_for_a_closed_port(settings: Settings, recording_scp) -> None:  # type: ignore[no-untyped-def]
    sender = DicomStoreSender()
    assert sender.probe(RemoteNode.parse(recording_scp.node), settings) is True
    assert sender.probe(RemoteNode("PACS", "127.0.0.1", free_port()), settings) is False
    assert sender.probe(RemoteNode("WRONGAET", "127.0.0.1", recording_scp.port), settings) is False  # A-ASSOCIATE-RJ
    assert recording_scp.received == []  # C-ECHO stores nothing
