"""Serve the OHIF viewer's built files and Orthanc's DICOMweb from one loopback origin.

The npm package ``@ohif/app`` ships a built static viewer (``dist/``); ``scripts/install_viewer.sh``
unpacks it under ``.cache/ohif/``. OHIF's built files must be served at the web root, and
served from the same origin as the DICOMweb API it needs no CORS setup. :class:`OhifServer`
is a small threaded HTTP server on 127.0.0.1 that

* answers ``/app-config.js`` with a configuration whose one data source is this server's
  ``/dicom-web`` (see :func:`app_config_js`);
* forwards ``/dicom-web/...`` to Orthanc's DICOMweb plugin, rewriting ``%2C`` to ``,`` in the
  query string (Orthanc's DICOMweb plugin 1.7 does not decode ``%2C`` in OHIF's
  ``includefield`` lists);
* serves the built files, and ``index.html`` for every other path (OHIF is a single-page
  app: ``/viewer?...`` is one of its routes, not a file).

Every proxied request is recorded (:attr:`OhifServer.proxied`) so a failing test can say what
the viewer asked for and what Orthanc answered::

    with OhifServer(ohif_dist(), orthanc_url="http://127.0.0.1:8042") as viewer:
        url = viewer.viewer_url(study_uid, initial_series_uid=sr_series_uid)
"""

from __future__ import annotations

import http.client
import json
import logging
import mimetypes
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.orthanc import OrthancServer

logger = logging.getLogger(__name__)

OHIF_VERSION = "3.13.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where ``scripts/install_viewer.sh`` unpacks ``@ohif/app``'s built files.
OHIF_DIST = REPO_ROOT / ".cache" / "ohif" / f"app-{OHIF_VERSION}" / "dist"
DICOMWEB_PREFIX = "/dicom-web"
_PROXY_TIMEOUT_S = 60.0
_CONTENT_TYPES = {
    ".js": "application/javascript",
    ".mjs": "application/javascript",
    ".wasm": "application/wasm",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# Hop-by-hop headers are the proxy's own business (RFC 9110 7.6.1); never forwarded. ``Host`` is
# forwarded: Orthanc's DICOMweb plugin builds the BulkDataURIs it returns from it, so they point
# back at this origin.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


def ohif_dist() -> Path:
    """The built OHIF viewer (the folder holding ``index.html``).

    Raises
    ------
    FileNotFoundError
        The viewer is not installed: run ``scripts/install_viewer.sh``.
    """
    if not (OHIF_DIST / "index.html").is_file():
        raise FileNotFoundError(
            f"OHIF {OHIF_VERSION} is not installed at {OHIF_DIST}; run scripts/install_viewer.sh first"
        )
    return OHIF_DIST


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class DicomWebOrthanc(OrthancServer):
    """H8's :class:`~tests.support.orthanc.OrthancServer` with the DICOMweb plugin loaded.

    DICOMweb answers at ``<url>/dicom-web/`` (QIDO-RS, WADO-RS) and ``<url>/wado`` (WADO-URI).
    """

    def config(self) -> dict[str, Any]:
        if not DICOMWEB_PLUGIN.is_file():
            raise FileNotFoundError(f"{DICOMWEB_PLUGIN} is missing; install the Debian package orthanc-dicomweb")
        config = super().config()
        config["Plugins"] = [str(DICOMWEB_PLUGIN)]
        config["DicomWeb"] = {"Enable": True, "Root": DICOMWEB_PREFIX + "/", "EnableWado": True, "WadoRoot": "/wado"}
        return config


#: ``window.config.customizationService`` of the viewer configuration, as JavaScript.
#:
#: * ``ohif.tours``: no onboarding tour over the images.
#: * ``onBeforeSRAddMeasurement``: OHIF 3.13.2 (and 3.14.0-beta.6) reads ``coords[0]`` of every
#:   measurement group of a TID 1500 SR when it places the SR's graphics, and throws (the whole
#:   viewer falls to "Something went wrong") on a group without spatial coordinates: the node's
#:   TID 1501 groups (findings below threshold, No Finding) and its lung groups that reference
#:   SEG segments. The hook gives such a group one empty coordinate entry, which OHIF then
#:   passes over ("no referenced SOP"), so the groups with an ellipse are drawn. See
#:   ``docs/viewer.md``.
SR_GUARD_CUSTOMIZATIONS_JS = """{
  'ohif.tours': { $set: [] },
  onBeforeSRAddMeasurement: {
    $set: function ({ measurement }) {
      if (!measurement.coords || measurement.coords.length === 0) {
        measurement.coords = [{}];
      }
      return measurement;
    },
  },
}"""


def app_config_js(dicomweb_root: str, *, sr_guard: bool = True) -> str:
    """OHIF's ``window.config`` with one DICOMweb data source at ``dicomweb_root``.

    ``dicomweb_root`` is the absolute URL of the DICOMweb API as the browser reaches it, e.g.
    ``http://127.0.0.1:8080/dicom-web``. Orthanc's plugin serves QIDO-RS, WADO-RS and
    WADO-URI at that one root; it is not a static-WADO server and it supports ``includefield``.
    ``sr_guard`` adds :data:`SR_GUARD_CUSTOMIZATIONS_JS` (without it, only the tour is off).
    """
    data_source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (cxr-node test PACS)",
            "name": "orthanc",
            "wadoUriRoot": dicomweb_root.rstrip("/").removesuffix(DICOMWEB_PREFIX) + "/wado",
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": True,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 4, "prefetch": 10},
        "showErrorDetails": "always",
        "defaultDataSourceName": "orthanc",
        "dataSources": [data_source],
    }
    customizations = SR_GUARD_CUSTOMIZATIONS_JS if sr_guard else "{ 'ohif.tours': { $set: [] } }"
    return (
        "window.config = " + json.dumps(config, indent=2) + ";\n"
        + "window.config.customizationService = " + customizations + ";\n"
    )


