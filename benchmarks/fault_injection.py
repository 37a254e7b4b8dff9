"""Fault injection: SIGKILL each part of the node at seeded moments during a stream of studies, then check nothing was lost.

Set-up (:class:`tests.support.deployment.Deployment`, all on loopback): the production shape
(PostgreSQL, Redis, Orthanc as the destination, ``cxr-node serve`` with a broker, one
``cxr-node worker`` for ``inference`` and one for ``delivery``), or with ``--embedded`` the
embedded default (``cxr-node serve`` alone: SQLite, in-process task threads, delivering to the
same Orthanc). ``--studies`` single-image DX phantom studies (``--size`` px) are sent as a
steady stream, one every ``--interval`` s, one association each
(:class:`tests.support.store_load.StreamSender`); a file that is not answered Success (the
node is down, or answers a failure) is sent again every second, as a modality does.

The schedule (:func:`make_schedule`, ``random.Random(--seed)``): ``--faults`` SIGKILLs spread
over the stream, one per equal slot of its first 5-75 % (restarts push later faults back, so the
last quarter is left for them), each component killed once before any is killed twice; each is restarted on the same ports and data after an outage drawn from
``--outage`` seconds. A kill waits (at most 10 s) for work to cut short: of the inference
worker for a job to be running, of the delivery worker, Orthanc or Redis for a delivery being
sent (in the embedded default, of serve for a job). Faults do not overlap: a component is back (answering
C-ECHO, ``ready``, PING, ``pg_isready``, REST) and has run ``--min-gap`` seconds (default 5)
before the next kill, so that a late restart does not turn the schedule into a crash loop.

Checked once the node has settled (exit status 1 when any check fails):

- every file was acknowledged with Success (0x0000) at least once;
- every acknowledged instance was processed: its row is there and the study's final job
  (``done``) decoded it;
- exactly one SEG and one SR per policy per study at Orthanc, no duplicates;
- nothing stuck: no job queued or running, no delivery pending, no study received, queued or
  running; no delivery failed;
- no study failed (no fault is any study's fault);
- the work a fault cut short (a job running, a delivery being sent at the kill) was done within
  :data:`RECOVERY_LIMIT_S` (40 s) of the component being back;
- no component stopped without a fault: one found not running is recorded and started again,
  as ``restart: unless-stopped`` would (the run fails all the same), and no worker logged
  Celery's "Unrecoverable error" (after which it exits, perhaps only after the next kill).

Printed per fault: when it came, how long the component was down (kill to answering again),
**resumed** (kill to the first piece of the work the component's outage held up finishing
after it was back: an instance the listener refused acknowledged, a job done, an output
delivered — the stages each component holds up are :data:`STAGES`), **recovered** (kill to
the last such piece finishing: everything that was unfinished at the kill or held up during
the outage), for a job running at the kill, kill to that job done and the interruptions
recorded for it, and for deliveries being sent at the kill, kill to their Success recorded.
Then the figures per component (median and max) and the totals.

Run::

    .venv/bin/python benchmarks/fault_injection.py --studies 200 --faults 24 --seed 7
    .venv/bin/python benchmarks/fault_injection.py --embedded --studies 60 --faults 6 --seed 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import select  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from benchmarks.end_to_end import make_studies  # noqa: E402
from node.constants import JobState  # noqa: E402
from node.db import Instance, Job, Study  # noqa: E402
from node.db.schema import Delivery, as_utc  # noqa: E402
from tests.support.deployment import (  # noqa: E402
    COMPONENTS,
    DELIVERY_WORKER,
    EMBEDDED_COMPONENTS,
    INFERENCE_WORKER,
    ORTHANC,
    POSTGRES,
    REDIS,
    SERVE,
    Deployment,
)
from tests.support.store_load import StreamedFile, StreamSender  # noqa: E402

INGEST, INFERENCE, DELIVERY = "ingest", "inference", "delivery"
#: The stages of a study's way that each component's outage holds up (serve, embedded, holds all).
STAGES: dict[str, tuple[str, ...]] = {
    SERVE: (INGEST,),
    INFERENCE_WORKER: (INFERENCE,),
    DELIVERY_WORKER: (DELIVERY,),
    ORTHANC: (DELIVERY,),
    REDIS: (INFERENCE, DELIVERY),
    POSTGRES: (INGEST, INFERENCE, DELIVERY),
}
EMBEDDED_STAGES = {SERVE: (INGEST, INFERENCE, DELIVERY)}
#: Components whose death cuts short the jobs running at the kill (in-process, serve runs them).
INTERRUPTING = frozenset({INFERENCE_WORKER, POSTGRES})
EMBEDDED_INTERRUPTING = frozenset({SERVE})
JOB, SENDING = "job", "delivery"
#: What a component's kill waits for (at most :data:`WAIT_FOR_WORK_S`), so that it cuts work
#: short: a job running, or a delivery being sent (its lease held).
WAITS_FOR: dict[str, str] = {INFERENCE_WORKER: JOB, DELIVERY_WORKER: SENDING, ORTHANC: SENDING, REDIS: SENDING}
EMBEDDED_WAITS_FOR: dict[str, str] = {SERVE: JOB}
#: Settings of the runs: a lost job is noticed 5 s after its last heartbeat (the default is 15 s).
FAULT_ENV = {"CXR_NODE_JOB_HEARTBEAT_SECONDS": "1", "CXR_NODE_JOB_HEARTBEAT_TIMEOUT_SECONDS": "5"}
#: Seconds the node runs between a component being back and the next kill, at least (no crash loop).
MIN_GAP_S = 5.0
#: Work cut short by a fault (a running job, a delivery being sent) must be done this many
#: seconds after the component is back, at most: the heartbeat timeout, a lease or a probe
#: plus a re-run, with room for a loaded machine.
RECOVERY_LIMIT_S = 40.0
#: What Celery logs (CRITICAL) when a worker gives up; the worker process then exits.
UNRECOVERABLE = "CRITICAL celery.worker: Unrecoverable error"
#: Longest a kill of :data:`WAITS_FOR` waits after its moment for that work to be under way.
WAIT_FOR_WORK_S = 10.0


@dataclass(frozen=True)
class Fault:
    """One planned SIGKILL: ``at_s`` seconds after the stream started, restarted ``outage_s`` after."""

    at_s: float
    component: str
    outage_s: float


def make_schedule(
    seed: int,
    components: Sequence[str],
    faults: int,
    span_s: float,
    *,
    outage_s: tuple[float, float] = (1.0, 3.0),
    window: tuple[float, float] = (0.05, 0.75),
) -> list[Fault]:
    """``faults`` kills over ``window`` (fractions) of ``span_s``, drawn from ``random.Random(seed)``.

    The components come in rounds, each a shuffled copy of ``components``, so each is killed
    once before any is killed twice. The window is cut into ``faults`` equal slots; each fault
    falls in the first three quarters of its own slot, so consecutive faults are at least a
    quarter slot apart. The same arguments give the same schedule.
    """
    if faults < 0 or not components or span_s <= 0 or not 0 <= window[0] < window[1] <= 1:
        raise ValueError("need faults >= 0, at least one component, span_s > 0 and 0 <= window start < end <= 1")
    rng = random.Random(seed)
    order: list[str] = []
    while len(order) < faults:
        round_ = list(components)
        rng.shuffle(round_)
        order.extend(round_)
    start, slot = window[0] * span_s, (window[1] - window[0]) * span_s / max(faults, 1)
    return [
        Fault(round(start + i * slot + rng.uniform(0, 0.75 * slot), 2), order[i], round(rng.uniform(*outage_s), 2))
        for i in range(faults)
    ]


@dataclass
class FaultRecord:
    """What happened to one planned fault (``time.time()`` values)."""

    fault: Fault
    killed_at: float | None = None
    back_at: float | None = None
    #: Seconds from the stream's start to the kill.
    killed_s: float | None = None
    #: Jobs ``running`` at the moment of the kill.
    running_jobs: tuple[int, ...] = ()
    #: Deliveries being sent (lease held) at the moment of the kill.
    sending_deliveries: tuple[int, ...] = ()
    #: Seconds the kill waited after its moment for work to be under way (:data:`WAITS_FOR` only).
    waited_s: float = 0.0
    error: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)


def running_job_ids(deployment: Deployment) -> tuple[int, ...]:
    """Ids of the jobs ``running`` now (empty when the database does not answer)."""
    try:
        with deployment.database.session() as session:
            return tuple(session.scalars(select(Job.id).where(Job.state == JobState.RUNNING).order_by(Job.id)))
    except SQLAlchemyError:
        return ()


@dataclass
class UnexpectedExit:
    """A component found not running that no fault had stopped; it is started again, as a supervisor would."""

    component: str
    noticed_s: float  #: seconds from the stream's start
    exit_status: int | None
    #: The log's error lines and its last lines before the restart.
    log_tail: str
    restarted: bool


def sending_delivery_ids(deployment: Deployment) -> tuple[int, ...]:
    """Ids of the deliveries being sent now (their lease runs), empty when the database does not answer."""
    now = dt.datetime.now(dt.timezone.utc)
    try:
        with deployment.database.session() as session:
            rows = session.execute(select(Delivery.id, Delivery.claimed_until).where(Delivery.claimed_until.is_not(None))).all()
    except SQLAlchemyError:
        return ()
    return tuple(sorted(i for i, until in rows if as_utc(until) > now))


class Injector(threading.Thread):
    """Carries out a schedule against a deployment, and watches that nothing else stops.

    At each moment: SIGKILL, wait the outage, start again. Between faults and after the last
    one, until :meth:`stop`, a component found not running that no fault stopped is recorded
    (:class:`UnexpectedExit`) and started again, as ``restart: unless-stopped`` does in
    ``compose.yaml`` (the checks fail on it all the same).
    """

    def __init__(
        self,
        deployment: Deployment,
        schedule: Sequence[Fault],
        started_at: float,
        *,
        waits_for: dict[str, str] = WAITS_FOR,
        min_gap_s: float = MIN_GAP_S,
        watch_every_s: float = 0.5,
    ) -> None:
        super().__init__(name="fault-injector", daemon=True)
        self.deployment = deployment
        self.records = [FaultRecord(fault) for fault in schedule]
        self.started_at = started_at
        self.waits_for = waits_for
        self.min_gap_s = min_gap_s
        self.watch_every_s = watch_every_s
        self.exits: list[UnexpectedExit] = []
        #: Set once every fault of the schedule was carried out.
        self.schedule_done = threading.Event()
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def watch(self) -> None:
        """Record and start again every component that is not running (none is being faulted now)."""
        for name in self.deployment.components:
            if self.deployment.is_running(name):
                continue
            noticed_s = round(time.time() - self.started_at, 1)
            status = self.deployment.exit_status(name)
            tail = self.deployment.log_tail(name, 30000).splitlines()
            telling = [line[:300] for line in tail if any(w in line for w in ("CRITICAL", "ERROR", "Error:"))]
            try:
                self.deployment.start(name)
                restarted = True
            except Exception:  # the checks fail on the exit anyway
                restarted = False
            self.exits.append(UnexpectedExit(name, noticed_s, status, "\n".join(telling[-6:] + tail[-3:]), restarted))

    def _wait_watching(self, until: float) -> bool:
        """Watch until ``until`` (``time.time()``); True when :meth:`stop` was called."""
        while True:
            self.watch()
            left = until - time.time()
            if left <= 0:
                return self._stopping.is_set()
            if self._stopping.wait(min(left, self.watch_every_s)):
                return True

    def run(self) -> None:
        not_before = self.started_at
        for record in self.records:
            fault = record.fault
            if self._wait_watching(max(self.started_at + fault.at_s, not_before)):
                self.schedule_done.set()
                return
            wanted = self.waits_for.get(fault.component)
            planned = time.monotonic()
            while True:
                record.running_jobs = running_job_ids(self.deployment)
                record.sending_deliveries = sending_delivery_ids(self.deployment)
                under_way = record.running_jobs if wanted == JOB else record.sending_deliveries
                if wanted is None or under_way or time.monotonic() - planned >= WAIT_FOR_WORK_S:
                    break
                time.sleep(0.05)
            record.waited_s = round(time.monotonic() - planned, 2)
            record.killed_at = time.time()
            record.killed_s = round(record.killed_at - self.started_at, 2)
            self.deployment.kill(fault.component)
            time.sleep(fault.outage_s)
            for attempt in (1, 2):
                try:
                    self.deployment.start(fault.component)
                    break
                except Exception as exc:  # recorded; the run's checks fail on it
                    record.error = f"restart {attempt} failed: {type(exc).__name__}: {str(exc)[:300]}"
                    self.deployment.kill(fault.component)
            record.back_at = time.time()
            not_before = record.back_at + self.min_gap_s
        self.schedule_done.set()
        while not self._wait_watching(time.time() + self.watch_every_s):
            pass


# --- what the database says afterwards ------------------------------------------------------------


def _ts(value: dt.datetime | None) -> float | None:
    return as_utc(value).timestamp() if value is not None else None


@dataclass
class NodeRecords:
    """The rows the checks and figures need, read once after the run."""

    studies: dict[int, tuple[str, str]]  #: study id -> (Study Instance UID, state)
    jobs: dict[int, dict[str, Any]]
    deliveries: dict[int, dict[str, Any]]
    instances: dict[str, dict[str, Any]]  #: SOP Instance UID -> study id, job id and decoded of its inspection


def read_records(deployment: Deployment) -> NodeRecords:
    with deployment.database.session() as session:
        studies = {sid: (uid, str(state)) for sid, uid, state in session.execute(select(Study.id, Study.study_instance_uid, Study.state))}
        jobs = {
            row.id: {
                "study_id": row.study_id,
                "state": str(row.state),
                "created_at": _ts(row.created_at),
                "finished_at": _ts(row.finished_at),
                "attempts": row.attempts,
                "interruptions": list(row.interruptions or []),
                "error": row.error,
            }
            for row in session.execute(
                select(Job.id, Job.study_id, Job.state, Job.created_at, Job.finished_at, Job.attempts, Job.interruptions, Job.error)
            )
        }
        deliveries = {
            row.id: {
                "state": str(row.state),
                "created_at": _ts(row.created_at),
                "delivered_at": _ts(row.delivered_at),
                "attempts": row.attempts,
                "last_error": row.last_error,
            }
            for row in session.execute(
                select(Delivery.id, Delivery.state, Delivery.created_at, Delivery.delivered_at, Delivery.attempts, Delivery.last_error)
            )
        }
        instances = {
            uid: {
                "study_id": study_id,
                "job_id": (inspection or {}).get("job_id"),
                "decoded": bool((inspection or {}).get("decoded")),
            }
            for uid, study_id, inspection in session.execute(select(Instance.sop_instance_uid, Instance.study_id, Instance.inspection))
        }
    return NodeRecords(studies, jobs, deliveries, instances)


# --- figures per fault -----------------------------------------------------------------------------


def fault_figures(
    record: FaultRecord,
    files: Sequence[StreamedFile],
    records: NodeRecords,
    stages: dict[str, tuple[str, ...]] = STAGES,
    interrupting: frozenset[str] = INTERRUPTING,
) -> dict[str, Any]:
    """Down, resumed and recovered times of one fault, in seconds from the kill (see the module docstring)."""
    killed, back = record.killed_at, record.back_at
    if killed is None or back is None:
        return {}
    # Completion times of the work each held-up stage had when the fault came or got during it.
    work: dict[str, list[float | None]] = {}
    for stage in stages[record.fault.component]:
        if stage == INGEST:
            done = [f.acknowledged_at for f in files if f.failed_between(killed, back + 1.0)]
        elif stage == INFERENCE:
            done = [
                j["finished_at"]
                for j in records.jobs.values()
                if j["created_at"] is not None and j["created_at"] <= back and (j["finished_at"] is None or j["finished_at"] >= killed)
            ]
        else:
            done = [
                d["delivered_at"]
                for d in records.deliveries.values()
                if d["created_at"] is not None and d["created_at"] <= back and (d["delivered_at"] is None or d["delivered_at"] >= killed)
            ]
        if done:
            work[stage] = done
    firsts = [min((t for t in done if t is not None and t >= back), default=None) for done in work.values()]
    held_up = [t for t in firsts if t is not None]
    everything = [t for done in work.values() for t in done]
    interrupted = [records.jobs[j] for j in record.running_jobs if j in records.jobs]
    figures: dict[str, Any] = {
        "down_s": round(back - killed, 2),
        "held_up": {stage: len(done) for stage, done in work.items()},
        # None: nothing was held up, or none of it waited for the component to be back.
        "resumed_s": round(max(held_up) - killed, 2) if held_up else None,
        "recovered_s": (round(max(everything) - killed, 2) if everything and None not in everything else ("never" if everything else None)),
    }
    sending = [records.deliveries[d] for d in record.sending_deliveries if d in records.deliveries]
    if sending and DELIVERY in stages[record.fault.component]:
        ends = [d["delivered_at"] for d in sending]
        figures["sending_deliveries"] = len(sending)
        figures["sending_done_s"] = round(max(ends) - killed, 2) if None not in ends else "never"
    if interrupted and record.fault.component in interrupting:
        ends = [j["finished_at"] for j in interrupted]
        figures["interrupted_jobs"] = len(interrupted)
        figures["interrupted_done_s"] = round(max(ends) - killed, 2) if None not in ends else "never"
        figures["interruptions_recorded"] = sum(
            1 for j in interrupted for i in j["interruptions"] if _iso_ts(i.get("noticed_at")) >= killed - 1.0
        )
    return figures


def slow_recovery(record: FaultRecord, limit_s: float = RECOVERY_LIMIT_S) -> str | None:
    """Why the work this fault cut short was not done within ``limit_s`` of the component being back, or None."""
    figures = record.figures
    down = figures.get("down_s")
    if down is None:
        return None
    for key, what in (("interrupted_done_s", "job(s) running at the kill"), ("sending_done_s", "delivery(ies) being sent at the kill")):
        value = figures.get(key)
        if value == "never" or (isinstance(value, (int, float)) and value - down > limit_s):
            return f"the {what} finished {value} s after the kill, more than {limit_s:g} s after the component was back ({down} s)"
    return None


def _iso_ts(value: str | None) -> float:
    if not value:
        return 0.0
    return as_utc(dt.datetime.fromisoformat(value)).timestamp()


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class FaultRun:
    """One fault-injection run: its schedule as carried out, figures, totals and every check that failed."""

    label: str
    seed: int
    studies: int
    interval_s: float
    faults: list[FaultRecord] = field(default_factory=list)
    #: Components that stopped without a fault (each a defect; they were started again).
    exits: list[UnexpectedExit] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: Per study that failed, was not delivered or has other outputs than expected: its report's essentials.
    evidence: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _study_evidence(deployment: Deployment, uid: str) -> dict[str, Any]:
    """The study's state and each job's state, attempts, error and interruptions (no patient data)."""
    report = deployment.study_report(uid)
    if report is None:
        return {"study": "unknown to the node"}
    jobs = [
        {k: job.get(k) for k in ("id", "state", "attempts", "error", "interruptions", "worker")}
        for job in report.get("jobs", [])
    ]
    return {"state": report["study"]["state"], "jobs": jobs, "deliveries": report.get("deliveries")}


def check(
    run: FaultRun,
    deployment: Deployment,
    files: Sequence[tuple[StreamedFile, str]],
    uids: Sequence[str],
    settle_error: str | None,
    records: NodeRecords,
) -> None:
    """Fill ``run.problems`` and ``run.totals`` from the node's records, its logs and Orthanc."""
    sent = len(files)
    acknowledged = [(f, uid) for f, uid in files if f.acknowledged]
    if len(uids) != sent or len(acknowledged) != sent:
        run.problems.append(f"{len(uids) - len(acknowledged)} of {len(uids)} instances never acknowledged with Success")
    by_study_uid = {uid: sid for sid, (uid, _) in records.studies.items()}
    final_job = {}
    for job_id, job in sorted(records.jobs.items()):
        final_job[job["study_id"]] = (job_id, job)
    not_processed = []
    for f, sop_uid in acknowledged:
        row = records.instances.get(sop_uid)
        job = final_job.get(row["study_id"]) if row else None
        if row is None or job is None or job[1]["state"] != "done" or row["job_id"] != job[0] or not row["decoded"]:
            not_processed.append(sop_uid)
    if not_processed:
        run.problems.append(f"{len(not_processed)} acknowledged instance(s) not processed by their study's final job, e.g. {not_processed[0]}")
    failed = [uid for uid in uids if by_study_uid.get(uid) is not None and records.studies[by_study_uid[uid]][1] == "failed"]
    if failed:
        run.problems.append(f"{len(failed)} study(ies) failed: {', '.join(failed[:5])}")
    unfinished = deployment.unfinished()
    if settle_error or any(unfinished.values()):
        run.problems.append(f"left unfinished: {unfinished}" + (f" ({settle_error})" if settle_error else ""))
    deliveries = Counter(d["state"] for d in records.deliveries.values())
    if deliveries.get("failed"):
        run.problems.append(f"{deliveries['failed']} delivery(ies) failed")
    output_problems = deployment.output_problems(uids)
    if output_problems:
        first = next(iter(output_problems.items()))
        run.problems.append(f"{len(output_problems)} study(ies) with other outputs at Orthanc than expected, e.g. {first[0]}: {first[1]}")
    expected_per_study = sum(deployment.expected_outputs().values())
    extra = 0
    for uid in output_problems:
        try:
            outputs = [c for _, c in deployment.pacs_sop_classes(uid) if c in deployment.expected_outputs()]
        except Exception:  # Orthanc not answering is already a problem above
            continue
        extra += max(0, len(outputs) - expected_per_study)
    for name in (SERVE, *deployment.workers):
        fatal = [line[:300] for line in deployment.log_tail(name, 10**8).splitlines() if UNRECOVERABLE in line]
        if fatal:
            run.problems.append(f"{name} logged {len(fatal)} unrecoverable error(s) (the worker stops), e.g. {fatal[0]}")
    for number, record in enumerate(run.faults, start=1):
        slow = slow_recovery(record)
        if slow:
            run.problems.append(f"fault {number} ({record.fault.component} at {record.killed_s} s): {slow}")
    for exit_ in run.exits:
        run.problems.append(
            f"{exit_.component} stopped on its own (exit status {exit_.exit_status}), noticed {exit_.noticed_s} s into the stream"
            + ("; started again" if exit_.restarted else "; could not be started again")
        )
    for record in run.faults:
        if record.error:
            run.problems.append(f"fault {record.fault.component} at {record.fault.at_s} s: {record.error}")
    for uid in sorted(set(failed) | set(output_problems)):
        run.evidence[uid] = _study_evidence(deployment, uid)
    jobs = records.jobs.values()
    run.totals = {
        "sent": sent,
        "acknowledged": len(acknowledged),
        "re_sent": sum(1 for f, _ in files if len(f.attempts) > 1),
        "processed": len(acknowledged) - len(not_processed),
        "delivered": deliveries.get("delivered", 0),
        "deliveries": sum(deliveries.values()),
        "duplicates": extra,
        "failed_studies": len(failed),
        "stuck": sum(unfinished.values()),
        "interruptions": sum(len(j["interruptions"]) for j in jobs),
        "jobs_run_more_than_once": sum(1 for j in jobs if j["attempts"] > 1),
        "delivery_attempts": sum(d["attempts"] for d in records.deliveries.values()),
    }


