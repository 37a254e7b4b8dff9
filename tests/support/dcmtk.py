"""Run DCMTK's ``storescu`` and ``echoscu`` against a listener and read what they saw.

Both run with ``-d`` (debug) so that every DIMSE status the peer answered is printed
(``DIMSE Status : 0x0000: Success``) and an association rejection shows its result, source and
reason. :class:`DcmtkRun` parses those lines.

Example::

    run = storescu(port, [path], called_aet="CXRNODE", calling_aet="MODALITY")
    assert run.returncode == 0 and run.statuses == [0x0000]
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9A-Fa-f]{4})")
# DCMTK 3.6.7 prints "F: Result: Rejected Permanent, Source: Service User" then "F: Reason: ...".
_REJECT = re.compile(r"Association Rejected:.*?Result:\s*([^,\n]+),\s*Source:\s*([^\n]+?)\s*\n.*?Reason:\s*([^\n]+?)\s*$", re.S | re.M)


@dataclass(frozen=True)
class DcmtkRun:
    """Outcome of one DCMTK tool run."""

    args: tuple[str, ...]
    returncode: int
    output: str  #: stdout and stderr together

    @property
    def statuses(self) -> list[int]:
        """DIMSE statuses of the responses received, in order."""
        return [int(value, 16) for value in _STATUS.findall(self.output)]

    @property
    def rejection(self) -> tuple[str, str, str] | None:
        """``(result, source, reason)`` as DCMTK prints them, when the association was rejected."""
        match = _REJECT.search(self.output)
        return (match.group(1), match.group(2), match.group(3)) if match else None

    @property
    def association_accepted(self) -> bool:
        return "Association Accepted" in self.output


def _run(args: Sequence[str], timeout: float) -> DcmtkRun:
    completed = subprocess.run(
        list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False
    )
    return DcmtkRun(tuple(args), completed.returncode, completed.stdout)


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    called_aet: str = "CXRNODE",
    calling_aet: str = "STORESCU",
    host: str = "127.0.0.1",
    propose_only_sent: bool = True,
    extra: Sequence[str] = (),
    timeout: float = 120.0,
) -> DcmtkRun:
    """Send ``files`` with ``storescu`` over one association.

    ``propose_only_sent`` adds ``-R`` (propose only the SOP Classes and transfer syntaxes of the
    files), as a well-behaved PACS does; ``extra`` adds more options (e.g. ``-xs`` proposals).
    """
    args = ["storescu", "-d", "-aet", calling_aet, "-aec", called_aet]
    if propose_only_sent:
        args.append("-R")
    args += [*extra, host, str(port), *(str(f) for f in files)]
    return _run(args, timeout)


def echoscu(
    port: int,
    *,
    called_aet: str = "CXRNODE",
    calling_aet: str = "ECHOSCU",
    host: str = "127.0.0.1",
    timeout: float = 30.0,
) -> DcmtkRun:
    """One C-ECHO with ``echoscu``."""
    return _run(["echoscu", "-d", "-aet", calling_aet, "-aec", called_aet, host, str(port)], timeout)