@dataclass(frozen=True)
class ProxiedRequest:
    """One request the viewer made to DICOMweb: method, path with query, Orthanc's status."""

    method: str
    path: str
    status: int


class OhifServer:
    """OHIF's static files plus a same-origin DICOMweb proxy to Orthanc, on a free loopback port.

    Parameters
    ----------
    dist:
        The built viewer (:func:`ohif_dist`).
    orthanc_url:
        Orthanc's HTTP root, e.g. ``http://127.0.0.1:8042``; its DICOMweb plugin must answer at
        ``/dicom-web/``.
    sr_guard:
        Serve the configuration with the SR guard (:func:`app_config_js`); read at every request
        of ``/app-config.js``, so a test may change :attr:`sr_guard` between page loads.
    """

    def __init__(self, dist: Path, orthanc_url: str, *, sr_guard: bool = True) -> None:
        self.dist = Path(dist).resolve()
        self.sr_guard = sr_guard
        parsed = urllib.parse.urlsplit(orthanc_url)
        if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
            raise ValueError(f"orthanc_url must be http://host:port; got {orthanc_url!r}")
        self._orthanc = (parsed.hostname, parsed.port)
        self.proxied: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the OHIF server is not started; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "OhifServer":
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-server", daemon=True)
        self._thread.start()
        logger.info("OHIF %s served at %s from %s", OHIF_VERSION, self.url, self.dist)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> "OhifServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests use ---------------------------------------------------------------------
    def viewer_url(self, study_instance_uid: str, *, initial_series_uid: str | None = None) -> str:
        """The viewer route that opens a study, optionally on one of its series (SR or SEG)."""
        query = {"StudyInstanceUIDs": study_instance_uid}
        if initial_series_uid:
            query["initialSeriesInstanceUID"] = initial_series_uid
        return f"{self.url}/viewer?{urllib.parse.urlencode(query)}"

    def proxy_failures(self) -> list[ProxiedRequest]:
        """Proxied requests Orthanc answered with an HTTP error (>= 400) or that failed (status 502)."""
        with self._lock:
            return [request for request in self.proxied if request.status >= 400]

    def _record(self, request: ProxiedRequest) -> None:
        with self._lock:
            self.proxied.append(request)

    @staticmethod
    def rewrite_query(query: str) -> str:
        """``%2C`` (either case) to ``,``: Orthanc's DICOMweb 1.7 does not decode it in ``includefield``."""
        return query.replace("%2C", ",").replace("%2c", ",")


class _Handler(BaseHTTPRequestHandler):
    owner: OhifServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        logger.debug("ohif-server: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        try:
            if split.path == DICOMWEB_PREFIX or split.path.startswith(DICOMWEB_PREFIX + "/") or split.path.startswith("/wado"):
                self._proxy(split)
            elif split.path == "/app-config.js":
                dicomweb_root = f"http://{self.headers.get('Host', '127.0.0.1')}{DICOMWEB_PREFIX}"
                config = app_config_js(dicomweb_root, sr_guard=self.owner.sr_guard)
                self._send(200, config.encode(), "application/javascript")
            else:
                self._static(split.path)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away (navigation, shutdown); nothing to answer

    def _static(self, path: str) -> None:
        root = self.owner.dist
        candidate = (root / urllib.parse.unquote(path).lstrip("/")).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            candidate = root / "index.html"  # a route of the single-page app
        content_type = _CONTENT_TYPES.get(candidate.suffix) or mimetypes.guess_type(candidate.name)[0]
        self._send(200, candidate.read_bytes(), content_type or "application/octet-stream")

    def _proxy(self, split: urllib.parse.SplitResult) -> None:
        target = split.path + ("?" + OhifServer.rewrite_query(split.query) if split.query else "")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
        connection = http.client.HTTPConnection(*self.owner._orthanc, timeout=_PROXY_TIMEOUT_S)
        try:
            connection.request(self.command, target, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            status = response.status
            reply_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
        except OSError as exc:
            self.owner._record(ProxiedRequest(self.command, target, 502))
            self._send(502, f"Orthanc did not answer: {exc}".encode(), "text/plain")
            return
        finally:
            connection.close()
        self.owner._record(ProxiedRequest(self.command, target, status))
        self.send_response(status)
        for name, value in reply_headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
