"""The task queue: job claiming, the task bodies and their two transports.

- :mod:`node.tasks.catalog` — the node's tasks by name and queue, used by both transports;
- :mod:`node.tasks.dispatch` — :class:`~node.tasks.dispatch.Dispatcher`: Celery when
  ``CXR_NODE_BROKER_URL`` is set, an in-process thread pool otherwise;
- :mod:`node.tasks.celery_app` — the Celery app and its configuration for long GPU jobs;
- :mod:`node.tasks.jobs` — claiming and finishing jobs idempotently, the start-up sweep;
- :mod:`node.tasks.process` — the ``process_study`` task body.
"""
