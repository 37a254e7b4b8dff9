"""The Celery app, built from the settings (used when ``CXR_NODE_BROKER_URL`` is set).

Configured for long GPU jobs (see docs/architecture.md):

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only when its
  task has returned, so a worker that dies mid-job leaves the wake-up in the broker;
- ``broker_transport_options.visibility_timeout`` above ``CXR_NODE_JOB_TIMEOUT_SECONDS``: Redis
  re-delivers an unacknowledged message only after this, so a long job is not started twice
  while it runs (and a re-delivered one finds its job claimed, see :mod:`node.tasks.jobs`);
- ``worker_prefetch_multiplier = 1``: a busy GPU worker does not hoard wake-ups;
- routes: every registered task goes to its own queue (``inference``, ``delivery``,
  ``training``); ``cxr-node worker`` picks the pool (``solo`` for inference, which CUDA
  survives; never a forked pool after CUDA was initialised).

Task bodies are the functions of :data:`node.tasks.catalog.TASKS`; each worker process builds one
:class:`~node.tasks.context.TaskContext` (database engine, a Celery dispatcher for follow-up
tasks) on first use.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from celery import Celery
from sqlalchemy.exc import InterfaceError, OperationalError

from node.constants import QUEUE_INFERENCE
from node.db import Database
from node.settings import Settings
from node.tasks.context import TaskContext
from node.tasks.catalog import TASKS, TaskSpec

log = logging.getLogger(__name__)

#: The broker's visibility timeout is the job timeout times this, plus :data:`VISIBILITY_MARGIN_SECONDS`.
VISIBILITY_FACTOR = 1.5
VISIBILITY_MARGIN_SECONDS = 300

#: A task that finds the database unreachable is retried with exponential backoff up to this
#: many times, waiting at most this long between two tries (about 2 hours in all).
DB_RETRY_MAX = 30
DB_RETRY_BACKOFF_MAX_SECONDS = 300


def visibility_timeout_for(settings: Settings) -> int:
    """Seconds Redis waits before re-delivering an unacknowledged message; above the longest job."""
    return int(settings.job_timeout_seconds * VISIBILITY_FACTOR + VISIBILITY_MARGIN_SECONDS)


def celery_config(settings: Settings, tasks: tuple[TaskSpec, ...] = TASKS) -> dict[str, Any]:
    """The Celery configuration for ``settings`` (names as in Celery 5's configuration reference)."""
    if not settings.broker_url:
        raise ValueError("CXR_NODE_BROKER_URL is not set; the Celery app needs a broker (unset runs tasks in-process)")
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": visibility_timeout_for(settings)},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,  # a task that raised has recorded its failure
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,  # entry points configure logging (node.logs)
        "task_ignore_result": True,  # the database holds every outcome
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE_INFERENCE,
        "task_routes": {spec.name: {"queue": spec.queue} for spec in tasks},
        "task_create_missing_queues": True,
        "worker_send_task_events": False,
        "enable_utc": True,
    }


class _LazyContext:
    """One TaskContext per worker process, built on first use (after any fork)."""

    def __init__(self, settings: Settings, app: Celery, tasks: tuple[TaskSpec, ...]) -> None:
        self.settings = settings
        self.app = app
        self.tasks = tasks
        self._context: TaskContext | None = None
        self._lock = threading.Lock()

    def get(self) -> TaskContext:
        with self._lock:
            if self._context is None:
                from node.tasks.dispatch import CeleryDispatcher

                database = Database(self.settings.resolved_database_url)
                # A SQLite database on this disk keeps room to record failures (node.disk.DiskReserve).
                database.keep_disk_reserve(self.settings.database_reserve_bytes)
                self._context = TaskContext(self.settings, database, CeleryDispatcher(self.app, tasks=self.tasks))
            return self._context


def _make_task_body(spec: TaskSpec, holder: _LazyContext) -> Any:
    def body(*args: Any) -> Any:
        return spec.fn(*args, context=holder.get())

    # Celery builds a signature check from the name: it must be an identifier (not "<lambda>").
    body.__name__ = body.__qualname__ = "task_" + re.sub(r"\W", "_", spec.name)
    body.__doc__ = spec.fn.__doc__
    return body


def create_celery_app(settings: Settings, *, tasks: tuple[TaskSpec, ...] = TASKS) -> Celery:
    """A Celery app for ``settings`` with every task of :data:`node.tasks.catalog.TASKS`."""
    app = Celery("cxr_node", set_as_current=False)
    app.conf.update(celery_config(settings, tasks))
    holder = _LazyContext(settings, app, tasks)
    app.cxr_node_context = holder  # type: ignore[attr-defined]
    for spec in tasks:
        app.task(
            name=spec.name,
            shared=False,  # this app only: another app (other settings) builds its own tasks
            acks_late=True,
            ignore_result=True,
            # The database unreachable for a moment: try the wake-up again later instead of
            # dropping it (the job row is untouched, so the retry claims it normally).
            autoretry_for=(OperationalError, InterfaceError),
            retry_backoff=True,
            retry_backoff_max=DB_RETRY_BACKOFF_MAX_SECONDS,
            retry_jitter=True,
            max_retries=DB_RETRY_MAX,
        )(_make_task_body(spec, holder))
    return app
