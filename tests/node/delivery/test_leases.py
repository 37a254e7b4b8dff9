"""Delivery claims: short leases kept alive by a heartbeat, conditional claims, early wake-ups, the sweep's view.

Database logic on SQLite (and the concurrent claim on PostgreSQL too); outcomes are made up
here because what is under test is what the records do with them.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence

import pytest
from sqlalchemy import select

from node.db import Database
from node.db.schema import Delivery, DeliveryAttempt, as_utc, utcnow
from node.delivery.items import StoreItem, StoreOutcome
from node.delivery.lease import LeaseHeartbeat
from node.delivery.policy import RetryPolicy
from node.delivery.records import (
    ClaimedDelivery,
    claim_due,
    create_deliveries,
    pending_by_destination,
    record_outcomes,
    renew_lease,
    waiting_destinations,
    wake_waiting,
)
from node.delivery.senders import Sender
from node.delivery.task import deliver_now
from node.settings import RemoteNode, Settings
from tests.node.delivery.conftest import StudyFiles, make_study_with_outputs

PACS = RemoteNode("PACS", "127.0.0.1", 104)
OTHER = RemoteNode("OTHER", "127.0.0.1", 105)
POLICY = RetryPolicy(base_seconds=60, max_seconds=600, max_attempts=3)
DOWN = "could not associate with PACS@127.0.0.1:104: connection refused, unreachable or no answer in time"


def new_deliveries(database: Database, files: StudyFiles, *destinations: RemoteNode) -> list[int]:
    with database.session() as session:
        return create_deliveries(session, files.output_ids, list(destinations or (PACS,)))


def rows(database: Database) -> dict[int, Delivery]:
    with database.session() as session:
        return {row.id: row for row in session.scalars(select(Delivery))}


def claim(database: Database, settings: Settings, ids: list[int], lease: float = 30.0) -> list[ClaimedDelivery]:
    return claim_due(database, ids, lease_seconds=lease, output_dir=settings.output_dir)


def fail(database: Database, claims: list[ClaimedDelivery], *, unreachable: bool, status: int | None = None) -> None:
    outcomes = [
        StoreOutcome(c.item.sop_instance_uid, status, DOWN if unreachable else "PACS answered 0xA700", unreachable=unreachable)
        for c in claims
    ]
    record_outcomes(database, claims, outcomes, policy=POLICY, started_at=utcnow())


def test_a_live_claim_is_not_claimed_again_and_an_expired_one_is(
    database: Database, settings: Settings, study_files: StudyFiles
) -> None:
    ids = new_deliveries(database, study_files)
    first = claim(database, settings, ids)
    assert [c.delivery_id for c in first] == ids
    assert claim(database, settings, ids) == []  # the first worker is alive: its lease holds
    assert pending_by_destination(database, overdue_seconds=0) == {}  # and the sweep leaves it alone
    with database.session() as session:
        for row in session.scalars(select(Delivery)):
            row.claimed_until = utcnow() - dt.timedelta(seconds=1)  # its worker died; the lease ran out
    assert pending_by_destination(database, overdue_seconds=0) == {str(PACS): ids}
    second = claim(database, settings, ids)
    assert [c.delivery_id for c in second] == ids and second[0].token != first[0].token
    assert renew_lease(database, first[0].token, 30) == 0  # the first holder has lost it
    assert renew_lease(database, second[0].token, 30) == 2


def test_the_heartbeat_keeps_a_slow_send_claimed_past_its_lease_and_stops_with_it(
    database: Database, settings: Settings, study_files: StudyFiles
) -> None:
    ids = new_deliveries(database, study_files)
    claims = claim(database, settings, ids, lease=0.6)
    stolen: list[int] = []
    with LeaseHeartbeat(database, claims[0].token, 0.6, interval=0.1) as heartbeat:
        deadline = time.monotonic() + 2.0  # more than three leases long
        while time.monotonic() < deadline:
            stolen += [c.delivery_id for c in claim(database, settings, ids)]
            time.sleep(0.05)
    assert stolen == []
    assert heartbeat.renewals >= 10
    time.sleep(0.7)  # no heartbeat any more: the lease runs out
    assert [c.delivery_id for c in claim(database, settings, ids)] == ids


def test_of_workers_claiming_the_same_deliveries_at_once_exactly_one_gets_each(
    database: Database, settings: Settings
) -> None:
    for round_ in range(15):
        files = make_study_with_outputs(database, settings, count=3)
        ids = new_deliveries(database, files)
        won: list[list[int]] = []
        barrier = threading.Barrier(4)

        def worker() -> None:
            barrier.wait()
            won.append([c.delivery_id for c in claim(database, settings, ids)])

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(i for got in won for i in got) == ids, (round_, won)


def test_an_outcome_recorded_after_the_lease_was_taken_over_is_history_only(
    database: Database, settings: Settings, study_files: StudyFiles
) -> None:
    ids = new_deliveries(database, study_files)
    late = claim(database, settings, ids, lease=0.01)
    time.sleep(0.05)
    current = claim(database, settings, ids)
    fail(database, late, unreachable=True)
    for row in rows(database).values():
        assert (row.state, row.attempts, row.claim_token) == ("pending", 0, current[0].token)
    with database.session() as session:
        assert len(list(session.scalars(select(DeliveryAttempt)))) == 2  # both attempts are in the history


def test_only_deliveries_that_found_their_destination_down_are_woken_when_it_answers(
    database: Database, settings: Settings, study_files: StudyFiles
) -> None:
    down_ids = new_deliveries(database, study_files)
    content = make_study_with_outputs(database, settings, count=1)
    content_ids = new_deliveries(database, content)
    elsewhere = new_deliveries(database, make_study_with_outputs(database, settings, count=1), OTHER)
    fail(database, claim(database, settings, down_ids), unreachable=True)
    fail(database, claim(database, settings, content_ids), unreachable=False, status=0xA700)
    fail(database, claim(database, settings, elsewhere), unreachable=True)
    assert waiting_destinations(database) == {str(PACS): 2, str(OTHER): 1}

    assert wake_waiting(database, str(PACS)) == down_ids
    assert wake_waiting(database, str(PACS)) == []  # woken once
    after = rows(database)
    assert all(after[i].woken_early_at is not None for i in down_ids)
    assert after[content_ids[0]].woken_early_at is None  # its failure was about the object: it keeps its backoff
    assert after[elsewhere[0]].woken_early_at is None
    assert [c.delivery_id for c in claim(database, settings, down_ids + content_ids)] == down_ids


def test_an_early_attempt_that_finds_the_destination_down_again_is_not_counted_and_keeps_the_schedule(
    database: Database, settings: Settings, study_files: StudyFiles
) -> None:
    ids = new_deliveries(database, study_files)
    fail(database, claim(database, settings, ids), unreachable=True)
    scheduled = {i: as_utc(r.next_attempt_at) for i, r in rows(database).items()}
    assert all(r.attempts == 1 and r.waiting_for_destination for r in rows(database).values())

    wake_waiting(database, str(PACS))
    early = claim(database, settings, ids)
    assert all(c.woken_early for c in early)
    fail(database, early, unreachable=True)  # it was up for the probe, down again for the send
    for i, row in rows(database).items():
        assert row.attempts == 1  # not counted against max_attempts
        assert as_utc(row.next_attempt_at) == scheduled[i]  # the backoff schedule it had
        assert not row.waiting_for_destination and row.woken_early_at is None and row.claim_token is None
    assert wake_waiting(database, str(PACS)) == []  # not woken early again before that attempt
    with database.session() as session:
        assert len(list(session.scalars(select(DeliveryAttempt)))) == 4  # both attempts of each are recorded

    with database.session() as session:  # the scheduled attempt falls due and fails: counted, as the policy says
        for row in session.scalars(select(Delivery)):
            row.next_attempt_at = utcnow()
    fail(database, claim(database, settings, ids), unreachable=True)
    assert all(r.attempts == 2 and r.waiting_for_destination for r in rows(database).values())


def test_the_sweep_finds_never_woken_early_woken_and_abandoned_deliveries_but_not_live_or_backing_off_ones(
    database: Database, settings: Settings
) -> None:
    now = utcnow()
    ids = new_deliveries(database, make_study_with_outputs(database, settings, count=6))
    never_set, never_woken, woken_lost, abandoned, live, backing_off = ids
    with database.session() as session:
        for row in session.scalars(select(Delivery)):
            row.next_attempt_at = now - dt.timedelta(seconds=10)
        session.get(Delivery, never_set).next_attempt_at = None
        session.get(Delivery, woken_lost).next_attempt_at = now + dt.timedelta(seconds=300)
        session.get(Delivery, woken_lost).woken_early_at = now - dt.timedelta(seconds=10)
        session.get(Delivery, abandoned).claimed_until = now - dt.timedelta(seconds=1)
        session.get(Delivery, live).claimed_until = now + dt.timedelta(seconds=5)
        session.get(Delivery, backing_off).next_attempt_at = now + dt.timedelta(seconds=300)
    overdue = pending_by_destination(database, overdue_seconds=2)
    assert overdue == {str(PACS): [never_set, never_woken, woken_lost, abandoned]}
    assert pending_by_destination(database, overdue_seconds=60) == {str(PACS): [never_set, abandoned]}


@pytest.mark.slow
def test_concurrent_claims_and_the_heartbeat_work_on_postgresql(settings: Settings) -> None:
    from tests.support.postgres_server import PostgresServer

    with PostgresServer() as pg:
        database = Database(pg.url)
        database.ensure_schema()
        for round_ in range(10):
            ids = new_deliveries(database, make_study_with_outputs(database, settings, count=3))
            won: list[list[int]] = []
            barrier = threading.Barrier(4)

            def worker() -> None:
                engine = Database(pg.url)  # each worker process has its own connections
                barrier.wait()
                won.append([c.delivery_id for c in claim(engine, settings, ids, lease=0.5)])
                engine.engine.dispose()

            threads = [threading.Thread(target=worker) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(i for got in won for i in got) == ids, (round_, won)
        time.sleep(0.6)  # the last round's leases run out
        again = claim(database, settings, ids, lease=0.5)
        assert [c.delivery_id for c in again] == ids
        with LeaseHeartbeat(database, again[0].token, 0.5, interval=0.1):
            time.sleep(1.2)
            assert claim(database, settings, ids) == []
        database.engine.dispose()


class RaisingSender(Sender):
    """A sender with a bug: it raises instead of answering outcomes."""

    scheme = "dicom"

    def send(self, destination: RemoteNode, items: Sequence[StoreItem], settings: Settings) -> list[StoreOutcome]:
        raise RuntimeError("sender bug")


def test_a_sender_that_raises_costs_an_attempt_and_releases_the_claim_instead_of_looping_every_lease(
    database: Database, settings: Settings, study_files: StudyFiles
) -> None:
    ids = new_deliveries(database, study_files)
    report = deliver_now(database, settings, ids, senders={"dicom": RaisingSender()})
    assert report["states"] == {"pending": 2}
    for row in rows(database).values():
        assert (row.attempts, row.claim_token, row.claimed_until) == (1, None, None)
        assert row.last_error == f"could not send to {PACS}: sender bug"
        assert not row.waiting_for_destination  # not known to be the destination's fault
