"""``cxr-node serve`` as a subprocess, for end-to-end and crash tests.

The node gets a data directory of its own, a free loopback port and short quiet periods;
:meth:`NodeProcess.start` returns once the node answers C-ECHO (DCMTK ``echoscu``).

Example::

    with NodeProcess(tmp_path / "var") as node:
        storescu(node.port, files)
        node.wait_for_study(study_uid, "done")
        print(node.status())
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.dcmtk import echoscu
from tests.support.ports import free_port

CXR_NODE = str(Path(sys.executable).with_name("cxr-node"))
#: Seconds the node may take to answer its first C-ECHO.
START_TIMEOUT = 60.0


class NodeProcess:
    """One ``cxr-node serve`` process; can be killed and started again on the same data and port.

    Parameters
    ----------
    data_dir:
        ``CXR_NODE_DATA_DIR`` (SQLite database and spool live there unless ``env`` says else).
    port:
        Listener port; a free one by default, kept across restarts.
    env:
        Extra ``CXR_NODE_*`` variables (override the test defaults: quiet period 1 s, scans
        every 0.1 s, no free-disk watermark). Other ``CXR_NODE_*`` variables of the calling
        environment are not passed on.
    """

    def __init__(self, data_dir: Path, *, port: int | None = None, ae_title: str = "CXRNODE", env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.ae_title = ae_title
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
        self.env.update(
            {
                "CXR_NODE_DATA_DIR": str(data_dir),
                "CXR_NODE_HOST": "127.0.0.1",
                "CXR_NODE_PORT": str(self.port),
                "CXR_NODE_AE_TITLE": ae_title,
                "CXR_NODE_STABLE_SECONDS": "1",
                "CXR_NODE_SCAN_INTERVAL_SECONDS": "0.1",
                "CXR_NODE_MIN_FREE_DISK_BYTES": "0",
            }
        )
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._database: Any = None
        self.starts = 0
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"node-{self.port}.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = START_TIMEOUT) -> "NodeProcess":
        """Start ``cxr-node serve`` and wait until it answers C-ECHO."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the node is already running")
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start {self.starts} =====\n".encode())
        log.flush()
        self.process = subprocess.Popen([CXR_NODE, "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cxr-node serve exited with {self.process.returncode}:\n{self.log_text()[-4000:]}")
            if echoscu(self.port, called_aet=self.ae_title, timeout=5).returncode == 0:
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"cxr-node serve did not answer C-ECHO on port {self.port} within {timeout} s:\n{self.log_text()[-4000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; return the exit status (killed after ``timeout``)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: the node gets no chance to clean up (a crash)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run another ``cxr-node`` command with this node's environment."""
        return subprocess.run([CXR_NODE, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict[str, Any]:
        """``cxr-node status --json``."""
        result = self.cli("status", "--json")
        if result.returncode != 0:
            raise RuntimeError(f"cxr-node status failed ({result.returncode}): {result.stderr}")
        return json.loads(result.stdout)

    def study(self, study_instance_uid: str) -> dict[str, Any] | None:
        """``cxr-node studies show UID --json``, or None when the node does not know the study."""
        result = self.cli("studies", "show", study_instance_uid, "--json")
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)

    def database_url(self) -> str:
        """The node's database URL (``CXR_NODE_DATABASE_URL`` or SQLite in the data directory)."""
        return self.env.get("CXR_NODE_DATABASE_URL") or f"sqlite:///{(self.data_dir / 'cxr-node.sqlite3').resolve()}"

    def report(self, study_instance_uid: str) -> dict[str, Any] | None:
        """The study's report read straight from the database (no CLI start-up per poll)."""
        from node.db import Database
        from node.reports import study_report

        if self._database is None:
            self._database = Database(self.database_url())
        try:
            with self._database.session() as session:
                return study_report(session, study_instance_uid)
        except LookupError:
            return None

    def wait_for_study(self, study_instance_uid: str, state: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll the database until the study is in ``state``; return its report."""
        deadline = time.monotonic() + timeout
        report = None
        while time.monotonic() < deadline:
            report = self.report(study_instance_uid)
            if report is not None and report["study"]["state"] == state:
                return report
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"study {study_instance_uid} not {state} within {timeout} s; last report: {report}\n{self.log_text()[-4000:]}"
        )

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._database is not None:
            self._database.engine.dispose()
            self._database = None


def as_json(text: str) -> Any:
    """Parse a command's stdout, naming it when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"not JSON ({exc}): {text[:500]}") from None


class WorkerProcess:
    """One ``cxr-node worker`` process for some queues; can be killed and started again.

    Parameters
    ----------
    env:
        The whole environment of the worker (e.g. :attr:`NodeProcess.env` of the node it works
        for: same data directory, database and broker).
    queues:
        Queues to consume (``--queues``), e.g. ``("inference",)``.
    log_path:
        The worker's stdout and stderr; each start appends a marker line.
    pool, concurrency:
        ``--pool`` and ``--concurrency``; the command's defaults when None.

    :meth:`start` returns once Celery logs that the worker is ready (connected to the broker,
    consuming). The worker runs in a session of its own, so :meth:`kill` reaches a prefork
    pool's children too.
    """

    def __init__(
        self,
        env: dict[str, str],
        queues: tuple[str, ...],
        log_path: Path,
        *,
        pool: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.env = env
        self.queues = queues
        self.log_path = log_path
        self.pool = pool
        self.concurrency = concurrency
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        argv = [CXR_NODE, "worker", "--queues", ",".join(self.queues), "--log-level", "INFO"]
        if self.pool:
            argv += ["--pool", self.pool]
        if self.concurrency:
            argv += ["--concurrency", str(self.concurrency)]
        return argv

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _this_start_log(self) -> str:
        return self.log_text().rsplit(f"===== start {self.starts} =====", 1)[-1]

    def start(self, timeout: float = START_TIMEOUT, *, wait: bool = True) -> "WorkerProcess":
        """Start the worker; with ``wait``, return once it logged ``ready`` (it needs the broker for that)."""
        if self.is_running():
            raise RuntimeError(f"the {'+'.join(self.queues)} worker is already running")
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> "WorkerProcess":
        """Wait until the worker of the latest start logged ``ready``; raise when it exited or took too long."""
        if self.process is None:
            raise RuntimeError("the worker was not started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cxr-node worker exited with {self.process.returncode}:\n{self._this_start_log()[-4000:]}")
            if " ready." in self._this_start_log():
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"cxr-node worker was not ready within {timeout} s:\n{self._this_start_log()[-4000:]}")

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.is_running() else None  # type: ignore[union-attr]

    def kill(self) -> None:
        """SIGKILL the worker and its children (a crash: the task it runs stays unacknowledged)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)
        self.process = None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (Celery's warm shutdown: the running task finishes), SIGKILL after ``timeout``."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return -signal.SIGKILL
        code = self.process.returncode
        self.process = None
        return code
