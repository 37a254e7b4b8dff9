"""Headless Chromium driven over the Chrome DevTools Protocol (CDP), standard library only.

:class:`HeadlessChromium` starts Debian's ``chromium`` with ``--remote-debugging-pipe``: the
browser reads CDP commands on file descriptor 3 and writes answers and events on descriptor 4,
each message one JSON text ended by a NUL byte. That needs no websocket client and opens no
debugging port. One page target is attached in flat mode; its console messages and uncaught
exceptions are collected (:attr:`HeadlessChromium.console`) so a test can show them when what
it waits for does not appear.

Flags: ``--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
--disable-background-networking --disable-component-update --disable-sync`` with a fresh
``--user-data-dir``; WebGL runs on SwiftShader (``--enable-unsafe-swiftshader``), which is
what a machine without a GPU has::

    with HeadlessChromium(tmp_path / "profile") as browser:
        browser.navigate(url)
        browser.wait_for("document.body.innerText.includes('Mass probability')", timeout=60)
        browser.screenshot(tmp_path / "page.png")
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
)
DEFAULT_WINDOW = (1600, 1000)
_COMMAND_TIMEOUT_S = 30.0
_POLL_INTERVAL_S = 0.25
_CONSOLE_LIMIT = 2000


def chromium_binary() -> str:
    """The Chromium executable (Debian's ``chromium``).

    Raises
    ------
    FileNotFoundError
        Chromium is not installed: run ``scripts/install_viewer.sh``.
    """
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("no chromium executable on PATH; run scripts/install_viewer.sh (Debian package chromium)")


class BrowserError(RuntimeError):
    """Chromium exited, a CDP command failed, or a condition was not met before its deadline."""


class HeadlessChromium:
    """One headless Chromium with one page, driven over CDP on a pipe.

    Parameters
    ----------
    profile_dir:
        A fresh, test-owned directory for ``--user-data-dir``.
    window:
        ``(width, height)`` of the page in CSS pixels; screenshots have this size.
    """

    def __init__(self, profile_dir: Path, *, window: tuple[int, int] = DEFAULT_WINDOW) -> None:
        self.profile_dir = Path(profile_dir)
        self.window = window
        self.console: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None
        self._to_browser: int | None = None
        self._from_browser: int | None = None
        self._next_id = 0
        self._pending: dict[int, dict[str, Any]] = {}
        self._answered = threading.Condition()
        self._reader: threading.Thread | None = None
        self._session: str | None = None
        self._closed = False

    # --- life cycle -------------------------------------------------------------------------
    def start(self) -> "HeadlessChromium":
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        pipe_reads, self._to_browser = os.pipe()
        self._from_browser, pipe_writes = os.pipe()
        # Copies at 10 and above (never 3 or 4), so the child's two dup2 calls cannot clobber
        # each other; the child does nothing else between fork and exec.
        browser_reads = fcntl.fcntl(pipe_reads, fcntl.F_DUPFD_CLOEXEC, 10)
        browser_writes = fcntl.fcntl(pipe_writes, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(pipe_reads)
        os.close(pipe_writes)
        width, height = self.window

        def wire_pipes() -> None:  # runs in the child between fork and exec
            os.dup2(browser_reads, 3)  # dup2 clears close-on-exec on the new descriptors
            os.dup2(browser_writes, 4)

        command = [
            chromium_binary(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile_dir}",
            f"--window-size={width},{height}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.log_path = self.profile_dir.parent / f"{self.profile_dir.name}-chromium.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed in stop()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            close_fds=False,  # Python's own descriptors are non-inheritable (PEP 446)
            preexec_fn=wire_pipes,  # noqa: PLW1509 - two dup2 calls, no locks taken
            start_new_session=True,
        )
        os.close(browser_reads)
        os.close(browser_writes)
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()
        try:
            self._attach_page()
        except BaseException:
            self.stop()
            raise
        return self

    def _attach_page(self) -> None:
        width, height = self.window
        target = self._page_target()
        attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def _page_target(self) -> str:
        deadline = time.monotonic() + _COMMAND_TIMEOUT_S
        while time.monotonic() < deadline:
            targets = self.send("Target.getTargets", session=False)["targetInfos"]
            pages = [t["targetId"] for t in targets if t.get("type") == "page"]
            if pages:
                return pages[0]
            time.sleep(_POLL_INTERVAL_S)
        raise BrowserError("Chromium opened no page target")

    def stop(self) -> None:
        self._closed = True
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                self._write({"id": -1, "method": "Browser.close"})
            except OSError:
                pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if process is not None:
            # Chromium's renderer and GPU processes share its process group (its own session).
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)
            self._log.close()
        for fd in (self._to_browser, self._from_browser):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._to_browser = self._from_browser = None
        if self._reader is not None:
            self._reader.join(timeout=5)

    def __enter__(self) -> "HeadlessChromium":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- CDP transport ----------------------------------------------------------------------
    def _write(self, message: dict[str, Any]) -> None:
        if self._to_browser is None:
            raise BrowserError("Chromium is not running")
        data = json.dumps(message).encode() + b"\0"
        while data:
            written = os.write(self._to_browser, data)
            data = data[written:]

    def _read_loop(self) -> None:
        buffer = b""
        fd = self._from_browser
        while fd is not None:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                self._handle(json.loads(raw))
        with self._answered:
            self._closed = True
            self._answered.notify_all()

    def _handle(self, message: dict[str, Any]) -> None:
        if "id" in message:
            with self._answered:
                self._pending[message["id"]] = message
                self._answered.notify_all()
            return
        method, params = message.get("method"), message.get("params", {})
        line = None
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            line = f"console.{params.get('type')}: {text}"
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            line = f"exception: {details.get('exception', {}).get('description') or details.get('text')}"
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            line = f"log.{entry.get('level')}: {entry.get('text')} {entry.get('url', '')}".rstrip()
        if line is not None and len(self.console) < _CONSOLE_LIMIT:
            self.console.append(line[:2000])

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True,
             timeout: float = _COMMAND_TIMEOUT_S) -> dict[str, Any]:
        """Send one CDP command (to the page's session unless ``session`` is false); return its result."""
        if self.process is None or self.process.poll() is not None:
            raise BrowserError(f"Chromium is not running (exit status {self.process and self.process.returncode})")
        with self._answered:
            self._next_id += 1
            message_id = self._next_id
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session and self._session:
            message["sessionId"] = self._session
        self._write(message)
        deadline = time.monotonic() + timeout
        with self._answered:
            while message_id not in self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise BrowserError(f"no answer to CDP {method} within {timeout} s")
                self._answered.wait(remaining)
            answer = self._pending.pop(message_id)
        if "error" in answer:
            raise BrowserError(f"CDP {method} failed: {answer['error']}")
        return answer.get("result", {})

    # --- page helpers -----------------------------------------------------------------------
    def navigate(self, url: str) -> None:
        answer = self.send("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise BrowserError(f"navigation to {url} failed: {answer['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (returned by value, promises awaited)."""
        answer = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression!r} threw: {answer['exceptionDetails'].get('text')}")
        return answer.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout: float, what: str | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value.

        While the page is still loading the expression may throw (no ``document.body`` yet);
        that counts as not yet true.

        Raises
        ------
        BrowserError
            The deadline passed; the message carries the last console lines.
        """
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (error) {{ return null; }} }})()"
        return self.poll(lambda: self.evaluate(guarded), timeout=timeout, what=what or expression)

    def poll(self, condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise BrowserError(
                    f"timed out after {timeout} s waiting for {what}; last console lines:\n" + self.console_tail()
                )
            time.sleep(_POLL_INTERVAL_S)

    def text(self) -> str:
        """The page's visible text (``document.body.innerText``)."""
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def screenshot(self, path: Path, *, clip: dict[str, float] | None = None) -> Path:
        """Write a PNG of the page (or of ``clip``: x, y, width, height in CSS pixels) to ``path``."""
        params: dict[str, Any] = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        data = self.send("Page.captureScreenshot", params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console[-lines:])
