"""The ``deliver`` task end to end against Orthanc: storing, retrying with backoff, giving up, resending."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from node.constants import DeliveryState, StudyState
from node.db import Database, Study
from node.db.schema import Delivery, DeliveryAttempt
from node.delivery.records import as_utc, create_deliveries
from node.delivery.task import deliver_now, enqueue_deliveries, group_by_destination, plan_resend, sweep_overdue
from node.settings import RemoteNode, Settings
from node.tasks.dispatch import InProcessDispatcher
from tests.node.delivery.conftest import StudyFiles, make_study_with_outputs
from tests.support.orthanc import OrthancServer, free_port
from tests.support.polling import wait_for

DEADLINE_S = 30.0


def deliveries(database: Database) -> list[Delivery]:
    with database.session() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def attempts_of(database: Database, delivery_id: int) -> list[DeliveryAttempt]:
    with database.session() as session:
        return list(
            session.scalars(select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery_id).order_by(DeliveryAttempt.number))
        )


def start_deliveries(database: Database, files: StudyFiles, destination: RemoteNode) -> list[int]:
    with database.session() as session:
        return create_deliveries(session, files.output_ids, [destination])


@pytest.fixture
def dispatcher(settings: Settings, database: Database) -> Iterator[InProcessDispatcher]:
    import node.delivery.task  # noqa: F401 - registers the deliver task

    d = InProcessDispatcher(settings, database)
    yield d
    d.shutdown(wait=True)


@pytest.mark.slow
def test_delivery_to_orthanc_stores_the_objects_and_marks_the_study_delivered(
    database: Database, settings: Settings, study_files: StudyFiles, tmp_path: Path
) -> None:
    with OrthancServer(tmp_path / "orthanc") as pacs:
        destination = RemoteNode(pacs.aet, "127.0.0.1", pacs.dicom_port)
        ids = start_deliveries(database, study_files, destination)
        report = deliver_now(database, settings, ids)
        assert report["states"] == {"delivered": 2}
        assert sorted(pacs.sop_instance_uids(study_files.study_instance_uid)) == sorted(study_files.sop_instance_uids)
    rows = deliveries(database)
    assert [r.state for r in rows] == ["delivered", "delivered"]
    assert all(r.attempts == 1 and r.last_status == 0 for r in rows)
    assert [(a.number, a.status, a.error) for a in attempts_of(database, rows[0].id)] == [(1, 0, None)]
    with database.session() as session:
        assert session.scalar(select(Study.state)) == StudyState.DELIVERED.value


@pytest.mark.slow
def test_pacs_down_is_retried_with_backoff_and_succeeds_once_it_is_back(
    database: Database, settings: Settings, study_files: StudyFiles, dispatcher: InProcessDispatcher, tmp_path: Path
) -> None:
    pacs = OrthancServer(tmp_path / "orthanc")  # ports chosen, not started: the PACS is down
    destination = RemoteNode(pacs.aet, "127.0.0.1", pacs.dicom_port)
    ids = start_deliveries(database, study_files, destination)
    enqueue_deliveries(dispatcher, group_by_destination(database, ids))
    wait_for(lambda: all(r.attempts >= 3 for r in deliveries(database)), "three failed attempts")
    assert all(r.state == DeliveryState.PENDING.value for r in deliveries(database))
    try:
        pacs.start()  # back, on the same port
        wait_for(lambda: all(r.state == "delivered" for r in deliveries(database)), "delivery once the PACS is back")
        assert sorted(pacs.sop_instance_uids(study_files.study_instance_uid)) == sorted(study_files.sop_instance_uids)
    finally:
        pacs.stop(graceful=False)
    log = attempts_of(database, ids[0])
    assert len(log) >= 4
    assert all(a.status is None and "could not associate" in (a.error or "") for a in log[:-1])
    assert (log[-1].status, log[-1].error) == (0, None)
    gaps = [(as_utc(b.started_at) - as_utc(a.finished_at)).total_seconds() for a, b in zip(log, log[1:])]
    expected = [min(0.2 * 2**n, 0.8) for n in range(len(gaps))]
    # Each wait is at least its backoff delay (less the claim tolerance), doubling up to the ceiling.
    assert all(gap >= want - 0.05 for gap, want in zip(gaps[:3], expected[:3])), (gaps, expected)
    assert gaps[2] > gaps[0]


def test_exhausted_attempts_fail_the_delivery_with_the_reason(
    database: Database, study_files: StudyFiles, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "var", delivery_backoff_seconds=0.05, delivery_backoff_max_seconds=0.05,
        delivery_max_attempts=3, acse_timeout=2,
    )
    ids = start_deliveries(database, study_files, RemoteNode("PACS", "127.0.0.1", free_port()))
    for _ in range(3):
        deliver_now(database, settings, ids)
        time.sleep(0.06)  # the backoff delay itself: the next attempt is due only after it
    rows = deliveries(database)
    assert [r.state for r in rows] == ["failed", "failed"]
    assert all(r.attempts == 3 for r in rows)
    assert rows[0].last_error.startswith("gave up after 3 attempt(s): could not associate")
    assert len(attempts_of(database, rows[0].id)) == 3
    deliver_now(database, settings, ids)  # a late wake-up changes nothing
    assert len(attempts_of(database, rows[0].id)) == 3
    with database.session() as session:
        assert session.scalar(select(Study.state)) == StudyState.FAILED.value


def test_a_delivery_that_is_not_due_is_not_sent_early(
    database: Database, settings: Settings, study_files: StudyFiles
) -> None:
    ids = start_deliveries(database, study_files, RemoteNode("PACS", "127.0.0.1", free_port()))
    deliver_now(database, Settings(data_dir=settings.data_dir, delivery_backoff_seconds=60, acse_timeout=2), ids)
    report = deliver_now(database, settings, ids)  # a duplicate wake-up right after the failure
    assert report["claimed"] == 0
    assert all(len(attempts_of(database, i)) == 1 for i in ids)


def test_the_sweep_wakes_only_overdue_deliveries(
    database: Database, settings: Settings, study_files: StudyFiles
) -> None:
    ids = start_deliveries(database, study_files, RemoteNode("PACS", "127.0.0.1", 104))
    woken: list[tuple] = []

    class Recorder:
        def enqueue(self, name: str, *args, **kwargs) -> None:
            woken.append((name, args))

    assert sweep_overdue(database, Recorder(), grace_seconds=30) == 0
    with database.session() as session:
        for row in session.scalars(select(Delivery)):
            row.next_attempt_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=31)
    assert sweep_overdue(database, Recorder(), grace_seconds=30) == 1
    assert woken == [("cxr_node.deliver", (ids,))]


@pytest.mark.slow
def test_resend_sends_the_same_objects_again_without_duplicates(
    database: Database, settings: Settings, tmp_path: Path
) -> None:
    files = make_study_with_outputs(database, settings, count=2, calling_aet="PACS")
    with OrthancServer(tmp_path / "orthanc", aet="PACS") as pacs:
        pacs_node = RemoteNode("PACS", "127.0.0.1", pacs.dicom_port)
        with_pacs = Settings(**{**settings.model_dump(), "known_pacs": [pacs_node]})
        plan = plan_resend(database, with_pacs, files.study_instance_uid)
        assert plan.delivery_ids_by_destination.keys() == {str(pacs_node)}
        first = deliver_now(database, with_pacs, plan.delivery_ids_by_destination[str(pacs_node)])
        assert first["states"] == {"delivered": 2}
        stored_once = sorted(pacs.sop_instance_uids(files.study_instance_uid))
        again = plan_resend(database, with_pacs, files.study_instance_uid)
        assert again.sop_instance_uids == plan.sop_instance_uids
        assert again.delivery_ids_by_destination == plan.delivery_ids_by_destination  # same rows, not new ones
        second = deliver_now(database, with_pacs, again.delivery_ids_by_destination[str(pacs_node)])
        assert second["states"] == {"delivered": 2}
        assert sorted(pacs.sop_instance_uids(files.study_instance_uid)) == stored_once == sorted(files.sop_instance_uids)
        assert pacs.instance_count() == 2
    rows = deliveries(database)
    assert len(rows) == 2
    assert [len(attempts_of(database, r.id)) for r in rows] == [2, 2]


def test_resend_of_an_unknown_study_says_so(database: Database, settings: Settings) -> None:
    with pytest.raises(LookupError, match="no study 1.2.3"):
        plan_resend(database, settings, "1.2.3")


def test_the_sweeper_thread_wakes_overdue_deliveries_until_stopped(
    database: Database, settings: Settings, study_files: StudyFiles
) -> None:
    from node.delivery.sweep import DeliverySweeper

    ids = start_deliveries(database, study_files, RemoteNode("PACS", "127.0.0.1", 104))
    woken: list[list[int]] = []

    class Recorder:
        def enqueue(self, name: str, *args, **kwargs) -> None:
            woken.append(list(args[0]))

    sweeper = DeliverySweeper(database, Recorder(), interval=0.05, grace_seconds=0)
    sweeper.start()
    try:
        wait_for(lambda: len(woken) >= 2, "two sweeps", timeout=10)
    finally:
        sweeper.stop()
    count = len(woken)
    time.sleep(0.2)  # stopped: no further sweep may come
    assert len(woken) == count
    assert woken[0] == ids


def test_the_start_up_sweep_wakes_due_deliveries_now_and_others_when_due(
    database: Database, settings: Settings, study_files: StudyFiles
) -> None:
    from node.delivery.task import requeue_pending_deliveries
    from node.tasks.context import TaskContext

    ids = start_deliveries(database, study_files, RemoteNode("PACS", "127.0.0.1", 104))
    with database.session() as session:
        later = session.get(Delivery, ids[1])
        later.next_attempt_at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=40)
        session.get(Delivery, ids[0]).state = DeliveryState.PENDING.value
    woken: list[tuple[list[int], float]] = []

    class Recorder:
        def enqueue(self, name: str, *args, countdown: float = 0.0, **kwargs) -> None:
            woken.append((list(args[0]), countdown))

    report = requeue_pending_deliveries(TaskContext(settings, database, Recorder()))  # type: ignore[arg-type]
    assert report == {"pending": 2, "wakeups": 2}
    assert woken[0] == ([ids[0]], 0.0)
    assert woken[1][0] == [ids[1]] and 38 <= woken[1][1] <= 40


@pytest.mark.slow
def test_claims_backoff_and_attempt_records_work_on_postgresql(tmp_path: Path) -> None:
    from tests.support.postgres_server import PostgresServer

    with PostgresServer() as pg:
        database = Database(pg.url)
        database.ensure_schema()
        settings = Settings(
            data_dir=tmp_path / "var", database_url=pg.url, delivery_backoff_seconds=30, delivery_max_attempts=2, acse_timeout=2
        )
        files = make_study_with_outputs(database, settings, count=2)
        ids = start_deliveries(database, files, RemoteNode("PACS", "127.0.0.1", free_port()))
        assert deliver_now(database, settings, ids)["claimed"] == 2
        assert deliver_now(database, settings, ids)["claimed"] == 0  # backing off: not due for 30 s
        rows = deliveries(database)
        assert all(r.state == "pending" and r.attempts == 1 for r in rows)
        wait = (as_utc(rows[0].next_attempt_at) - dt.datetime.now(dt.timezone.utc)).total_seconds()
        assert 25 < wait <= 30
        with database.session() as session:
            for row in session.scalars(select(Delivery)):
                row.next_attempt_at = dt.datetime.now(dt.timezone.utc)
        assert deliver_now(database, settings, ids)["states"] == {"failed": 2}
        assert [a.number for a in attempts_of(database, ids[0])] == [1, 2]
        database.engine.dispose()
