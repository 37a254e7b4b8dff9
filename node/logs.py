"""Logging set-up for entry points. Libraries only call ``logging.getLogger(__name__)``.

Log lines carry UIDs, AE titles and states, never patient names, IDs or birth dates.

AE titles, UIDs and other values in log lines may come from the network, so every handler the
entry points attach gets :class:`EscapeControlCharacters`: control characters (C0, DEL, C1 and
the Unicode line and paragraph separators) in a record's message are written as ``\\xNN`` /
``\\uNNNN`` escapes, so no peer can forge a log line or send escape sequences to a terminal.
The filter sits on the handlers, not on loggers, so pynetdicom's records are escaped as well.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from types import TracebackType

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control_characters(text: str) -> str:
    """``text`` with each control character as a visible escape (``\\n`` becomes ``\\x0a``)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def escaped_traceback(exc_info: ExcInfo) -> str:
    """A traceback as :meth:`logging.Formatter.formatException` writes it, each exception's message escaped.

    The stack lines are the node's own source; the messages (``ValueError: ...``) may quote
    what a peer sent (pynetdicom quotes an invalid AE title), so their control characters,
    line feeds included, are escaped.
    """
    exception = traceback.TracebackException(*exc_info)
    messages: set[str] = set()
    current: traceback.TracebackException | None = exception
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        messages.update(current.format_exception_only())
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    chunks = (
        escape_control_characters(chunk.rstrip("\n")) + "\n" if chunk in messages else chunk for chunk in exception.format()
    )
    return "".join(chunks).rstrip("\n")


class EscapeControlCharacters(logging.Filter):
    """Handler filter: the record's message (arguments merged in) and exception messages, escaped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_control_characters(message)
        if escaped != message or record.args:
            record.msg = escaped
            record.args = None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = escaped_traceback(record.exc_info)  # type: ignore[arg-type]
        return True


def configure_logging(level: str | int = "INFO") -> None:
    """Attach one stderr handler with a timestamped format (idempotent).

    Every handler of the root logger, this one and any already attached, escapes control
    characters (:class:`EscapeControlCharacters`).
    """
    root = logging.getLogger()
    if not any(getattr(h, "_cxr_node", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._cxr_node = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for attached in root.handlers:
        if not any(isinstance(f, EscapeControlCharacters) for f in attached.filters):
            attached.addFilter(EscapeControlCharacters())
    root.setLevel(level)
    # pynetdicom logs every PDU at DEBUG and dataset summaries at INFO; keep it to warnings.
    # highdicom and the JPEG 2000 encoder narrate every module they copy and every tile.
    for noisy in ("pynetdicom", "highdicom", "openjpeg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
