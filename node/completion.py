"""Study completion: a study is complete when nothing has arrived for its quiet period.

The state lives in the database, so the timer survives restarts: a study in ``received``
whose ``last_received_at`` is older than ``settings.stable_seconds_for(calling_aet)`` becomes
``queued`` together with a :class:`~node.db.schema.Job` row for its current generation, in one
transaction. The switch is a conditional ``UPDATE ... WHERE state='received' AND generation=?
AND last_received_at<=cutoff``: two scanners (or a scanner racing a late instance) cannot both
win it, and a study that just received another instance is not queued.

After the commit the scanner sends a wake-up (``on_queued(job_id)``). If the wake-up fails the
job stays ``queued`` in the database and the scanner retries the wake-up on its next pass; a
crash in between is covered by the start-up sweep (:func:`node.tasks.jobs.requeue_unfinished`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from node.constants import StudyState
from node.db import Database, Job, Study
from node.db.schema import as_utc, utcnow
from node.lifecycle import JOB, STUDY, StudyEvent
from node.settings import Settings

log = logging.getLogger(__name__)

#: How many scanner passes between two sweeps for jobs whose worker died (broker mode).
STALE_SWEEP_EVERY_PASSES = 60


@dataclass(frozen=True)
class QueuedStudy:
    """A study the scanner switched to ``queued``, with the job it created."""

    study_id: int
    study_instance_uid: str
    generation: int
    job_id: int


def queue_quiet_studies(database: Database, settings: Settings, *, now: dt.datetime | None = None) -> list[QueuedStudy]:
    """Queue every ``received`` study that has been quiet for its stable period.

    Parameters
    ----------
    database:
        The node's database.
    settings:
        Supplies the quiet period (``stable_seconds`` and its per-calling-AET overrides).
    now:
        The time to measure quietness against (aware UTC); default: the current time.

    Returns
    -------
    list of QueuedStudy
        The studies this call queued (each in its own committed transaction). A study another
        scanner queued first, or that received an instance meanwhile, is not in the list.
    """
    now = as_utc(now or utcnow())
    with database.session() as session:
        candidates = session.execute(
            select(Study.id, Study.study_instance_uid, Study.generation, Study.calling_aet, Study.last_received_at)
            .where(Study.state == StudyState.RECEIVED)
            .order_by(Study.last_received_at)
        ).all()

    queued: list[QueuedStudy] = []
    for study_id, uid, generation, calling_aet, last_received_at in candidates:
        cutoff = now - dt.timedelta(seconds=settings.stable_seconds_for(calling_aet))
        if as_utc(last_received_at) > cutoff:
            continue
        result = _queue_one(database, study_id, uid, generation, cutoff)
        if result is not None:
            queued.append(result)
    return queued


def reprocess_study(database: Database, study_instance_uid: str) -> int:
    """Re-open a processed study (done, delivered or failed) as a new generation; return it.

    The study goes back to ``received`` with its quiet period already over, so the completion
    scanner of the running node (or of the next one to start) queues a job for the new
    generation at its next pass; that job analyses every instance again and its outputs are
    delivered like the first ones.

    Raises ``LookupError`` for an unknown study and ``ValueError`` for one that is not
    processed yet (still receiving, queued or running).
    """
    with database.session() as session:
        row = session.execute(
            select(Study.id, Study.state).where(Study.study_instance_uid == study_instance_uid)
        ).first()
        if row is None:
            raise LookupError(f"no study {study_instance_uid} in the database; check the UID with `cxr-node status`")
        moved = STUDY.apply(
            session,
            Study,
            StudyEvent.REPROCESS,
            Study.id == row.id,
            values={"generation": Study.generation + 1, "updated_at": utcnow()},
        )
        if moved != 1:
            raise ValueError(
                f"study {study_instance_uid} is {row.state}; only a done, delivered or failed study is processed again"
            )
        generation = session.scalar(select(Study.generation).where(Study.id == row.id))
    log.info("study %s re-opened for processing again (generation %d)", study_instance_uid, generation)
    return int(generation)  # type: ignore[arg-type]


def _queue_one(database: Database, study_id: int, uid: str, generation: int, cutoff: dt.datetime) -> QueuedStudy | None:
    try:
        with database.session() as session:
            switched = STUDY.apply(
                session,
                Study,
                StudyEvent.QUIET,
                Study.id == study_id,
                Study.generation == generation,
                Study.last_received_at <= cutoff,
                values={"updated_at": utcnow()},
            )
            if switched != 1:
                return None  # another scanner won, or an instance arrived meanwhile
            job = Job(study_id=study_id, generation=generation, state=JOB.initial(), attempts=0)
            session.add(job)
            session.flush()
            job_id = job.id
    except IntegrityError:
        # A job for this generation exists already: the listener re-opened the study without a
        # new generation. Leave it for an operator; log without patient data.
        log.error(
            "study %s generation %d already has a job; not queued again (re-opening must bump the generation)",
            uid,
            generation,
        )
        return None
    log.info("study %s complete (generation %d); job %d queued", uid, generation, job_id)
    return QueuedStudy(study_id, uid, generation, job_id)


class CompletionScanner:
    """A thread that queues quiet studies every ``settings.scan_interval_seconds``.

    Parameters
    ----------
    database, settings:
        The node's database and settings.
    on_queued:
        Called with the job id after each job is committed (the wake-up, e.g.
        ``dispatcher.process_study``). If it raises, the wake-up is retried on the next pass.
    on_stale_sweep:
        Optional; called every ``sweep_every_passes`` passes (default
        :data:`STALE_SWEEP_EVERY_PASSES`) and returns job ids that need another wake-up (broker
        mode: a worker died, or the broker restarted and forgot its messages).
    """

    def __init__(
        self,
        database: Database,
        settings: Settings,
        on_queued: Callable[[int], None],
        *,
        on_stale_sweep: Callable[[], list[int]] | None = None,
        sweep_every_passes: int = STALE_SWEEP_EVERY_PASSES,
    ) -> None:
        if sweep_every_passes < 1:
            raise ValueError(f"sweep_every_passes must be 1 or more; got {sweep_every_passes}")
        self.database = database
        self.settings = settings
        self.on_queued = on_queued
        self.on_stale_sweep = on_stale_sweep
        self.sweep_every_passes = sweep_every_passes
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending_lock = threading.Lock()
        self._pending_wakeups: list[int] = []
        self.passes = 0

    def start(self) -> None:
        """Start the scanner thread (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="completion-scanner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and wait for the pass in progress to end."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def add_wakeups(self, job_ids: list[int]) -> None:
        """Wake these jobs on the next pass (e.g. the start-up sweep's), retrying on failure."""
        with self._pending_lock:
            self._pending_wakeups.extend(job_ids)
        self._wake.set()

    def scan_once(self) -> list[int]:
        """One pass: retry failed wake-ups, queue quiet studies, wake their jobs; return woken job ids."""
        woken: list[int] = []
        with self._pending_lock:
            job_ids, self._pending_wakeups = self._pending_wakeups, []
        self.passes += 1
        try:
            job_ids += [q.job_id for q in queue_quiet_studies(self.database, self.settings)]
            if self.on_stale_sweep is not None and self.passes % self.sweep_every_passes == 0:
                job_ids += self.on_stale_sweep()
        finally:
            failed: list[int] = []
            for job_id in dict.fromkeys(job_ids):
                try:
                    self.on_queued(job_id)
                    woken.append(job_id)
                except Exception as exc:  # the job is safe in the database; only the wake-up is retried
                    log.warning("wake-up for job %d failed (%s: %s); retrying on the next pass", job_id, type(exc).__name__, exc)
                    failed.append(job_id)
            with self._pending_lock:
                self._pending_wakeups[:0] = failed
        return woken

    def _run(self) -> None:
        log.info("completion scanner started (every %.2f s)", self.settings.scan_interval_seconds)
        while not self._stop.is_set():
            try:
                self.scan_once()
            except Exception:  # a database hiccup must not end the scanner; log and go on
                log.exception("completion scan failed; retrying")
            self._wake.wait(self.settings.scan_interval_seconds)
            self._wake.clear()
        log.info("completion scanner stopped")
