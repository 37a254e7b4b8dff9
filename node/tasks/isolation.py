"""Running a suspect job alone in its process.

A job that was interrupted before may have killed its process. Running it again beside other
jobs would make every one of them a suspect when the process dies again, and would tell
nothing about which was to blame. So a job with an interruption on record takes the gate
exclusively: it waits until the jobs running in this process have ended, and no new one
starts until it has ended. Ordinary jobs share the gate.

Writer-preferring: once a suspect job waits, new ordinary jobs wait behind it, so it cannot
be starved. One gate per process (the task context holds it); a Celery ``solo`` worker runs
one job at a time anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class IsolationGate:
    """A writer-preferring shared/exclusive lock for the jobs of one process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    @contextmanager
    def hold(self, *, exclusive: bool) -> Iterator[None]:
        """Hold the gate for one job: alone when ``exclusive``, else beside other ordinary jobs."""
        with self._cond:
            if exclusive:
                self._waiting_exclusive += 1
                try:
                    self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
                finally:
                    self._waiting_exclusive -= 1
                self._exclusive = True
            else:
                self._cond.wait_for(lambda: not self._exclusive and self._waiting_exclusive == 0)
                self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._cond.notify_all()

    def running(self) -> int:
        """How many jobs hold the gate now."""
        with self._cond:
            return self._shared + int(self._exclusive)
