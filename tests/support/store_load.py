"""C-STORE files over several concurrent associations (pynetdicom), one sender thread each.

A load generator for benchmarks and fault-injection tests: the files are dealt round-robin to
``associations`` threads; each opens one association and sends its files in order. Every file
gets a :class:`StoreOutcome` with the DIMSE status the peer answered (None when no answer came:
refused, aborted, timed out) and the wall-clock time of the answer, so a caller can tell exactly
which files the peer acknowledged. With ``retry_for_s`` a thread whose association failed opens
a new one and sends the file again until that many seconds have passed (a peer being restarted).

:class:`StreamSender` sends a steady stream instead (one file every ``interval_s``, one
association each, in the background) and re-sends each file until the peer answers Success,
for fault injection: the node may be down or refuse while the stream runs.

Example::

    outcomes = send_files(paths, port=node.port, associations=8)
    assert all(o.status == 0 for o in outcomes)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE

#: Seconds to wait for a C-STORE answer, an association answer and network silence.
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class StoreOutcome:
    """What became of one file: the peer's DIMSE status (None: no answer) and when it came."""

    path: Path
    sop_instance_uid: str
    association: int  #: index of the sender thread, 0..associations-1
    status: int | None
    answered_at: float | None  #: ``time.time()`` of the answer
    tries: int
    error: str | None = None

    @property
    def acknowledged(self) -> bool:
        """True when the peer answered Success or a warning (0x0000, 0xB000, 0xB006, 0xB007)."""
        return self.status is not None and (self.status == 0 or self.status & 0xF000 == 0xB000)


def _contexts(paths: Sequence[Path]) -> dict[str, set[str]]:
    """SOP Class UID -> transfer syntaxes of the files, from their File Meta."""
    wanted: dict[str, set[str]] = {}
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        wanted.setdefault(str(ds.SOPClassUID), set()).add(str(ds.file_meta.TransferSyntaxUID))
    return wanted


class _Sender(threading.Thread):
    def __init__(self, index: int, paths: Sequence[Path], host: str, port: int, called_aet: str, calling_aet: str, retry_for_s: float) -> None:
        super().__init__(name=f"store-load-{index}", daemon=True)
        self.index = index
        self.paths = list(paths)
        self.host, self.port = host, port
        self.called_aet, self.calling_aet = called_aet, calling_aet
        self.retry_for_s = retry_for_s
        self.outcomes: list[StoreOutcome] = []

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
        for sop_class, syntaxes in _contexts(self.paths).items():
            ae.add_requested_context(sop_class, sorted(syntaxes))
        return ae

    def run(self) -> None:
        if not self.paths:
            return
        ae = self._ae()
        deadline = time.monotonic() + self.retry_for_s
        assoc = None
        try:
            for path in self.paths:
                uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                tries = 0
                while True:
                    tries += 1
                    error = None
                    status = None
                    if assoc is None or not assoc.is_established:
                        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet)
                    if assoc.is_established:
                        try:
                            answer = assoc.send_c_store(path)
                            status = getattr(answer, "Status", None)
                        except (OSError, RuntimeError) as exc:
                            error = f"{type(exc).__name__}: {exc}"
                        if status is None and error is None:
                            error = "no C-STORE answer (association aborted or timed out)"
                    else:
                        error = "association not established"
                    if status is not None or time.monotonic() >= deadline:
                        break
                    if assoc.is_established:
                        assoc.abort()
                    time.sleep(0.2)
                self.outcomes.append(
                    StoreOutcome(path, uid, self.index, status, time.time() if status is not None else None, tries, error)
                )
        finally:
            if assoc is not None and assoc.is_established:
                assoc.release()


