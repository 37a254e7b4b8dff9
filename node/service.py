"""The running node (``cxr-node serve``): database, sweep, listener, completion scanner, dispatcher.

Start-up order:

1. the database schema is ensured (an empty SQLite or PostgreSQL database is created at head;
   an outdated SQLite one is upgraded; an outdated PostgreSQL one stops start-up with the
   command that fixes it);
2. the dispatcher is created (Celery with a broker, else in-process thread pools);
3. the sweep: every job the database says is unfinished gets a wake-up (in-process, every
   ``running`` job is dead — its threads belonged to the previous process; with a broker,
   only those whose heartbeat stopped), then every pending delivery is woken
   (:func:`node.delivery.task.requeue_pending_deliveries`);
4. the completion scanner thread starts; about every heartbeat interval it also runs the job
   sweep (:meth:`NodeService.periodic_sweep`), so a dead worker's job is queued again seconds
   after its heartbeat stopped;
5. the DICOM listener starts (:func:`node.scp.server.start_listener`).

:meth:`NodeService.stop` (SIGTERM, SIGINT) closes the listener first, then the scanner, then
lets the in-process tasks that are running end; tasks not yet started stay queued in the
database for the next start.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from node.completion import CompletionScanner
from node.db import Database
from node.settings import Settings
from node.tasks.context import TaskContext
from node.tasks.dispatch import Dispatcher, create_dispatcher
from node.tasks.jobs import queued_job_ids, requeue_stale_running, requeue_unfinished
from node.delivery.senders import check_destinations
from node.delivery.task import requeue_pending_deliveries

log = logging.getLogger(__name__)


def job_sweep_every_passes(settings: Settings) -> int:
    """Completion-scanner passes between two job sweeps: about one heartbeat interval."""
    return max(1, round(settings.job_heartbeat_seconds / settings.scan_interval_seconds))


class NodeService:
    """The composed node; :meth:`start` then :meth:`stop`, or :meth:`run` until a signal."""

    def __init__(self, settings: Settings, *, with_listener: bool = True, sweep_every_passes: int | None = None) -> None:
        self.settings = settings
        self.with_listener = with_listener
        self.sweep_every_passes = sweep_every_passes or job_sweep_every_passes(settings)
        self._broker_id: str | None = None
        self.database = Database(settings.resolved_database_url)
        self.dispatcher: Dispatcher | None = None
        self.scanner: CompletionScanner | None = None
        self.delivery_sweeper: Any = None
        self.listener: Any = None
        self._stop_requested = threading.Event()
        self._stopped = False

    @property
    def in_process(self) -> bool:
        return not self.settings.broker_url

    def start(self) -> None:
        """Bring the node up (see the module docstring for the order)."""
        settings = self.settings
        check_destinations(settings)
        self.database.ensure_schema()
        settings.spool_dir.mkdir(parents=True, exist_ok=True)
        self.dispatcher = create_dispatcher(settings, self.database)
        log.info(
            "node %s starting: database %s, tasks %s",
            settings.ae_title,
            self.database.engine.url.render_as_string(hide_password=True),
            self.dispatcher.transport,
        )
        wake = requeue_unfinished(self.database, settings, running_are_dead=self.in_process)
        context = TaskContext(settings, self.database, self.dispatcher)
        try:
            requeue_pending_deliveries(context)
        except Exception:  # must not stop the node; the periodic delivery sweep finds them again
            log.exception("start-up sweep of pending deliveries failed")
        dispatcher = self.dispatcher
        if not self.in_process:
            self._broker_id = self._read_broker_id()
        self.scanner = CompletionScanner(
            self.database,
            settings,
            dispatcher.process_study,
            on_stale_sweep=self.periodic_sweep,
            sweep_every_passes=self.sweep_every_passes,
        )
        self.scanner.add_wakeups(wake)
        self.scanner.start()
        from node.delivery.sweep import DeliverySweeper

        self.delivery_sweeper = DeliverySweeper(self.database, dispatcher, settings=settings, senders=context.senders)
        self.delivery_sweeper.start()
        if self.with_listener:
            from node.scp.server import start_listener

            self.listener = start_listener(settings, self.database, on_instance_stored=None)
            log.info("listening as %s on %s:%s", settings.ae_title, settings.host, getattr(self.listener, "port", settings.port))

    def _read_broker_id(self) -> str | None:
        reader = getattr(self.dispatcher, "broker_instance_id", None)
        if reader is None:
            return None
        try:
            return reader()
        except Exception as exc:  # broker unreachable now; compared again on the next sweep
            log.warning("cannot read the broker's instance id: %s", exc)
            return None

    def periodic_sweep(self) -> list[int]:
        """Every ``sweep_every_passes`` scans (about every heartbeat): job ids that need another wake-up.

        Running jobs whose heartbeat stopped (their worker died) are queued again, or given up
        when the evidence says the study is to blame (:func:`node.tasks.jobs.requeue_lost`);
        with a broker, when it restarted since the last look (a Redis without persistence
        forgets every message), every queued job is woken again. Duplicates are harmless: a
        job is claimed once.
        """
        wake = requeue_stale_running(self.database, self.settings)
        if self.in_process:
            return wake
        current = self._read_broker_id()
        if current is not None and self._broker_id is not None and current != self._broker_id:
            queued = queued_job_ids(self.database)
            log.warning("the broker restarted; re-sending the wake-ups of %d queued job(s)", len(queued))
            wake += [job_id for job_id in queued if job_id not in wake]
        if current is not None:
            self._broker_id = current
        return wake

    def stop(self) -> None:
        """Stop listener, scanner and dispatcher (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        log.info("node stopping")
        if self.listener is not None:
            try:
                self.listener.shutdown()
            except Exception:
                log.exception("listener did not shut down cleanly")
        if self.scanner is not None:
            self.scanner.stop()
        if self.delivery_sweeper is not None:
            self.delivery_sweeper.stop()
        if self.dispatcher is not None:
            self.dispatcher.shutdown(wait=True)
        self.database.engine.dispose()
        log.info("node stopped")

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Ask :meth:`run` to stop (signal handler)."""
        if signum is not None:
            log.info("signal %s received; stopping", signal.Signals(signum).name)
        self._stop_requested.set()

    def run(self) -> int:
        """Start, serve until SIGTERM or SIGINT, stop; return the exit status."""
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self._stop_requested.wait(1.0):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0
