"""Deliveries after an outage, against a real Orthanc: they go as soon as the PACS answers, not when each backoff ends.

Also the deliveries whose wake-up was never sent (the broker was down when their job
finished): the node's sweep sends them within seconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from node.db import Database
from node.db.schema import Delivery, DeliveryAttempt, as_utc
from node.delivery.records import create_deliveries
from node.delivery.sweep import DeliverySweeper
from node.delivery.task import deliver_now, enqueue_deliveries, group_by_destination
from node.settings import RemoteNode, Settings
from node.tasks.dispatch import InProcessDispatcher
from tests.node.delivery.conftest import StudyFiles, make_study_with_outputs
from tests.support.orthanc import OrthancServer
from tests.support.polling import wait_for

#: Long enough that waiting it out would fail every "within seconds" assertion below.
BACKOFF_S = 60.0


@pytest.fixture
def slow_retries(settings: Settings) -> Settings:
    """The test settings with a long backoff and the node's default sweep and probe intervals."""
    return Settings(
        **{**settings.model_dump(), "delivery_backoff_seconds": BACKOFF_S, "delivery_backoff_max_seconds": 600}
    )


@pytest.fixture
def dispatcher(slow_retries: Settings, database: Database) -> Iterator[InProcessDispatcher]:
    """In-process task threads; the deliver task is registered by importing node.delivery.task above."""
    d = InProcessDispatcher(slow_retries, database)
    yield d
    d.shutdown(wait=True)


def deliveries(database: Database) -> list[Delivery]:
    with database.session() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def attempt_counts(database: Database) -> Counter[int]:
    with database.session() as session:
        return Counter(session.scalars(select(DeliveryAttempt.delivery_id)))


def studies_with_deliveries(
    database: Database, settings: Settings, destination: RemoteNode, count: int
) -> list[tuple[StudyFiles, list[int]]]:
    """``count`` done studies of two outputs each, with their pending deliveries (not woken)."""
    studies = []
    for _ in range(count):
        files = make_study_with_outputs(database, settings, count=2)
        with database.session() as session:
            studies.append((files, create_deliveries(session, files.output_ids, [destination])))
    return studies


def stored_once(pacs: OrthancServer, studies: list[tuple[StudyFiles, list[int]]]) -> bool:
    """Orthanc holds each study's objects, each once."""
    return all(sorted(pacs.sop_instance_uids(s.study_instance_uid)) == sorted(s.sop_instance_uids) for s, _ in studies)


@pytest.mark.slow
def test_deliveries_backing_off_for_a_pacs_that_was_down_all_go_within_seconds_of_it_answering_again(
    database: Database, slow_retries: Settings, dispatcher: InProcessDispatcher, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="node.delivery.probe")
    pacs = OrthancServer(tmp_path / "orthanc")  # ports chosen, not started: the PACS is down
    destination = RemoteNode(pacs.aet, "127.0.0.1", pacs.dicom_port)
    studies = studies_with_deliveries(database, slow_retries, destination, count=3)
    for _, ids in studies:  # one wake-up per finished job, as process_study sends them
        enqueue_deliveries(dispatcher, group_by_destination(database, ids))
    wait_for(lambda: all(d.attempts == 1 and d.waiting_for_destination for d in deliveries(database)), "a failed attempt each")
    sweeper = DeliverySweeper(database, dispatcher, settings=slow_retries)
    sweeper.start()
    try:
        time.sleep(2.5 * slow_retries.delivery_probe_interval_seconds)  # two probes or more find it down
        pacs.start()  # back, on the same port
        back = time.monotonic()
        remaining = min((as_utc(d.next_attempt_at) - dt.datetime.now(dt.timezone.utc)).total_seconds() for d in deliveries(database))
        wait_for(lambda: all(d.state == "delivered" for d in deliveries(database)), "every delivery", timeout=BACKOFF_S)
        catch_up = time.monotonic() - back
        assert stored_once(pacs, studies)
        assert pacs.instance_count() == 6
    finally:
        sweeper.stop()
        pacs.stop(graceful=False)
    print(f"all 6 deliveries stored {catch_up:.2f} s after the PACS was back (backoff left: {remaining:.0f} s)")
    assert remaining > 40
    assert catch_up < slow_retries.delivery_probe_interval_seconds + 5, catch_up
    assert all(d.attempts == 2 for d in deliveries(database))  # one failure, one success: nothing wasted
    assert set(attempt_counts(database).values()) == {2}
    said = [r.getMessage() for r in caplog.records if destination.host in r.getMessage()]
    assert len([m for m in said if "does not answer" in m]) == 1, said  # once, though probed several times
    assert len([m for m in said if "answers again" in m]) == 1, said


@pytest.mark.slow
def test_a_send_that_succeeds_wakes_every_delivery_waiting_for_that_destination(
    database: Database, slow_retries: Settings, dispatcher: InProcessDispatcher, tmp_path: Path
) -> None:
    pacs = OrthancServer(tmp_path / "orthanc")
    destination = RemoteNode(pacs.aet, "127.0.0.1", pacs.dicom_port)
    waiting = studies_with_deliveries(database, slow_retries, destination, count=2)
    for _, ids in waiting:
        deliver_now(database, slow_retries, ids, dispatcher=dispatcher)  # PACS down: each backs off for 60 s
    assert all(d.attempts == 1 and d.state == "pending" for d in deliveries(database))
    with pacs:
        fresh = studies_with_deliveries(database, slow_retries, destination, count=1)
        started = time.monotonic()
        deliver_now(database, slow_retries, fresh[0][1], dispatcher=dispatcher)  # a new job's delivery: it succeeds
        wait_for(lambda: all(d.state == "delivered" for d in deliveries(database)), "the waiting deliveries", timeout=30)
        catch_up = time.monotonic() - started
        assert stored_once(pacs, waiting + fresh)
    print(f"4 waiting deliveries stored {catch_up:.2f} s after a send to their destination succeeded")
    assert catch_up < 10


@pytest.mark.slow
def test_deliveries_whose_wake_up_was_never_sent_go_out_via_the_sweep_within_seconds(
    database: Database, slow_retries: Settings, dispatcher: InProcessDispatcher, tmp_path: Path
) -> None:
    with OrthancServer(tmp_path / "orthanc") as pacs:
        destination = RemoteNode(pacs.aet, "127.0.0.1", pacs.dicom_port)
        studies = studies_with_deliveries(database, slow_retries, destination, count=2)  # committed, never woken
        with database.session() as session:
            session.get(Delivery, deliveries(database)[0].id).next_attempt_at = None
        sweeper = DeliverySweeper(database, dispatcher, settings=slow_retries)  # the node's default sweep
        started = time.monotonic()
        sweeper.start()
        try:
            wait_for(lambda: all(d.state == "delivered" for d in deliveries(database)), "the sweep's deliveries", timeout=30)
            elapsed = time.monotonic() - started
            assert stored_once(pacs, studies)
        finally:
            sweeper.stop()
    print(f"4 never-woken deliveries stored {elapsed:.2f} s after the sweeper started")
    limit = slow_retries.delivery_sweep_interval_seconds + slow_retries.delivery_sweep_grace_seconds + 4
    assert elapsed < limit, elapsed
    assert set(attempt_counts(database).values()) == {1}
