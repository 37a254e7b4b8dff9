"""Ingest benchmark: the same storescu load into cxr-node, DCMTK storescp and pynetdicom storescp.

The load: ``--count`` (default 200) uncompressed 2048x2048 16-bit DX images (Explicit VR Little
Endian, about 8 MiB each), generated once into a temporary directory and sent by one DCMTK
``storescu`` run (one association, ``-R``) to each receiver in turn:

a. ``cxr-node serve`` as a subprocess, with its real SQLite database (WAL, synchronous=FULL) and
   spool (fsync of each file and directory before Success). The quiet period is set long
   (``CXR_NODE_STABLE_SECONDS``) so that processing does not start during the measurement: this
   measures ingest, not inference;
b. DCMTK ``storescp`` writing files (``-od``), no fsync;
c. ``python -m pynetdicom storescp`` writing files (``-od``), no fsync, with its default maximum
   PDU (16382 bytes) and again with ``-pdu 0`` (unlimited, the node's default), so that the
   ratio is also shown for the same PDU size.

All receivers are started and polled with ``echoscu`` until they answer. The images are split
into ``--rounds`` batches (default 4); each batch goes to every receiver, in an order that
rotates from batch to batch, so that a change in machine load during the run is shared. Rates
are images over the summed storescu wall time per receiver; the received files (for the node
also its committed rows) are counted at the end. Run::

    .venv/bin/python benchmarks/ingest.py            # 200 images
    .venv/bin/python benchmarks/ingest.py --count 50 --size 1024

The machine load (1-minute load average) is printed before and after: on a shared machine the
figures move with it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.dicom_export import RadiographIdentity, radiograph_dataset  # noqa: E402

AE_TITLE = "CXRNODE"
READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def generate(directory: Path, count: int, size: int) -> int:
    """Write ``count`` DX instances of one study; return the total bytes written."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    base = 0.5 + 0.3 * np.sin(3 * np.pi * x) * np.cos(2 * np.pi * y)
    first = RadiographIdentity.new()
    total = 0
    for index in range(count):
        noise = rng.normal(0, 0.02, (size, size))
        pixels = np.rint(np.clip(base + noise, 0, 1) * 4095).astype(np.uint16)
        identity = RadiographIdentity.new(first.study_instance_uid, series_instance_uid=first.series_instance_uid)
        ds = radiograph_dataset(pixels, identity)
        ds.InstanceNumber = index + 1
        path = directory / f"{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def wait_until_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"receiver exited with {process.returncode} before answering C-ECHO")
        echo = subprocess.run(
            ["echoscu", "-aec", AE_TITLE, "-to", "2", "127.0.0.1", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        if echo.returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"receiver on port {port} did not answer C-ECHO within {READY_TIMEOUT_S} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Receiver:
    """One receiver process and the time it took to take its share of the load."""

    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    out: Path
    seconds: float = 0.0
    images: int = 0
    received: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out.parent / f"{self.out.name}.log", "wb") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.out.parent)
        wait_until_ready(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


def send(port: int, files: list[Path]) -> float:
    started = time.perf_counter()
    run = subprocess.run(
        ["storescu", "-R", "-aet", "BENCHSCU", "-aec", AE_TITLE, "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"storescu failed ({run.returncode}):\n{run.stdout[-3000:]}")
    return elapsed


def count_files(directory: Path) -> int:
    return sum(1 for p in directory.rglob("*") if p.is_file() and not p.name.endswith(".part"))


def node_rows(data_dir: Path) -> int:
    """Instance rows the node committed (its SQLite database in the data directory)."""
    from sqlalchemy import func, select

    from node.db import Database, Instance

    database = Database(f"sqlite:///{(data_dir / 'cxr-node.sqlite3').resolve()}")
    try:
        with database.session() as session:
            return int(session.scalar(select(func.count()).select_from(Instance)) or 0)
    finally:
        database.engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="images to send (default 200)")
    parser.add_argument("--size", type=int, default=2048, help="rows = columns (default 2048)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put images and receivers' files")
    parser.add_argument(
        "--rounds", type=int, default=4, help="split the load into this many batches, receivers in rotating order (default 4)"
    )
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 16 or not 1 <= args.rounds <= args.count:
        parser.error("--count must be >= 1, --size >= 16 and --rounds between 1 and --count")

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    python = sys.executable
    cxr_node = shutil.which("cxr-node", path=str(Path(python).parent)) or shutil.which("cxr-node")
    if cxr_node is None:
        raise SystemExit("cxr-node is not installed next to this Python; run from the project's virtualenv")

    root = Path(tempfile.mkdtemp(prefix="cxr-ingest-bench-", dir=args.workdir))
    try:
        images = root / "images"
        started = time.perf_counter()
        total = generate(images, args.count, args.size)
        files = sorted(images.glob("*.dcm"))
        print(
            f"generated {len(files)} images of {args.size}x{args.size} 16-bit, {total / len(files) / 2**20:.1f} MiB each "
            f"in {time.perf_counter() - started:.1f} s; load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs",
            flush=True,
        )
        for path in files:  # warm the page cache so the first receiver is not penalised
            path.read_bytes()

        node_port = free_port()
        node_dir = root / "node"
        node_env = base_env | {
            "CXR_NODE_DATA_DIR": str(node_dir),
            "CXR_NODE_PORT": str(node_port),
            "CXR_NODE_HOST": "127.0.0.1",
            "CXR_NODE_AE_TITLE": AE_TITLE,
            "CXR_NODE_STABLE_SECONDS": "86400",
            "CXR_NODE_MIN_FREE_DISK_BYTES": str(256 * 2**20),
        }
        receivers = [Receiver("cxr-node serve (fsync + SQLite)", [cxr_node, "serve"], node_env, node_port, node_dir)]
        port = free_port()
        receivers.append(
            Receiver("DCMTK storescp", ["storescp", "-aet", AE_TITLE, "-od", str(root / "dcmtk"), str(port)], base_env, port, root / "dcmtk")
        )
        for label, extra in (("pynetdicom storescp (default PDU)", []), ("pynetdicom storescp -pdu 0", ["-pdu", "0"])):
            port = free_port()
            out = root / ("pynetdicom" + "".join(extra).replace("-", "_"))
            command = [python, "-m", "pynetdicom", "storescp", str(port), "-aet", AE_TITLE, "-od", str(out), *extra]
            receivers.append(Receiver(label, command, base_env, port, out))

        try:
            for receiver in receivers:
                receiver.start()
            # Batches in rotating order, so that a change of machine load during the run
            # falls on every receiver alike.
            batches = [files[i :: args.rounds] for i in range(args.rounds)]
            for index, batch in enumerate(batches):
                for receiver in receivers[index % len(receivers) :] + receivers[: index % len(receivers)]:
                    receiver.seconds += send(receiver.port, batch)
                    receiver.images += len(batch)
        finally:
            for receiver in receivers:
                receiver.stop()
        for receiver in receivers:
            if receiver is receivers[0]:  # the node: files in the spool and committed rows must both be there
                receiver.received = min(count_files(node_dir / "spool"), node_rows(node_dir))
            else:
                receiver.received = count_files(receiver.out)
            print(
                f"  {receiver.name:<40} {receiver.rate:7.1f} images/s  ({receiver.seconds:6.1f} s, {receiver.received} received)",
                flush=True,
            )

        node = receivers[0]
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        for other in receivers[1:]:
            print(f"node / {other.name:<36} = {node.rate / other.rate:5.2f}")
        missing = [r.name for r in receivers if r.received != r.images]
        if missing:
            print(f"WARNING: received count differs from images sent for: {', '.join(missing)}")
            return 1
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
