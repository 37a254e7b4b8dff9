"""A delivery worker killed mid-send, in the production shape: its deliveries go again within seconds, never twice while it lives.

PostgreSQL, Redis, ``cxr-node serve`` (the sweeps) and two ``cxr-node worker --queues delivery``
processes; the destination is a real pynetdicom SCP that takes seconds per object, so the
first worker is caught in the middle of its association, after its lease would have run out
had its heartbeat not renewed it.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from node.constants import QUEUE_DELIVERY
from node.db import Database
from node.db.schema import Delivery, DeliveryAttempt
from node.delivery.records import create_deliveries
from node.settings import RemoteNode, Settings
from tests.node.delivery.conftest import make_study_with_outputs
from tests.support.node_process import NodeProcess, WorkerProcess
from tests.support.polling import wait_for
from tests.support.postgres_server import PostgresServer
from tests.support.recording_scp import RecordingSCP
from tests.support.redis_server import RedisServer

OBJECTS = 4
#: Seconds the SCP takes per object: the first worker's association outlives its 8 s lease.
SLOW_STORE_S = 3.0


@pytest.mark.slow
def test_a_delivery_worker_killed_mid_send_is_resumed_by_another_within_seconds_and_not_doubled_while_alive(
    tmp_path: Path,
) -> None:
    scp = RecordingSCP(delay_seconds=SLOW_STORE_S)
    with PostgresServer() as pg, RedisServer(tmp_path / "redis") as redis:
        node = NodeProcess(tmp_path / "var", env={"CXR_NODE_DATABASE_URL": pg.url, "CXR_NODE_BROKER_URL": redis.url})
        workers = [
            WorkerProcess(node.env, (QUEUE_DELIVERY,), tmp_path / f"delivery-worker-{name}.log") for name in ("a", "b")
        ]
        database = Database(pg.url)
        try:
            node.start()
            for worker in workers:
                worker.start()
            settings = Settings(data_dir=node.data_dir, database_url=pg.url)
            files = make_study_with_outputs(database, settings, count=OBJECTS)
            with database.session() as session:  # a finished job's deliveries whose wake-up was never sent
                ids = create_deliveries(session, files.output_ids, [RemoteNode.parse(scp.node)])
            created = time.monotonic()
            wait_for(lambda: scp.arrivals, "the first object at the SCP", timeout=30)
            woken_after = scp.arrivals[0][0] - created
            sending = wait_for(
                lambda: [w for w in workers if "associating" in w.log_text()], "the worker that sends", timeout=10
            )
            assert len(sending) == 1
            wait_for(lambda: len(scp.arrivals) >= OBJECTS, "the last object in flight", timeout=4 * OBJECTS * SLOW_STORE_S)
            alive_for = time.monotonic() - (scp.arrivals[0][0])
            before_kill = list(scp.arrivals)
            sending[0].kill()  # SIGKILL mid-association: the last object's answer never reaches it
            killed = time.monotonic()
            scp.delay_seconds = 0.05
            wait_for(lambda: all(state == "delivered" for state in states(database)), "every delivery", timeout=60)
            resumed_after = min(t for t, number, _ in scp.arrivals if number > 0) - killed
            done_after = time.monotonic() - killed
        finally:
            for worker in workers:
                worker.kill()
            node.stop()
            scp.stop()
        print(
            f"never-woken deliveries first sent {woken_after:.2f} s after commit; first worker alive "
            f"{alive_for:.1f} s in its association; resumed {resumed_after:.2f} s after SIGKILL, "
            f"all stored {done_after:.2f} s after it"
        )
        # While the first worker lived (longer than its lease), nobody else sent: one association, each object once.
        assert alive_for > Settings().delivery_lease_seconds
        assert {number for _, number, _ in before_kill} == {0}
        assert sorted(uid for _, _, uid in before_kill) == sorted(files.sop_instance_uids)
        # After the kill, one other worker sent every object, each exactly once.
        after = [(number, uid) for _, number, uid in scp.arrivals if number > 0]
        assert len({number for number, _ in after}) == 1
        assert Counter(uid for _, uid in after) == Counter(files.sop_instance_uids)
        assert resumed_after < 15, resumed_after
        assert woken_after < 10, woken_after
        with database.session() as session:
            attempts = Counter(session.scalars(select(DeliveryAttempt.delivery_id)))
        assert attempts == Counter(ids)  # the killed attempt left no record; the resumed one is the first
        database.engine.dispose()


def states(database: Database) -> list[str]:
    with database.session() as session:
        return [str(s) for s in session.scalars(select(Delivery.state))]
