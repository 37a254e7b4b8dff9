"""What a sender is given and what it answers: one file to store, one outcome per file.

Shared by every sender (:mod:`node.delivery.senders`), so that the delivery records
(:mod:`node.delivery.records`) never know which protocol carried an object. Statuses follow
C-STORE (PS3.4 Annex B.2.3): ``0x0000`` Success and the Storage warnings ``0xB000``
(coercion of data elements), ``0xB007`` (data set does not match SOP class) and ``0xB006``
(elements discarded) mean the object was stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATUS_SUCCESS = 0x0000
#: Storage warnings that still mean "stored" (PS3.4 Table B.2-1).
WARNING_STATUSES = frozenset({0xB000, 0xB007, 0xB006})


@dataclass(frozen=True)
class StoreItem:
    """One DICOM Part 10 file to send, with the identifiers the contexts are built from."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class StoreOutcome:
    """What the destination answered for one item.

    ``status`` is the DIMSE status (``None`` when no answer came: connection refused,
    association rejected or aborted, timeout); ``error`` says what went wrong, ``None`` when
    the object was stored. ``unreachable`` is true when the destination itself did not answer
    (no connection, no association), so the object is not to blame and the delivery can go as
    soon as the destination answers again.
    """

    sop_instance_uid: str
    status: int | None
    error: str | None = None
    unreachable: bool = False

    @property
    def stored(self) -> bool:
        """True for Success and the storage warnings 0xB000, 0xB007, 0xB006."""
        return self.error is None and self.status is not None and is_stored_status(self.status)


def is_stored_status(status: int) -> bool:
    """True when a C-STORE status means the object was stored (Success or a storage warning)."""
    return status == STATUS_SUCCESS or status in WARNING_STATUSES
