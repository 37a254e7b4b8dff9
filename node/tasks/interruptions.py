"""Attempts cut short by the death of their process, and whether the study is to blame.

A worker process can die for reasons that have nothing to do with the study it runs (an
operator's ``kill -9``, the OOM killer taking the biggest process, a host reboot, a crash in
another job on the same process) or because of it (a decoder or model crash that the study's
data triggers every time). Retrying forever loops on a poison study; giving up after a fixed
count fails innocent studies. So every interruption is recorded with its evidence and the
study is given up only when the evidence points at it:

- **alone**: the job was the only one running in its process when the process died, so no
  other job can have caused the death (the node runs a job that was interrupted before alone
  in its process, see :class:`node.tasks.isolation.IsolationGate`);
- **at the same point**: the attempt had reached the same image and stage each time, as a
  deterministic crash does and random deaths rarely do. A death before the study's data was
  touched (loading the models, :data:`STAGE_MODELS`, or before any progress was recorded) is
  never evidence against it: a node killed again and again soon after each start dies there.

:func:`verdict` gives up when ``blame_after`` interruptions were alone at one point, and, so
that nothing loops for ever, after ``max_interruptions`` in all, saying that the study was
not shown to be at fault.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: The stage recorded while the worker loads its models, before the study's first image.
STAGE_MODELS = "models"
#: Stages at which a death says nothing about the study.
STAGES_WITHOUT_EVIDENCE = frozenset({STAGE_MODELS})

#: How an interruption was noticed.
NOTICED_AT_START_UP = "the node started again after its process stopped"
NOTICED_BY_HEARTBEAT = "its worker stopped renewing the heartbeat"


@dataclass(frozen=True)
class Interruption:
    """One attempt of a job cut short by the death of its process (JSON-serialisable)."""

    attempt: int
    noticed_at: str
    worker: str | None
    how: str
    #: No other job was running in the same process when it died.
    alone: bool
    #: ``{"image": n, "of": total, "stage": name}`` as last recorded, or None before the first image.
    progress: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Interruption":
        return cls(
            attempt=int(data["attempt"]),
            noticed_at=str(data["noticed_at"]),
            worker=data.get("worker"),
            how=str(data.get("how", "")),
            alone=bool(data.get("alone", False)),
            progress=dict(data["progress"]) if data.get("progress") else None,
        )

    @property
    def is_evidence(self) -> bool:
        """Whether the attempt had reached the study's data (see :data:`STAGES_WITHOUT_EVIDENCE`)."""
        return bool(self.progress) and self.progress.get("stage") not in STAGES_WITHOUT_EVIDENCE  # type: ignore[union-attr]

    @property
    def point(self) -> tuple[Any, Any] | None:
        """``(image, stage)`` the attempt had reached, or None."""
        if not self.progress:
            return None
        return (self.progress.get("image"), self.progress.get("stage"))


@dataclass(frozen=True)
class Verdict:
    """Whether to run the job again after its latest interruption, and why not."""

    give_up: bool
    #: ``"study"`` when the evidence points at the study, ``"unproven"`` when only the count did.
    blame: str | None = None
    reason: str | None = None


def describe_point(point: tuple[Any, Any] | None) -> str:
    """``image 2, stage 'analyse'`` for a point; ``before its first image`` for None."""
    if point is None or point == (None, None):
        return "before its first image"
    image, stage = point
    if image is None:
        return f"stage {stage!r}, before its first image"
    return f"image {image}, stage {stage!r}"


def verdict(interruptions: Sequence[Interruption], *, blame_after: int, max_interruptions: int) -> Verdict:
    """Decide from a job's interruptions whether it is given up (see the module docstring)."""
    alone_points = Counter(i.point for i in interruptions if i.alone and i.is_evidence)
    if alone_points:
        point, count = alone_points.most_common(1)[0]
        if count >= blame_after:
            return Verdict(
                True,
                "study",
                f"the study is to blame: its worker process died {count} times while running it alone, "
                f"each time at {describe_point(point)}",
            )
    if len(interruptions) >= max_interruptions:
        return Verdict(
            True,
            "unproven",
            f"interrupted {len(interruptions)} times by the death of its worker without evidence against "
            f"the study (never {blame_after} times alone at one point); given up so as not to loop. "
            "Reprocess it with `cxr-node reprocess` once the workers are stable",
        )
    return Verdict(False)


def record(existing: Sequence[Mapping[str, Any]] | None, interruption: Interruption) -> list[dict[str, Any]]:
    """``existing`` (a job's ``interruptions`` column) with ``interruption`` appended."""
    return [*(dict(i) for i in existing or ()), interruption.as_json()]


def parse(column: Sequence[Mapping[str, Any]] | None) -> list[Interruption]:
    """A job's ``interruptions`` column as :class:`Interruption` objects."""
    return [Interruption.from_json(item) for item in column or ()]


def process_of(worker: str | None) -> str | None:
    """``host/pid`` of a worker name ``host/pid/thread`` (see ``TaskContext.worker_name``)."""
    if not worker:
        return None
    return "/".join(worker.split("/")[:2])


def iso_now(now: dt.datetime) -> str:
    return now.isoformat(timespec="seconds")
