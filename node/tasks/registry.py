"""Task functions by name, shared by both transports, and the extension points of a job.

A task is a plain function ``fn(*args, context: TaskContext) -> JSON-able`` registered under a
stable name and a queue. The in-process dispatcher calls it on a thread; the Celery app wraps
each registered function as a Celery task of the same name, routed to the same queue. So a
new task (``deliver`` on queue ``delivery``, say) is written once::

    from node.constants import QUEUE_DELIVERY, TASK_DELIVER
    from node.tasks.registry import task

    @task(TASK_DELIVER, queue=QUEUE_DELIVERY)
    def deliver(delivery_id: int, *, context: TaskContext) -> dict: ...

and the module that defines it is listed in :data:`TASK_MODULES`, which both the ``serve``
process and ``cxr-node worker`` import before they run anything. Another task is then woken
with ``context.dispatcher.enqueue(TASK_DELIVER, delivery_id, countdown=30)``.

Two more registration points:

- :func:`study_step` — a function run by ``process_study`` after every instance of the study
  has been opened and decoded (see :mod:`node.tasks.process`); its return value is stored in
  the job's summary under the step's name.
- :func:`startup_sweep` — a function run once when ``cxr-node serve`` starts, after the job
  sweep, to wake up other unfinished work the database knows of (e.g. pending deliveries).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from node.tasks.context import TaskContext
    from node.tasks.jobs import ClaimedJob
    from node.tasks.process import OpenedInstance

#: Modules that register tasks, study steps and start-up sweeps; imported by every process
#: that runs or sends tasks (append yours here).
TASK_MODULES: tuple[str, ...] = ("node.tasks.process", "node.delivery.task", "node.pipeline")

TaskFunction = Callable[..., Any]
StudyStepFunction = Callable[["ClaimedJob", "list[OpenedInstance]", "TaskContext"], Any]
StartupSweepFunction = Callable[["TaskContext"], Any]


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its stable name, its Celery queue and its body."""

    name: str
    queue: str
    fn: TaskFunction


@dataclass(frozen=True)
class StudyStep:
    """A per-study processing step; lower ``order`` runs first."""

    name: str
    order: int
    fn: StudyStepFunction


@dataclass(frozen=True)
class StartupSweep:
    name: str
    fn: StartupSweepFunction


_TASKS: dict[str, TaskSpec] = {}
_STUDY_STEPS: dict[str, StudyStep] = {}
_STARTUP_SWEEPS: dict[str, StartupSweep] = {}


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    # A module imported twice (e.g. re-imported in a test) registers an equal function again.
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _register(table: dict[str, Any], what: str, name: str, entry: Any) -> None:
    existing = table.get(name)
    if existing is not None and not _same_function(existing.fn, entry.fn):
        raise ValueError(
            f"{what} {name!r} is already registered by {existing.fn.__module__}.{existing.fn.__qualname__}; "
            "pick another name"
        )
    table[name] = entry


def task(name: str, *, queue: str) -> Callable[[TaskFunction], TaskFunction]:
    """Register ``fn(*args, context)`` as the task ``name`` on Celery queue ``queue``.

    Arguments must be JSON-serialisable (they travel through the broker in production).
    """
    if not name or not queue:
        raise ValueError("a task needs a non-empty name and queue")

    def decorate(fn: TaskFunction) -> TaskFunction:
        _register(_TASKS, "task", name, TaskSpec(name, queue, fn))
        return fn

    return decorate


def study_step(name: str, *, order: int = 100) -> Callable[[StudyStepFunction], StudyStepFunction]:
    """Register ``fn(claim, instances, context)`` to run inside ``process_study``.

    ``instances`` are the study's opened instances (datasets decoded, inspection recorded).
    The return value (JSON-serialisable) goes into the job summary under ``name``. An
    exception fails the job, with the step's name and the error recorded on it.
    """

    def decorate(fn: StudyStepFunction) -> StudyStepFunction:
        _register(_STUDY_STEPS, "study step", name, StudyStep(name, order, fn))
        return fn

    return decorate


def startup_sweep(name: str) -> Callable[[StartupSweepFunction], StartupSweepFunction]:
    """Register ``fn(context)`` to run when ``cxr-node serve`` starts, after the job sweep."""

    def decorate(fn: StartupSweepFunction) -> StartupSweepFunction:
        _register(_STARTUP_SWEEPS, "start-up sweep", name, StartupSweep(name, fn))
        return fn

    return decorate


def load_task_modules() -> None:
    """Import every module in :data:`TASK_MODULES` so that its registrations take effect."""
    for module in TASK_MODULES:
        importlib.import_module(module)


def get_task(name: str) -> TaskSpec:
    """The task registered as ``name``; raise ``LookupError`` naming the known tasks."""
    load_task_modules()
    try:
        return _TASKS[name]
    except KeyError:
        known = ", ".join(sorted(_TASKS)) or "none"
        raise LookupError(f"no task named {name!r} is registered (known: {known}); list its module in TASK_MODULES") from None


def all_tasks() -> list[TaskSpec]:
    """Every registered task, by name."""
    load_task_modules()
    return [_TASKS[name] for name in sorted(_TASKS)]


def study_steps() -> list[StudyStep]:
    """Registered study steps in the order they run."""
    load_task_modules()
    return sorted(_STUDY_STEPS.values(), key=lambda s: (s.order, s.name))


def startup_sweeps() -> list[StartupSweep]:
    """Registered start-up sweeps, by name."""
    load_task_modules()
    return [_STARTUP_SWEEPS[name] for name in sorted(_STARTUP_SWEEPS)]
