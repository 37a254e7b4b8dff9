"""The in-process transport and the task table shared with Celery."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from node.constants import QUEUE_DELIVERY, QUEUE_INFERENCE, TASK_PROCESS_STUDY
from node.tasks.catalog import TASKS, TaskSpec, task_spec
from node.tasks.process import process_study
from node.tasks.celery_app import celery_config, create_celery_app, visibility_timeout_for
from node.tasks.context import TaskContext
from node.tasks.dispatch import CeleryDispatcher, InProcessDispatcher, create_dispatcher
from tests.support.study_rows import make_database, make_settings


def with_tasks(*extra: TaskSpec) -> tuple[TaskSpec, ...]:
    """The node's tasks plus the test's own."""
    return (*TASKS, *extra)


def test_process_study_runs_on_the_inference_queue() -> None:
    spec = task_spec(TASK_PROCESS_STUDY)
    assert spec.queue == QUEUE_INFERENCE and spec.fn is process_study


def test_unknown_task_names_say_which_tasks_exist() -> None:
    with pytest.raises(LookupError, match="no task named 'nope'.*cxr_node.process_study"):
        task_spec("nope")


def test_in_process_tasks_run_on_their_queue_threads_with_the_context(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, inprocess_workers=2)
    database = make_database(settings)
    seen: list[tuple[str, int, str]] = []
    both_running = threading.Barrier(2, timeout=10)

    def deliver(item: int, *, context: TaskContext) -> None:
        assert context.database is database and context.dispatcher is dispatcher
        both_running.wait()  # two delivery tasks at once: the queue has two threads
        seen.append(("deliver", item, threading.current_thread().name))

    dispatcher = create_dispatcher(settings, database, tasks=with_tasks(TaskSpec("test.deliver", QUEUE_DELIVERY, deliver)))
    assert isinstance(dispatcher, InProcessDispatcher)
    try:
        dispatcher.enqueue("test.deliver", 1)
        dispatcher.enqueue("test.deliver", 2)
        assert dispatcher.wait_idle(10)
    finally:
        dispatcher.shutdown()
    assert sorted(item for _, item, _ in seen) == [1, 2]
    assert all(thread.startswith(f"task-{QUEUE_DELIVERY}") for _, _, thread in seen)


def test_countdown_delays_an_in_process_task(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    ran_at: list[float] = []
    later = TaskSpec("test.later", QUEUE_DELIVERY, lambda *, context: ran_at.append(time.monotonic()))
    dispatcher = InProcessDispatcher(settings, make_database(settings), tasks=with_tasks(later))
    try:
        sent = time.monotonic()
        dispatcher.enqueue("test.later", countdown=0.3)
        assert dispatcher.wait_idle(10)
    finally:
        dispatcher.shutdown()
    assert len(ran_at) == 1 and ran_at[0] - sent >= 0.3


def test_a_raising_task_does_not_stop_the_pool(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, inprocess_workers=1)
    done: list[int] = []

    def flaky(n: int, *, context: TaskContext) -> None:
        if n == 0:
            raise RuntimeError("boom")
        done.append(n)

    dispatcher = InProcessDispatcher(settings, make_database(settings), tasks=with_tasks(TaskSpec("test.flaky", QUEUE_DELIVERY, flaky)))
    try:
        for n in range(3):
            dispatcher.enqueue("test.flaky", n)
        assert dispatcher.wait_idle(10)
    finally:
        dispatcher.shutdown()
    assert done == [1, 2]


def test_enqueue_after_shutdown_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    dispatcher = InProcessDispatcher(settings, make_database(settings))
    dispatcher.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        dispatcher.process_study(1)


def test_celery_is_configured_for_long_gpu_jobs(tmp_path: Path) -> None:
    tasks = with_tasks(TaskSpec("test.deliver", QUEUE_DELIVERY, lambda *, context: None))
    settings = make_settings(tmp_path, broker_url="redis://127.0.0.1:1/0", job_timeout_seconds=7200)
    config = celery_config(settings, tasks)
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["broker_transport_options"]["visibility_timeout"] == visibility_timeout_for(settings) > 7200
    assert config["task_routes"][TASK_PROCESS_STUDY] == {"queue": QUEUE_INFERENCE}
    assert config["task_routes"]["test.deliver"] == {"queue": QUEUE_DELIVERY}
    app = create_celery_app(settings, tasks=tasks)
    assert TASK_PROCESS_STUDY in app.tasks and "test.deliver" in app.tasks
    assert app.conf.broker_transport_options["visibility_timeout"] > settings.job_timeout_seconds
    assert isinstance(create_dispatcher(settings, make_database(settings)), CeleryDispatcher)


def test_celery_config_without_a_broker_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CXR_NODE_BROKER_URL is not set"):
        celery_config(make_settings(tmp_path))


def test_each_celery_app_runs_tasks_with_its_own_settings(tmp_path: Path) -> None:
    def where(*, context: TaskContext) -> str:
        return str(context.settings.data_dir)

    tasks = with_tasks(TaskSpec("test.where", QUEUE_DELIVERY, where))
    first = create_celery_app(make_settings(tmp_path / "a", broker_url="redis://127.0.0.1:1/0"), tasks=tasks)
    second = create_celery_app(make_settings(tmp_path / "b", broker_url="redis://127.0.0.1:1/0"), tasks=tasks)
    assert first.tasks["test.where"].run() == str(tmp_path / "a" / "var")
    assert second.tasks["test.where"].run() == str(tmp_path / "b" / "var")