def run_faults(
    workdir: Path,
    studies: Sequence[tuple[str, Path]],
    *,
    seed: int,
    faults: int,
    interval_s: float,
    production: bool = True,
    components: Sequence[str] | None = None,
    outage_s: tuple[float, float] = (1.0, 3.0),
    settle_timeout: float = 300.0,
    min_gap_s: float = MIN_GAP_S,
    env: dict[str, str] | None = None,
) -> FaultRun:
    """Start a deployment, stream ``studies`` while the seeded schedule kills its parts, settle, check."""
    began = time.monotonic()
    uids = [uid for uid, _ in studies]
    paths = [path for _, path in studies]
    chosen = tuple(components or (COMPONENTS if production else (SERVE,)))
    span_s = max(interval_s * len(studies), 1.0)
    schedule = make_schedule(seed, chosen, faults, span_s, outage_s=outage_s)
    run = FaultRun("production" if production else "embedded", seed, len(studies), interval_s)
    stages = STAGES if production else EMBEDDED_STAGES
    interrupting = INTERRUPTING if production else EMBEDDED_INTERRUPTING
    with Deployment(workdir, production=production, env={**FAULT_ENV, **(env or {})}) as deployment:
        if not production and any(c not in EMBEDDED_COMPONENTS for c in chosen):
            raise ValueError(f"the embedded default has only {', '.join(EMBEDDED_COMPONENTS)}")
        stream = StreamSender(paths, deployment.port, interval_s=interval_s).start()
        assert stream.started_at is not None
        injector = Injector(
            deployment,
            schedule,
            stream.started_at,
            waits_for=WAITS_FOR if production else EMBEDDED_WAITS_FOR,
            min_gap_s=min_gap_s,
        )
        injector.start()
        try:
            injector.schedule_done.wait(span_s + 120.0 * max(faults, 1))
            streamed = stream.wait(timeout=max(60.0, span_s))
            settle_error = None
            try:
                deployment.wait_until_settled(uids, timeout=settle_timeout)
            except AssertionError as exc:
                settle_error = str(exc).split("\n", 1)[0]
        finally:
            injector.stop()
            injector.join(300.0)
        run.faults = injector.records
        run.exits = injector.exits
        sop_uid = {path: uid for path, uid in zip(paths, _sop_instance_uids(paths))}
        files = [(f, sop_uid[f.path]) for f in streamed]
        records = read_records(deployment)
        for record in run.faults:
            record.figures = fault_figures(record, [f for f, _ in files], records, stages, interrupting)
        check(run, deployment, files, uids, settle_error, records)
        if run.problems:
            run.evidence["logs"] = {name: deployment.log_tail(name, 3000) for name in deployment.components if name != POSTGRES}
    run.seconds = round(time.monotonic() - began, 1)
    return run


