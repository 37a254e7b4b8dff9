"""cxr-node deployed the production way on loopback, for end-to-end tests, benchmarks and fault injection.

Six real processes, each on free loopback ports with its data under ``workdir``:

========================  =====================================================================
component                 what runs
========================  =====================================================================
``postgres``              PostgreSQL (:class:`~tests.support.postgres_server.PostgresServer`)
``redis``                 Redis, the Celery broker, with an append-only file by default
``orthanc``               Orthanc, the PACS the node delivers its SEG and SR to
``serve``                 ``cxr-node serve`` with ``CXR_NODE_BROKER_URL`` set (listener,
                          completion scanner, sweeps; no task threads)
``inference_worker``      ``cxr-node worker --queues inference`` (solo pool)
``delivery_worker``       ``cxr-node worker --queues delivery`` (solo pool)
========================  =====================================================================

The node processes share one environment: the same data directory (spool and outputs), the
same database and broker, Orthanc as the one destination (``CXR_NODE_DESTINATIONS``), the
bundled demo models on the CPU (or ``CXR_NODE_MODEL_DIR`` when the caller's environment sets
it). ``production=False`` gives the embedded default instead (``orthanc`` and ``serve`` only:
SQLite, in-process task threads), for a baseline.

Every component can be SIGKILLed and started again on the same ports and data::

    with Deployment(tmp_path) as deployment:
        outcomes = deployment.send(paths, associations=8, retry_for_s=60)
        deployment.kill("inference_worker")
        deployment.restart("postgres")          # SIGKILL, then start on the same cluster
        deployment.start("inference_worker")
        deployment.wait_until_settled(study_uids, timeout=300)
        assert deployment.output_problems(study_uids) == {}

Queries read the node's database (:meth:`job_states`, :meth:`delivery_states`, ...), Orthanc's
REST API (:meth:`pacs_sop_classes`) and Redis (:meth:`queue_depths`).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from node.constants import COMPREHENSIVE_3D_SR, QUEUE_DELIVERY, QUEUE_INFERENCE, SEGMENTATION
from node.db import Database, Job, Study
from node.db.schema import Delivery, Instance, OutputObject, as_utc
from tests.support.node_process import NodeProcess, WorkerProcess
from tests.support.orthanc import OrthancError, OrthancServer
from tests.support.postgres_server import PostgresServer
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.store_load import StoreOutcome, send_files

POSTGRES, REDIS, ORTHANC, SERVE = "postgres", "redis", "orthanc", "serve"
INFERENCE_WORKER, DELIVERY_WORKER = "inference_worker", "delivery_worker"
#: Every component of the production shape, in start order.
COMPONENTS = (POSTGRES, REDIS, ORTHANC, SERVE, INFERENCE_WORKER, DELIVERY_WORKER)
#: The embedded default (``production=False``).
EMBEDDED_COMPONENTS = (ORTHANC, SERVE)
#: Celery queues the workers consume.
QUEUES = (QUEUE_INFERENCE, QUEUE_DELIVERY)
#: Kombu's Redis transport keeps a priority's messages under ``<queue>\x06\x16<priority>``.
_PRIORITY_SEPARATOR = "\x06\x16"
#: Job, study and delivery states from which nothing moves without outside help.
FINAL_JOB_STATES = frozenset({"done", "failed"})
FINAL_STUDY_STATES = frozenset({"delivered", "failed"})
NODE_AE_TITLE = "CXRNODE"
PACS_AE_TITLE = "ORTHANC"


@dataclass(frozen=True)
class StudyTimes:
    """One study's timestamps from the node's database (UTC)."""

    study_instance_uid: str
    state: str
    last_received_at: dt.datetime  #: the last instance's row, committed before its C-STORE Success
    job_finished_at: dt.datetime | None  #: the latest job's end
    delivered_at: dt.datetime | None  #: the last output delivered (None until all are)


def output_mismatch(sop_classes: Iterable[str], expected: dict[str, int]) -> str | None:
    """How a study's stored SOP classes differ from ``expected`` counts (SEG, SR), or None when they match.

    Other SOP classes (the study's own images, when the PACS holds them) are not counted.
    """
    counts = Counter(sop_classes)
    got = {sop_class: counts.get(sop_class, 0) for sop_class in expected}
    if got == expected:
        return None
    return (
        f"SEG {got.get(SEGMENTATION, 0)}, SR {got.get(COMPREHENSIVE_3D_SR, 0)} "
        f"(expected {expected.get(SEGMENTATION, 0)} and {expected.get(COMPREHENSIVE_3D_SR, 0)})"
    )


class Deployment:
    """The node and its servers as separate processes; a context manager (see the module docstring).

    Parameters
    ----------
    workdir:
        Owned by the caller (``tmp_path``); logs, node data, Orthanc and Redis files go there.
    policies:
        ``CXR_NODE_MASK_POLICY``: the SEG is one per study, the SR one per policy.
    production:
        PostgreSQL, Redis and two workers (default); False for the embedded default.
    redis_appendonly:
        Redis keeps its messages across a kill (append-only file); False for an empty restart.
    inference_concurrency, delivery_concurrency:
        ``--concurrency`` of the workers (inference: solo pool, one at a time, by default).
    env:
        Extra ``CXR_NODE_*`` variables for every node process (they win over the defaults here).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        policies: Sequence[str] = ("loose",),
        production: bool = True,
        redis_appendonly: bool = True,
        inference_concurrency: int | None = None,
        delivery_concurrency: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.policies = tuple(policies)
        self.production = production
        self.components = COMPONENTS if production else EMBEDDED_COMPONENTS
        node_port = free_port()
        self.pacs = OrthancServer(
            self.workdir / "orthanc", aet=PACS_AE_TITLE, modalities={NODE_AE_TITLE: (NODE_AE_TITLE, "127.0.0.1", node_port)}
        )
        self.postgres = PostgresServer(max_connections=200) if production else None
        self.redis = RedisServer(self.workdir / "redis", appendonly=redis_appendonly) if production else None
        node_env = {
            "CXR_NODE_DESTINATIONS": self.destination,
            "CXR_NODE_MASK_POLICY": ",".join(self.policies),
            "CXR_NODE_DEVICE": "cpu",
            "CXR_NODE_DELIVERY_BACKOFF_SECONDS": "0.5",
            "CXR_NODE_DELIVERY_BACKOFF_MAX_SECONDS": "5",
            "CXR_NODE_MAX_ASSOCIATIONS": "32",
            "CXR_NODE_MAX_CONNECTIONS_PER_PEER": "32",
            **({"CXR_NODE_MODEL_DIR": os.environ["CXR_NODE_MODEL_DIR"]} if "CXR_NODE_MODEL_DIR" in os.environ else {}),
        }
        if self.postgres is not None and self.redis is not None:
            node_env["CXR_NODE_DATABASE_URL"] = self.postgres.url
            node_env["CXR_NODE_BROKER_URL"] = self.redis.url
        node_env.update(env or {})
        self.node = NodeProcess(self.workdir / "var", port=node_port, ae_title=NODE_AE_TITLE, env=node_env)
        self.workers: dict[str, WorkerProcess] = {}
        if production:
            self.workers[INFERENCE_WORKER] = WorkerProcess(
                self.node.env, (QUEUE_INFERENCE,), self.workdir / "inference-worker.log", concurrency=inference_concurrency
            )
            self.workers[DELIVERY_WORKER] = WorkerProcess(
                self.node.env, (QUEUE_DELIVERY,), self.workdir / "delivery-worker.log", concurrency=delivery_concurrency
            )
        self._database: Database | None = None
        self._redis_client: redis.Redis | None = None

    # --- addresses ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The node's DICOM port (``cxr-node serve``)."""
        return self.node.port

    @property
    def ae_title(self) -> str:
        return self.node.ae_title

    @property
    def destination(self) -> str:
        """Orthanc as the node records it in ``deliveries.destination``."""
        return f"{self.pacs.aet}@127.0.0.1:{self.pacs.dicom_port}"

    @property
    def database_url(self) -> str:
        return self.node.database_url()

    # --- life cycle -----------------------------------------------------------------------------
    def _check(self, names: Iterable[str]) -> list[str]:
        chosen = list(names) or list(self.components)
        unknown = [n for n in chosen if n not in self.components]
        if unknown:
            raise ValueError(f"unknown component(s) {', '.join(unknown)}; this deployment has {', '.join(self.components)}")
        return chosen

    def start(self, *names: str, wait: bool = True) -> "Deployment":
        """Start the named components that are not running (all when none is named).

        Servers first (PostgreSQL, Redis, Orthanc, each waited for: ``pg_isready``, PING, REST),
        then the workers and ``serve`` side by side; ``serve`` is waited for until it answers
        C-ECHO, the workers (with ``wait``) until Celery logs ``ready``. A worker started while
        Redis is down only gets ready once Redis is back, so start it with ``wait=False`` then.
        """
        chosen = [name for name in self._check(names) if not self.is_running(name)]
        servers = [name for name in chosen if name in (POSTGRES, REDIS, ORTHANC)]
        workers = [self.workers[name] for name in chosen if name in self.workers]
        for name in servers:
            if name == POSTGRES:
                assert self.postgres is not None
                self.postgres.start()
            elif name == REDIS:
                assert self.redis is not None
                self.redis.start()
            else:
                self.pacs.start()
        for worker in workers:  # they load their imports while serve loads its own
            worker.start(wait=False)
        if SERVE in chosen:
            self.node.start()
        if wait:
            for worker in workers:
                worker.wait_ready()
        return self

    def kill(self, *names: str) -> None:
        """SIGKILL the named components (all when none is named); their data stays for :meth:`start`."""
        for name in reversed(self._check(names)):
            if name == POSTGRES:
                assert self.postgres is not None
                self.postgres.kill()
            elif name == REDIS:
                assert self.redis is not None
                self.redis.kill()
            elif name == ORTHANC:
                self.pacs.stop(graceful=False)
            elif name == SERVE:
                self.node.kill()
            else:
                self.workers[name].kill()

    def restart(self, *names: str, wait: bool = True) -> None:
        """SIGKILL, then start again on the same ports and data."""
        self.kill(*names)
        self.start(*names, wait=wait)

    def is_running(self, name: str) -> bool:
        """True while the component's process exists (it may not answer yet)."""
        self._check([name])
        if name == POSTGRES:
            return self.postgres is not None and self.postgres.is_running()
        if name == REDIS:
            return self.redis is not None and self.redis.is_running()
        if name == ORTHANC:
            return self.pacs.process is not None and self.pacs.process.poll() is None
        if name == SERVE:
            return self.node.process is not None and self.node.process.poll() is None
        return self.workers[name].is_running()

    def exit_status(self, name: str) -> int | None:
        """The exit status of a component whose process ended on its own (None while it runs, or unknown).

        For a watchdog: after :meth:`kill` the process is forgotten, so only an exit nobody
        asked for shows here. PostgreSQL (started through ``pg_ctl``) always gives None.
        """
        self._check([name])
        if name == REDIS:
            process = self.redis.process if self.redis is not None else None
        elif name == ORTHANC:
            process = self.pacs.process
        elif name == SERVE:
            process = self.node.process
        elif name in self.workers:
            process = self.workers[name].process
        else:
            return None
        return process.poll() if process is not None else None

    def pid(self, name: str) -> int | None:
        """The component's main process id while it runs."""
        if not self.is_running(name):
            return None
        if name == POSTGRES:
            assert self.postgres is not None
            return self.postgres.server_pids()[0]
        if name == REDIS:
            assert self.redis is not None and self.redis.process is not None
            return self.redis.process.pid
        if name == ORTHANC:
            assert self.pacs.process is not None
            return self.pacs.process.pid
        if name == SERVE:
            assert self.node.process is not None
            return self.node.process.pid
        return self.workers[name].pid

    def log_path(self, name: str) -> Path:
        """Where the component writes its log."""
        self._check([name])
        if name == POSTGRES:
            assert self.postgres is not None
            return self.postgres.root / "server.log"
        if name == REDIS:
            assert self.redis is not None
            return self.redis.directory / "redis.log"
        if name == ORTHANC:
            return self.pacs.log_path
        if name == SERVE:
            return self.node.log_path
        return self.workers[name].log_path

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def close(self) -> None:
        """Stop everything (workers and serve with SIGTERM first) and delete the PostgreSQL cluster."""
        for worker in self.workers.values():
            worker.stop()
        self.node.stop()
        if self._database is not None:
            self._database.engine.dispose()
            self._database = None
        if self._redis_client is not None:
            self._redis_client.close()
            self._redis_client = None
        self.pacs.stop(graceful=False)
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def __enter__(self) -> "Deployment":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- load -------------------------------------------------------------------------------------
    def send(self, paths: Sequence[Path], *, associations: int = 8, retry_for_s: float = 0.0) -> list[StoreOutcome]:
        """C-STORE ``paths`` to ``serve`` over ``associations`` concurrent associations (:func:`send_files`).

        ``retry_for_s``: a file whose association failed (``serve`` killed) is sent again on a
        new association until then; each outcome says whether the node acknowledged its file.
        """
        return send_files(paths, self.port, associations=associations, called_aet=self.ae_title, retry_for_s=retry_for_s)

    # --- the node's database --------------------------------------------------------------------
    @property
    def database(self) -> Database:
        """The node's database, opened once (pre-ping: it survives a PostgreSQL restart)."""
        if self._database is None:
            self._database = Database(self.database_url)
        return self._database

    def _count_by(self, column: Any) -> dict[str, int]:
        with self.database.session() as session:
            rows = session.execute(select(column, func.count()).group_by(column)).all()
        return {str(getattr(state, "value", state)): int(n) for state, n in rows}

    def job_states(self) -> dict[str, int]:
        """Jobs per state, e.g. ``{"done": 40, "running": 1}``."""
        return self._count_by(Job.state)

    def study_states(self) -> dict[str, int]:
        return self._count_by(Study.state)

    def delivery_states(self) -> dict[str, int]:
        return self._count_by(Delivery.state)

    def study_report(self, study_instance_uid: str) -> dict[str, Any] | None:
        """The study's full report (as ``cxr-node studies show --json``), or None when unknown."""
        return self.node.report(study_instance_uid)

    def studies(self, study_uids: Iterable[str] | None = None) -> dict[str, StudyTimes]:
        """Per study: state and the timestamps a latency needs (every study when ``study_uids`` is None)."""
        wanted = None if study_uids is None else set(study_uids)
        with self.database.session() as session:
            query = select(Study.id, Study.study_instance_uid, Study.state)
            rows = session.execute(query).all()
            received = dict(session.execute(select(Instance.study_id, func.max(Instance.received_at)).group_by(Instance.study_id)).all())
            latest_job = dict(session.execute(select(Job.study_id, func.max(Job.id)).group_by(Job.study_id)).all())
            finished = dict(session.execute(select(Job.id, Job.finished_at)).all())
            delivery_rows = session.execute(
                select(OutputObject.job_id, Delivery.state, Delivery.delivered_at).join(
                    Delivery, Delivery.output_object_id == OutputObject.id
                )
            ).all()
        by_job: dict[int, list[tuple[str, dt.datetime | None]]] = {}
        for job_id, state, delivered_at in delivery_rows:
            by_job.setdefault(job_id, []).append((str(getattr(state, "value", state)), delivered_at))
        found: dict[str, StudyTimes] = {}
        for study_id, uid, state in rows:
            if wanted is not None and uid not in wanted:
                continue
            job_id = latest_job.get(study_id)
            deliveries = by_job.get(job_id, []) if job_id is not None else []
            delivered_at = None
            if deliveries and all(s == "delivered" and t is not None for s, t in deliveries):
                delivered_at = max(as_utc(t) for _, t in deliveries if t is not None)
            job_end = finished.get(job_id) if job_id is not None else None
            found[uid] = StudyTimes(
                uid,
                str(getattr(state, "value", state)),
                as_utc(received[study_id]),
                as_utc(job_end) if job_end is not None else None,
                delivered_at,
            )
        return found

    def unfinished(self) -> dict[str, int]:
        """What still moves: jobs queued or running, deliveries pending, studies not yet final."""
        jobs, deliveries, studies = self.job_states(), self.delivery_states(), self.study_states()
        counts = {
            "jobs_queued": jobs.get("queued", 0),
            "jobs_running": jobs.get("running", 0),
            "deliveries_pending": deliveries.get("pending", 0),
            "studies_not_final": sum(n for s, n in studies.items() if s not in FINAL_STUDY_STATES),
        }
        return counts

    def wait_until_settled(self, study_uids: Iterable[str], timeout: float, interval: float = 0.5) -> dict[str, StudyTimes]:
        """Wait until every study is known and final and nothing is queued, running or pending.

        Database errors (PostgreSQL being restarted) count as not settled yet. Raise
        ``AssertionError`` with the counts and the tails of the node's logs after ``timeout``.
        """
        wanted = set(study_uids)
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                studies = self.studies(wanted)
                unfinished = self.unfinished()
            except SQLAlchemyError as exc:
                last = f"database not answering: {type(exc).__name__}"
            else:
                missing = wanted - set(studies)
                not_final = [uid for uid, s in studies.items() if s.state not in FINAL_STUDY_STATES]
                last = {"unknown_studies": len(missing), "studies_not_final": len(not_final), **unfinished}
                if not missing and not not_final and not any(unfinished.values()):
                    return studies
            time.sleep(interval)
        logs = "\n".join(f"--- {name} ---\n{self.log_tail(name, 2000)}" for name in self.components if name != POSTGRES)
        raise AssertionError(f"not settled within {timeout} s: {last}\n{logs}")

    # --- Orthanc ----------------------------------------------------------------------------------
    def pacs_sop_classes(self, study_instance_uid: str) -> list[tuple[str, str]]:
        """(SOP Instance UID, SOP Class UID) of every instance Orthanc holds in the study."""
        return self.pacs.instances_with_sop_class(study_instance_uid)

    def expected_outputs(self) -> dict[str, int]:
        """SOP Class UID -> objects the node delivers per single-image study: one SEG, one SR per policy."""
        return {SEGMENTATION: 1, COMPREHENSIVE_3D_SR: len(self.policies)}

    def output_problems(self, study_uids: Iterable[str]) -> dict[str, str]:
        """Studies whose outputs in Orthanc are not exactly :meth:`expected_outputs`; empty when all are.

        Counts stored instances, so a duplicate (same or new UID) shows as one too many.
        """
        expected = self.expected_outputs()
        problems: dict[str, str] = {}
        for uid in study_uids:
            try:
                problem = output_mismatch([sop_class for _, sop_class in self.pacs_sop_classes(uid)], expected)
            except (OSError, OrthancError) as exc:
                problem = f"Orthanc did not answer: {exc}"
            if problem:
                problems[uid] = problem
        return problems

    # --- Redis --------------------------------------------------------------------------------------
    def queue_depths(self) -> dict[str, int | None]:
        """LLEN of each Celery queue (priorities summed) and ``unacked`` (messages reserved by workers).

        None for every value while Redis does not answer; empty for the embedded default.
        """
        if self.redis is None:
            return {}
        if self._redis_client is None:
            self._redis_client = redis.Redis(host="127.0.0.1", port=self.redis.port, socket_timeout=2, socket_connect_timeout=2)
        names = [*QUEUES, "unacked"]
        try:
            depths: dict[str, int | None] = {}
            for queue in QUEUES:
                keys = [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{p}" for p in range(1, 10))]
                depths[queue] = sum(int(self._redis_client.llen(k)) for k in keys)
            depths["unacked"] = int(self._redis_client.hlen("unacked"))
            return depths
        except redis.RedisError:
            return dict.fromkeys(names, None)
