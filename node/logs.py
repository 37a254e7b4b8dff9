"""Logging set-up for entry points. Libraries only call ``logging.getLogger(__name__)``.

Log lines carry UIDs, AE titles and states, never patient names, IDs or birth dates.
"""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str | int = "INFO") -> None:
    """Attach one stderr handler with a timestamped format (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_cxr_node", False) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._cxr_node = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom logs every PDU at DEBUG and dataset summaries at INFO; keep it to warnings.
    # highdicom and the JPEG 2000 encoder narrate every module they copy and every tile.
    for noisy in ("pynetdicom", "highdicom", "openjpeg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