def _sop_instance_uids(paths: Sequence[Path]) -> list[str]:
    from pydicom import dcmread

    return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


# --- printing ----------------------------------------------------------------------------------------


def _s(value: Any) -> str:
    return "-" if value is None else (f"{value:.1f}" if isinstance(value, float) else str(value))


def per_component(run: FaultRun) -> dict[str, dict[str, Any]]:
    """Median and max of down, resumed and recovered per component (numeric figures only)."""
    out: dict[str, dict[str, Any]] = {}
    for component in dict.fromkeys(r.fault.component for r in run.faults):
        rows = [r.figures for r in run.faults if r.fault.component == component and r.figures]
        summary: dict[str, Any] = {"faults": len(rows)}
        for key in ("down_s", "resumed_s", "recovered_s", "interrupted_done_s", "sending_done_s"):
            values = [row[key] for row in rows if isinstance(row.get(key), (int, float))]
            if values:
                summary[key] = {"median": round(statistics.median(values), 2), "max": round(max(values), 2)}
        out[component] = summary
    return out


def format_run(run: FaultRun) -> list[str]:
    lines = [
        f"\n== fault injection, {run.label}: {run.studies} studies, one every {run.interval_s:g} s, "
        f"{len(run.faults)} faults, seed {run.seed} ({run.seconds:.0f} s) ==",
        f"  {'#':>2} {'at (s)':>7} {'killed':>7}  {'component':<17} {'down':>6} {'resumed':>8} {'recovered':>10}  held up / interrupted",
    ]
    for number, record in enumerate(run.faults, start=1):
        f = record.figures
        killed = _s(record.killed_s)
        held = ", ".join(f"{n} {stage}" for stage, n in f.get("held_up", {}).items()) or "nothing"
        if "sending_deliveries" in f:
            held += f"; {f['sending_deliveries']} delivery(ies) being sent delivered after {_s(f['sending_done_s'])} s"
        if "interrupted_jobs" in f:
            held += (
                f"; {f['interrupted_jobs']} running job(s) done after {_s(f['interrupted_done_s'])} s"
                f" ({f['interruptions_recorded']} interruption(s) recorded)"
            )
        if record.error:
            held += f"; ERROR {record.error}"
        lines.append(
            f"  {number:>2} {record.fault.at_s:>7.1f} {killed:>7}  {record.fault.component:<17} {_s(f.get('down_s')):>6} "
            f"{_s(f.get('resumed_s')):>8} {_s(f.get('recovered_s')):>10}  {held}"
        )
    lines.append("  per component (seconds from the kill, median / max):")
    for component, summary in per_component(run).items():
        cells = [f"{key[:-2]} {v['median']:.1f}/{v['max']:.1f}" for key, v in summary.items() if isinstance(v, dict)]
        lines.append(f"    {component:<17} {summary['faults']} fault(s): " + ", ".join(cells))
    t = run.totals
    if t:
        lines.append(
            f"  totals: sent {t['sent']}, acknowledged {t['acknowledged']} ({t['re_sent']} sent more than once), "
            f"processed {t['processed']}, delivered {t['delivered']}/{t['deliveries']} outputs, duplicates {t['duplicates']}, "
            f"failed {t['failed_studies']}, stuck {t['stuck']}; interruptions {t['interruptions']}, "
            f"jobs run more than once {t['jobs_run_more_than_once']}, delivery attempts {t['delivery_attempts']}"
        )
    lines.append("  check: " + ("every instance acknowledged, processed and delivered exactly once; nothing stuck or failed" if not run.problems else "FAILED"))
    lines.extend(f"    - {p}" for p in run.problems)
    for exit_ in run.exits:
        lines.append(f"    {exit_.component} stopped on its own at {exit_.noticed_s} s; its log said:")
        lines.extend(f"      {line}" for line in exit_.log_tail.splitlines())
    for uid, evidence in run.evidence.items():
        if uid != "logs":
            lines.append(f"    study {uid}: {json.dumps(evidence, default=str)[:2000]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--faults", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between two studies of the stream (default 2)")
    parser.add_argument("--size", type=int, default=256, help="phantom width and height in pixels (default 256)")
    parser.add_argument("--outage", type=float, nargs=2, default=(1.0, 3.0), metavar=("MIN", "MAX"), help="outage in seconds (default 1 3)")
    parser.add_argument(
        "--min-gap", type=float, default=MIN_GAP_S, help=f"seconds the node runs after a restart before the next kill, at least (default {MIN_GAP_S:g})"
    )
    parser.add_argument("--embedded", action="store_true", help="the embedded default (SQLite, in-process tasks); only serve is killed")
    parser.add_argument("--components", default=None, help="comma-separated components to kill (default: all of the deployment)")
    parser.add_argument("--settle-timeout", type=float, default=600.0, help="seconds to wait for the node to settle after the stream")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files and logs under this directory")
    parser.add_argument("--json", type=Path, default=None, help="write the schedule, figures and totals to this file")
    args = parser.parse_args(argv)
    components = tuple(args.components.split(",")) if args.components else None
    with tempfile.TemporaryDirectory(prefix="cxr-faults-") as tmp:
        root = args.workdir or Path(tmp)
        studies = make_studies(root / "studies", args.studies, args.size)
        run = run_faults(
            root / "deployment",
            studies,
            seed=args.seed,
            faults=args.faults,
            interval_s=args.interval,
            production=not args.embedded,
            components=components,
            outage_s=tuple(args.outage),
            settle_timeout=args.settle_timeout,
            min_gap_s=args.min_gap,
        )
        print("\n".join(format_run(run)))
        if run.problems and "logs" in run.evidence:
            for name, tail in run.evidence["logs"].items():
                print(f"\n--- {name} (last lines) ---\n{tail}")
        if args.json:
            args.json.write_text(json.dumps(asdict(run), indent=2, default=str))
    return 1 if run.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
