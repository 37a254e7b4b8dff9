"""A real PostgreSQL server in a temporary directory on a free loopback port.

``initdb`` into a fresh directory, ``pg_ctl start`` with the Unix socket in that directory and
TCP on 127.0.0.1 only, ``createdb``. PostgreSQL refuses to run as root, so when the tests run
as root the server runs as the ``postgres`` user (``runuser``) and the directory is handed to it.

Example::

    with PostgresServer() as pg:
        database = Database(pg.url)
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.ports import free_port

#: Seconds the server may take to accept connections.
START_TIMEOUT = 60.0
SERVER_USER = "postgres"


def postgres_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (Debian layout)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not candidates:
        raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); install the Debian package postgresql")
    return Path(candidates[-1]).parent


class PostgresServer:
    """A throw-away PostgreSQL cluster with one database, ``cxr_node``, owned by the server user.

    :meth:`kill` ends the server the way a crash does (SIGKILL to the postmaster and every
    backend); :meth:`start` again then brings the same cluster up on the same port, through
    PostgreSQL's crash recovery. :meth:`stop` ends it and deletes the cluster.
    """

    def __init__(self, database: str = "cxr_node", *, max_connections: int = 50) -> None:
        self.bin = postgres_bin_dir()
        self.database = database
        self.max_connections = max_connections
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cxr-node-pg-"))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "run"
        self.as_root = os.geteuid() == 0
        self.user = SERVER_USER if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        self._started = False

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3) over TCP on loopback; trust authentication."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def start(self) -> "PostgresServer":
        """Create the cluster and its database (first call), start the server, wait until it accepts connections."""
        fresh = not (self.data_dir / "PG_VERSION").exists()
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            entry = pwd.getpwnam(SERVER_USER)
            for path in (self.root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        if fresh:
            self._run("initdb", "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8", "--no-sync", "-U", self.user)
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c max_connections={self.max_connections}"
        )
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"), "-o", options, "-w", "-t", str(int(START_TIMEOUT)), "start")
        self._started = True
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), timeout=10)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)
        if fresh:
            self._run("createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.user, self.database)
        return self

    def server_pids(self) -> list[int]:
        """The postmaster's process id and those of its children (backends, background workers)."""
        try:
            postmaster = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return []
        pids = [postmaster]
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == postmaster:  # field 4 of stat: the parent's pid
                pids.append(int(Path(stat).parent.name))
        return pids

    def is_running(self) -> bool:
        """True while the postmaster process exists."""
        pids = self.server_pids()
        return bool(pids) and Path(f"/proc/{pids[0]}").exists()

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once (a crash; the cluster stays for :meth:`start`)."""
        for pid in self.server_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while self.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._started = False

    def create_database(self, name: str) -> str:
        """Create another database in the cluster; return its SQLAlchemy URL."""
        self._run("createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.user, name)
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self._started:
            try:
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", timeout=60)
            finally:
                self._started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