def send_files(
    paths: Sequence[Path],
    port: int,
    *,
    associations: int = 8,
    host: str = "127.0.0.1",
    called_aet: str = "CXRNODE",
    calling_aet: str = "LOADSCU",
    retry_for_s: float = 0.0,
) -> list[StoreOutcome]:
    """Send every file over ``associations`` concurrent associations; one outcome per file, in ``paths`` order."""
    if associations < 1:
        raise ValueError("associations must be at least 1")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise
    senders = [
        _Sender(i, paths[i::associations], host, port, called_aet, calling_aet, retry_for_s) for i in range(associations)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    by_path = {o.path: o for s in senders for o in s.outcomes}
    return [by_path[p] for p in paths if p in by_path]


#: The DIMSE status that counts as an acknowledgement for :class:`StreamSender` (warnings do not).
SUCCESS = 0x0000


@dataclass
class StreamedFile:
    """One file of a :class:`StreamSender` stream: when it was due and every attempt, in order."""

    path: Path
    due_at: float  #: ``time.time()`` at which the stream first sent it
    #: ``(time.time() the attempt started, its outcome)`` per attempt
    attempts: list[tuple[float, StoreOutcome]] = field(default_factory=list)

    @property
    def acknowledged_at(self) -> float | None:
        """``time.time()`` of the first Success (0x0000), or None when none came."""
        return next((o.answered_at for _, o in self.attempts if o.status == SUCCESS), None)

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_at is not None

    def failed_between(self, start: float, end: float) -> bool:
        """Whether an attempt started in ``[start, end]`` got no Success (refused, no answer, another status)."""
        return any(o.status != SUCCESS and start <= t <= end for t, o in self.attempts)


class StreamSender:
    """A steady stream of C-STORE: file ``i`` is sent ``i * interval_s`` after :meth:`start`, one association each.

    A file that is not answered Success (the association is refused or aborted, or the peer
    answers a failure or a warning) is sent again every ``retry_every_s`` seconds until it is,
    as a modality or PACS does with a node being restarted; each file counts as acknowledged
    once any attempt got Success. Up to ``max_in_flight`` files are being sent at a time, so a
    file waiting for its peer does not hold up the ones due after it.

    Example::

        stream = StreamSender(paths, port, interval_s=2.0).start()
        files = stream.wait(timeout=300)          # every file acknowledged, or the timeout
        assert all(f.acknowledged for f in files)
    """

    def __init__(
        self,
        paths: Sequence[Path],
        port: int,
        *,
        interval_s: float,
        retry_every_s: float = 1.0,
        max_in_flight: int = 16,
        host: str = "127.0.0.1",
        called_aet: str = "CXRNODE",
        calling_aet: str = "LOADSCU",
    ) -> None:
        if interval_s < 0 or retry_every_s <= 0 or max_in_flight < 1:
            raise ValueError("interval_s must be >= 0, retry_every_s > 0 and max_in_flight >= 1")
        self.paths = list(paths)
        self.port, self.host = port, host
        self.called_aet, self.calling_aet = called_aet, calling_aet
        self.interval_s = interval_s
        self.retry_every_s = retry_every_s
        self.files: list[StreamedFile] = []
        self.started_at: float | None = None  #: ``time.time()`` of :meth:`start`
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._give_up = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scheduler = threading.Thread(target=self._schedule, name="store-stream", daemon=True)

    def start(self) -> "StreamSender":
        self.started_at = time.time()
        self._scheduler.start()
        return self

    def _schedule(self) -> None:
        assert self.started_at is not None
        for index, path in enumerate(self.paths):
            due = self.started_at + index * self.interval_s
            if self._give_up.wait(max(0.0, due - time.time())):
                return
            streamed = StreamedFile(path, time.time())
            self.files.append(streamed)
            self._slots.acquire()
            thread = threading.Thread(target=self._send, args=(streamed,), name=f"store-stream-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _send(self, streamed: StreamedFile) -> None:
        try:
            while True:
                started = time.time()
                [outcome] = send_files(
                    [streamed.path], self.port, associations=1, host=self.host, called_aet=self.called_aet, calling_aet=self.calling_aet
                )
                streamed.attempts.append((started, outcome))
                if outcome.status == SUCCESS or self._give_up.wait(self.retry_every_s):
                    return
        finally:
            self._slots.release()

    def done(self) -> bool:
        """Every file was due and has been acknowledged."""
        return len(self.files) == len(self.paths) and all(f.acknowledged for f in self.files)

    def wait(self, timeout: float) -> list[StreamedFile]:
        """Wait until :meth:`done` or ``timeout`` s; then stop re-sending and return every file sent so far."""
        deadline = time.monotonic() + timeout
        while not self.done() and time.monotonic() < deadline:
            time.sleep(0.2)
        self._give_up.set()
        self._scheduler.join()
        for thread in list(self._threads):
            thread.join(TIMEOUT_S + 5)
        return list(self.files)
