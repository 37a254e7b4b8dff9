"""What a hostile case is: an attack on a running listener and the one answer it must get.

A :class:`HostileCase` has a name, a category, an ``attack`` (a function of a
:class:`CaseContext` that does the damage on its own sockets and returns what it observed) and
an ``expected`` answer. Every expected answer is specific: a DIMSE status, an A-ASSOCIATE-RJ
triple, an A-ABORT with source and reason, a connection closed without a word within so many
seconds, the presentation context results, a recorded result with its reason, a race's
outcome. :meth:`Expected.mismatch` says in words how an observation differs, or ``None``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.support.hostile_peer import Answer
from tests.support.polling import wait_for

ENCODING = "encoding"
PDU = "pdu"
SLOW = "slow"
RACE = "race"
DISK = "disk"
CATEGORIES = (ENCODING, PDU, SLOW, RACE, DISK)


@dataclass
class CaseContext:
    """What an attack needs to know about the node it attacks.

    ``report(study_uid)`` returns the study's report (``node.reports.study_report``) or ``None``;
    ``source()`` hands out a loopback address of its own to each caller, so that the per-peer
    connection limit of one attack never touches another's.
    """

    port: int
    spool: Path
    work_dir: Path  #: a directory of the test's own, for attacks that need files
    report: Callable[[str], dict[str, Any] | None]
    database_url: str
    acse_timeout: float
    network_timeout: float
    pdu_timeout: float
    max_pdu_size: int
    max_instance_bytes: int
    max_connections_per_peer: int
    log_text: Callable[[], str] = lambda: ""
    #: Calling AE titles of the conflicts recorded for a SOP Instance UID (``instance_conflicts``).
    conflicts: Callable[[str], list[str]] = lambda uid: []
    #: SOP Instance UIDs the listener answered Success for (the spool may hold these and no others).
    stored: set[str] = field(default_factory=set)
    _addresses: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def source(self) -> str:
        """A loopback address no other attack uses (127.66.x.y)."""
        with self._lock:
            number = next(self._addresses)
        return f"127.66.{number // 250}.{number % 250 + 1}"

    def note_stored(self, sop_instance_uid: str) -> None:
        """Remember an instance the listener said it stored."""
        with self._lock:
            self.stored.add(sop_instance_uid)

    def wait_for_report(self, study_uid: str, state: str, timeout: float = 60.0) -> dict[str, Any] | None:
        """Poll until the study is in ``state``; its report then, or the last seen one after ``timeout``."""

        def in_state() -> dict[str, Any] | None:
            report = self.report(study_uid)
            return report if report is not None and report["study"]["state"] == state else None

        try:
            return wait_for(in_state, f"study {study_uid} {state}", timeout, interval=0.2)
        except AssertionError:
            return self.report(study_uid)


class Expected(Protocol):
    """An expected answer: how an observation differs from it, in words, or ``None``."""

    def mismatch(self, observed: Any) -> str | None: ...


def _answer_mismatch(observed: Any, kind: str, values: tuple[int, ...], within: float | None, shown: str) -> str | None:
    if not isinstance(observed, Answer):
        return f"expected {shown}, observed {observed!r}"
    if observed.kind != kind or observed.values != values:
        return f"expected {shown}, observed {observed}"
    if within is not None and observed.seconds > within:
        return f"expected {shown} within {within:g} s, observed {observed}"
    return None


@dataclass(frozen=True)
class Status:
    """A C-STORE (or C-ECHO) answered with this DIMSE status."""

    code: int

    def mismatch(self, observed: Any) -> str | None:
        return _answer_mismatch(observed, "status", (self.code,), None, f"status 0x{self.code:04X}")


@dataclass(frozen=True)
class Rejected:
    """An A-ASSOCIATE-RJ with (result, source, reason) of PS3.8 Table 9-21."""

    result: int
    source: int
    reason: int

    def mismatch(self, observed: Any) -> str | None:
        values = (self.result, self.source, self.reason)
        return _answer_mismatch(observed, "rejected", values, None, f"A-ASSOCIATE-RJ {values}")


@dataclass(frozen=True)
class Aborted:
    """An A-ABORT with (source, reason) of PS3.8 Table 9-26, within ``within`` seconds when given."""

    source: int
    reason: int
    within: float | None = None

    def mismatch(self, observed: Any) -> str | None:
        values = (self.source, self.reason)
        return _answer_mismatch(observed, "aborted", values, self.within, f"A-ABORT {values}")


@dataclass(frozen=True)
class Closed:
    """The connection closed without any PDU, within ``within`` seconds."""

    within: float

    def mismatch(self, observed: Any) -> str | None:
        return _answer_mismatch(observed, "closed", (), self.within, "the connection closed without a PDU")


@dataclass(frozen=True)
class Ended:
    """The association ended within ``within`` seconds: an A-ABORT with reason 0 (not specified), or a close.

    For an established association that overstays a time limit. The listener aborts it (PS3.8
    Table 9-26, source 2) when its connection guard fires first; pynetdicom's own network timer,
    set to the same value, may abort it first (source 0, or a close while the guard waits
    inside a PDU). Either way the peer is gone in time, which is what matters here.
    """

    within: float

    def mismatch(self, observed: Any) -> str | None:
        shown = f"the association ended (A-ABORT or close) within {self.within:g} s"
        if not isinstance(observed, Answer):
            return f"expected {shown}, observed {observed!r}"
        ended = observed.kind == "closed" or (observed.kind == "aborted" and observed.values[1:] == (0,))
        if not ended or observed.seconds > self.within:
            return f"expected {shown}, observed {observed}"
        return None


@dataclass(frozen=True)
class Contexts:
    """An A-ASSOCIATE-AC whose presentation context results (PS3.8 Table 9-18) are these, in order."""

    results: tuple[int, ...]

    def mismatch(self, observed: Any) -> str | None:
        return _answer_mismatch(observed, "accepted", self.results, None, f"A-ASSOCIATE-AC with contexts {self.results}")


@dataclass(frozen=True)
class Recorded:
    """Stored with Success, then processed: the instance's result has ``status`` and a reason starting so.

    Observed as ``(store status, result status, reason)``.
    """

    status: str
    reason_starts: str

    def mismatch(self, observed: Any) -> str | None:
        if not (isinstance(observed, tuple) and len(observed) == 3):
            return f"expected Success then a {self.status} result, observed {observed!r}"
        store, status, reason = observed
        if store != 0x0000:
            return f"expected Success then a {self.status} result, observed store status {store!r}"
        if status != self.status or not str(reason or "").startswith(self.reason_starts):
            return f"expected a {self.status} result with reason {self.reason_starts!r}..., observed {status}: {reason!r}"
        return None


@dataclass(frozen=True)
class Logged:
    """An answer, and every one of ``lines`` in the node's log (escaped text, e.g. ``\\x1b``)."""

    answer: Any
    lines: tuple[str, ...]

    def mismatch(self, observed: Any) -> str | None:
        if not (isinstance(observed, tuple) and len(observed) == 2):
            return f"expected an answer and a log, observed {observed!r}"
        answer, log = observed
        wrong = self.answer.mismatch(answer)
        if wrong is not None:
            return wrong
        missing = [line for line in self.lines if line not in log]
        if missing:
            return f"the log lacks {missing!r}"
        if "\x1b" in log or "\r" in log:
            return "the log holds a raw control character"
        return None


@dataclass(frozen=True)
class HostileCase:
    """One attack and the answer it must get (see the module docstring)."""

    name: str
    category: str
    attack: Callable[[CaseContext], Any]
    expected: Any

    @property
    def id(self) -> str:
        return f"{self.category}/{self.name}"

    def check(self, observed: Any) -> str | None:
        """``None`` when ``observed`` is the expected answer, else what differs."""
        return self.expected.mismatch(observed)
