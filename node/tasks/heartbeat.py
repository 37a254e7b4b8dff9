"""The heartbeat of a running job: proof that its worker is alive, and how far it got.

While ``process_study`` runs a claimed job, a daemon thread renews ``jobs.heartbeat_at`` every
``CXR_NODE_JOB_HEARTBEAT_SECONDS``; the node's job sweep (:func:`node.tasks.jobs.requeue_lost`)
takes a ``running`` job whose heartbeat is older than ``CXR_NODE_JOB_HEARTBEAT_TIMEOUT_SECONDS``
for one whose worker died, records the interruption and queues it again — seconds after the
death instead of at the job timeout.

:meth:`JobHeartbeat.reached` records the point the attempt reached (image and stage) at once,
so that the point of a crash is known exactly (see :mod:`node.tasks.interruptions`).

Every write is keyed on the claim (job id and attempt) and on ``state = 'running'``: a worker
whose job was taken over cannot renew the newer attempt's heartbeat. These are not state
moves, so they do not go through :mod:`node.lifecycle`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import update

from node.constants import JobState
from node.db import Database, Job
from node.db.schema import utcnow

log = logging.getLogger(__name__)


class JobHeartbeat:
    """A context manager that keeps one claimed job's heartbeat fresh while its body runs."""

    def __init__(self, database: Database, job_id: int, attempt: int, *, every_seconds: float) -> None:
        if every_seconds <= 0:
            raise ValueError(f"the heartbeat interval must be positive; got {every_seconds}")
        self.database = database
        self.job_id = job_id
        self.attempt = attempt
        self.every_seconds = every_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def __enter__(self) -> "JobHeartbeat":
        # The claim set the first heartbeat; the thread renews it from here on.
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-job-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.every_seconds + 5)

    def _update(self, **values: Any) -> bool:
        with self.database.session() as session:
            moved = session.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.attempts == self.attempt, Job.state == JobState.RUNNING)
                .values(**values)
                .execution_options(synchronize_session=False)
            ).rowcount
        return bool(moved)

    def beat(self) -> bool:
        """Renew the heartbeat now; False when the job is no longer this attempt's (taken over, closed)."""
        return self._update(heartbeat_at=utcnow())

    def reached(self, stage: str, image: int | None = None, of: int | None = None) -> None:
        """Record that the attempt reached ``stage`` of image ``image`` (1-based) of ``of``; renews the heartbeat."""
        self._update(heartbeat_at=utcnow(), progress={"image": image, "of": of, "stage": stage})

    def _run(self) -> None:
        while not self._stop.wait(self.every_seconds):
            try:
                self.beat()
            except Exception as exc:  # the database away for a moment: keep trying, log once
                if not self._failing:
                    log.warning("job %d: heartbeat not renewed (%s); retrying", self.job_id, type(exc).__name__)
                self._failing = True
                continue
            if self._failing:
                log.info("job %d: heartbeat renewed again", self.job_id)
                self._failing = False
