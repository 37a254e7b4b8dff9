"""Every task the node runs, by stable name and Celery queue, imported directly.

Both transports read this one table: the in-process dispatcher calls ``spec.fn`` on a thread
of the spec's queue, and the Celery app registers each function under ``spec.name`` routed to
``spec.queue``. A task body is a plain function ``fn(*args, context: TaskContext)``; its
arguments are JSON-serialisable, because they travel through the broker in production.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.constants import QUEUE_DELIVERY, QUEUE_INFERENCE, TASK_DELIVER, TASK_PROCESS_STUDY
from node.delivery.task import deliver
from node.tasks.process import process_study


@dataclass(frozen=True)
class TaskSpec:
    """A task: its stable name, its Celery queue and its body."""

    name: str
    queue: str
    fn: Callable[..., Any]


#: The node's tasks.
TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(TASK_PROCESS_STUDY, QUEUE_INFERENCE, process_study),
    TaskSpec(TASK_DELIVER, QUEUE_DELIVERY, deliver),
)


def task_spec(name: str, tasks: tuple[TaskSpec, ...] = TASKS) -> TaskSpec:
    """The task called ``name``; ``LookupError`` naming the known tasks."""
    for spec in tasks:
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in tasks)
    raise LookupError(f"no task named {name!r} (known: {known})")
