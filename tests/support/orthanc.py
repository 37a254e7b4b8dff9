"""A real Orthanc 1.10 for tests: the PACS that sends studies to the node and receives its results.

:class:`OrthancServer` writes a JSON configuration into a temporary directory (storage and
index there too), starts ``Orthanc`` on free ports, waits until its REST API answers, and stops
it at teardown. The DICOM port listens on all interfaces (Orthanc 1.10 has no loopback-only
option); the HTTP API refuses remote clients (``RemoteAccessAllowed: false``) and is used over
127.0.0.1 only.

REST calls use the standard library (``urllib``) so the helper needs no extra package::

    with OrthancServer(tmp_path, modalities={"CXRNODE": ("CXRNODE", "127.0.0.1", 11112)}) as pacs:
        pacs.upload(path)
        pacs.store_to_modality("CXRNODE", pacs.study_id(study_uid))
        pacs.sop_instance_uids(study_uid)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ORTHANC_BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
START_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port that is free on all interfaces right now (bound to 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True when ``port`` can be bound on all interfaces (no listener left on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


class OrthancError(RuntimeError):
    """Orthanc did not start, or a REST call failed (the message carries Orthanc's answer)."""


class OrthancServer:
    """One Orthanc process with its configuration, storage and log under ``workdir``.

    Parameters
    ----------
    workdir:
        A directory owned by the test (``tmp_path``); Orthanc's storage survives :meth:`stop`
        there, so a restart with :meth:`start` on the same ports sees the same content.
    aet:
        Orthanc's own AE title.
    modalities:
        ``{name: (aet, host, port)}`` for ``DicomModalities``: the peers Orthanc may send to.
    http_port, dicom_port:
        Fixed ports, e.g. to restart on the ports of an earlier run; free ones by default.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        http_port: int | None = None,
        dicom_port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.storage_dir = self.workdir / "orthanc-storage"
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"

    # --- life cycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        """The JSON configuration Orthanc is started with."""
        return {
            "Name": "cxr-node-test-pacs",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "HttpDescribeErrors": True,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {name: list(peer) for name, peer in self.modalities.items()},
            "DicomScuTimeout": 30,
            "DicomAssociationCloseDelay": 0,
            "OverwriteInstances": False,
            "SaveJobs": False,
            "StableAge": 3600,
            "MetricsEnabled": False,
            "SyncStorageArea": False,
        }

    def start(self) -> "OrthancServer":
        """Write the configuration, start Orthanc and wait until ``/system`` answers."""
        if self.process is not None and self.process.poll() is None:
            raise OrthancError("Orthanc is already running; stop() it first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self.process = subprocess.Popen(
            [ORTHANC_BINARY, str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        self._log_file = log
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OrthancError(f"Orthanc exited with {self.process.returncode}; log:\n{self.log_tail()}")
            try:
                self.get("/system")
            except (OSError, OrthancError):
                time.sleep(0.1)
                continue
            if self._dicom_port_open():
                return self
            time.sleep(0.1)
        self.stop()
        raise OrthancError(f"Orthanc did not answer within {START_TIMEOUT_S} s; log:\n{self.log_tail()}")

    def _dicom_port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 15.0, *, graceful: bool = True) -> None:
        """Stop Orthanc and wait until its ports are free.

        ``graceful``: SIGTERM and wait (Orthanc takes about 3 s to wind down its servers),
        SIGKILL after ``timeout``; otherwise SIGKILL at once (teardown, when the storage is
        thrown away anyway).
        """
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
        self._log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (port_is_free(self.dicom_port) and port_is_free(self.http_port)):
            time.sleep(0.05)

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(graceful=False)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # --- REST -------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> bytes:
        """One REST call; raise :class:`OrthancError` with Orthanc's answer on an HTTP error."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=120) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise OrthancError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from exc

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post_json(self, path: str, payload: Any) -> Any:
        answer = self.request("POST", path, json.dumps(payload).encode(), "application/json")
        return json.loads(answer) if answer else None

    def upload(self, path: Path) -> dict[str, Any]:
        """Store one DICOM file through ``POST /instances``; return Orthanc's answer (ID, Status)."""
        return json.loads(self.request("POST", "/instances", Path(path).read_bytes(), "application/dicom"))

    def lookup(self, uid: str, kind: str) -> str | None:
        """Orthanc's identifier of the ``kind`` (Study, Series, Instance) with DICOM UID ``uid``."""
        for hit in json.loads(self.request("POST", "/tools/lookup", uid.encode(), "text/plain")):
            if hit.get("Type") == kind:
                return str(hit["ID"])
        return None

    def study_id(self, study_instance_uid: str) -> str:
        """Orthanc's identifier of a study; raise when Orthanc does not hold it."""
        found = self.lookup(study_instance_uid, "Study")
        if found is None:
            raise OrthancError(f"Orthanc holds no study {study_instance_uid}")
        return found

    def instances_of_study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Every instance of a study (``GET /studies/<id>/instances``); empty when the study is absent."""
        found = self.lookup(study_instance_uid, "Study")
        if found is None:
            return []
        return list(self.get(f"/studies/{found}/instances"))

    def sop_instance_uids(self, study_instance_uid: str) -> list[str]:
        """SOP Instance UIDs stored in a study (one entry per stored instance, so duplicates show)."""
        return [i["MainDicomTags"]["SOPInstanceUID"] for i in self.instances_of_study(study_instance_uid)]

    def instances_with_sop_class(self, study_instance_uid: str) -> list[tuple[str, str]]:
        """(SOP Instance UID, SOP Class UID) of every instance stored in a study (Orthanc's ``SopClassUid`` metadata)."""
        return [
            (
                i["MainDicomTags"]["SOPInstanceUID"],
                self.request("GET", f"/instances/{i['ID']}/metadata/SopClassUid").decode().strip(),
            )
            for i in self.instances_of_study(study_instance_uid)
        ]

    def instance_file(self, sop_instance_uid: str) -> bytes:
        """The stored DICOM file of an instance, as Orthanc holds it."""
        found = self.lookup(sop_instance_uid, "Instance")
        if found is None:
            raise OrthancError(f"Orthanc holds no instance {sop_instance_uid}")
        return self.request("GET", f"/instances/{found}/file")

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def store_to_modality(self, modality: str, resource_ids: list[str] | str, synchronous: bool = True) -> Any:
        """Ask Orthanc to C-STORE resources to a peer of ``DicomModalities`` (``POST /modalities/<name>/store``)."""
        ids = [resource_ids] if isinstance(resource_ids, str) else list(resource_ids)
        return self.post_json(f"/modalities/{modality}/store", {"Resources": ids, "Synchronous": synchronous})

    def delete_study(self, study_instance_uid: str) -> None:
        found = self.lookup(study_instance_uid, "Study")
        if found is not None:
            self.request("DELETE", f"/studies/{found}")
