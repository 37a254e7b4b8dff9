"""One dispatcher interface, two transports.

- :class:`CeleryDispatcher` when ``CXR_NODE_BROKER_URL`` is set: a wake-up is a Celery message
  on the task's queue, and ``cxr-node worker`` processes run it.
- :class:`InProcessDispatcher` otherwise (the embedded default): the task runs in this process
  on a thread pool of ``CXR_NODE_INPROCESS_WORKERS`` threads per queue, so a long inference job
  never holds up a delivery.

Either way only a wake-up travels: the task reads its work from the database, and claims it
idempotently (:mod:`node.tasks.jobs`), so a lost wake-up is redone by a sweep and a duplicate one
finds nothing to do.
"""

from __future__ import annotations

import abc
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from node.constants import TASK_PROCESS_STUDY
from node.db import Database
from node.settings import Settings
from node.tasks.context import TaskContext
from node.tasks.catalog import TASKS, TaskSpec, task_spec

if TYPE_CHECKING:  # pragma: no cover
    from celery import Celery

log = logging.getLogger(__name__)


class Dispatcher(abc.ABC):
    """Sends wake-ups for the node's tasks (see :mod:`node.tasks.catalog`)."""

    #: ``"celery"`` or ``"in-process"``, for status output and logs.
    transport: str

    @abc.abstractmethod
    def enqueue(self, task_name: str, *args: Any, queue: str | None = None, countdown: float = 0.0) -> None:
        """Run the task ``task_name(*args)`` on its queue (or ``queue``), after ``countdown`` seconds.

        Raises ``LookupError`` for an unknown task and ``RuntimeError`` after :meth:`shutdown`.
        Arguments must be JSON-serialisable.
        """

    def process_study(self, job_id: int) -> None:
        """Wake up ``process_study`` for the job ``job_id`` (queue ``inference``)."""
        self.enqueue(TASK_PROCESS_STUDY, job_id)

    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting work; with ``wait``, let running in-process tasks end first."""


class InProcessDispatcher(Dispatcher):
    """Runs tasks on thread pools inside this process (no broker).

    Tasks that were submitted but had not started when the process stops are simply dropped:
    their work is in the database, and the start-up sweep wakes them up again.
    """

    transport = "in-process"

    def __init__(self, settings: Settings, database: Database, *, tasks: tuple[TaskSpec, ...] = TASKS) -> None:
        self.settings = settings
        self.tasks = tasks
        self.context = TaskContext(settings=settings, database=database, dispatcher=self)
        self._lock = threading.Lock()
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._timers: set[threading.Timer] = set()
        self._futures: set[Future[Any]] = set()
        self._closed = False

    def enqueue(self, task_name: str, *args: Any, queue: str | None = None, countdown: float = 0.0) -> None:
        spec = task_spec(task_name, self.tasks)
        queue_name = queue or spec.queue
        if countdown > 0:
            with self._lock:
                self._check_open()
                timer = threading.Timer(countdown, self._submit_later, args=(spec, queue_name, args))
                timer.daemon = True
                self._timers.add(timer)
            timer.start()
            return
        self._submit(spec, queue_name, args)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the in-process dispatcher is shut down; the task stays recorded in the database")

    def _submit_later(self, spec: TaskSpec, queue: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._timers.discard(threading.current_thread())  # type: ignore[arg-type]
        try:
            self._submit(spec, queue, args)
        except RuntimeError:
            log.info("task %s%r not started: the node is stopping", spec.name, args)

    def _submit(self, spec: TaskSpec, queue: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._check_open()
            executor = self._executors.get(queue)
            if executor is None:
                executor = ThreadPoolExecutor(
                    max_workers=self.settings.inprocess_workers, thread_name_prefix=f"task-{queue}"
                )
                self._executors[queue] = executor
            future = executor.submit(self._run, spec, args)
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _run(self, spec: TaskSpec, args: tuple[Any, ...]) -> Any:
        try:
            return spec.fn(*args, context=self.context)
        except Exception:  # a task records its own failure; this only keeps the pool alive
            log.exception("task %s%r raised", spec.name, args)
            return None

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no submitted task is pending or running; return False on timeout."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._futures) or bool(self._timers)
            if not busy:
                return True
            time.sleep(0.02)
        return False

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            timers, self._timers = set(self._timers), set()
            executors = list(self._executors.values())
        for timer in timers:
            timer.cancel()
        for executor in executors:
            executor.shutdown(wait=wait, cancel_futures=True)


class CeleryDispatcher(Dispatcher):
    """Sends wake-ups as Celery messages to the broker; ``cxr-node worker`` runs them."""

    transport = "celery"

    def __init__(self, app: "Celery", *, tasks: tuple[TaskSpec, ...] = TASKS) -> None:
        self.app = app
        self.tasks = tasks
        self._closed = False

    def enqueue(self, task_name: str, *args: Any, queue: str | None = None, countdown: float = 0.0) -> None:
        if self._closed:
            raise RuntimeError("the Celery dispatcher is shut down; the task stays recorded in the database")
        spec = task_spec(task_name, self.tasks)
        self.app.send_task(
            spec.name, args=list(args), queue=queue or spec.queue, countdown=countdown if countdown > 0 else None
        )

    def broker_instance_id(self) -> str | None:
        """An id that changes when the broker restarts (Redis ``run_id``); None if unknown.

        A Redis without persistence forgets every wake-up when it restarts; the node compares
        this id over time and re-sends the wake-ups of queued jobs when it changes.
        """
        url = str(self.app.conf.broker_url or "")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return None
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        try:
            return str(client.info("server")["run_id"])
        finally:
            client.close()

    def shutdown(self, wait: bool = True) -> None:
        self._closed = True


def create_dispatcher(settings: Settings, database: Database, *, tasks: tuple[TaskSpec, ...] = TASKS) -> Dispatcher:
    """Celery when ``settings.broker_url`` is set, else the in-process thread pools."""
    if settings.broker_url:
        from node.tasks.celery_app import create_celery_app

        return CeleryDispatcher(create_celery_app(settings, tasks=tasks), tasks=tasks)
    return InProcessDispatcher(settings, database, tasks=tasks)
