"""Races: several senders of one SOP Instance UID at the same moment, same or different content.

Exactly one C-STORE stores the instance; the stored data set is byte for byte the winner's.
A sender of the same bytes is answered Success (a duplicate is not an error); a sender of other
bytes gets 0xB006 (Warning: Elements Discarded, :data:`node.scp.statuses.WARNING_CONFLICTING_DUPLICATE`)
and its attempt is recorded in ``instance_conflicts`` with its calling AE title.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from tests.hostile.attacks import ANSWER_TIMEOUT
from tests.hostile.cases import RACE, CaseContext, HostileCase
from tests.hostile.datasets import radiograph
from tests.support.hostile_peer import EXPLICIT_VR_LE, RELEASE_RQ, RawAssociation, dataset_bytes, next_answer
from training.dicom_export import DX_FOR_PRESENTATION, RadiographIdentity


@dataclass(frozen=True)
class RaceOutcome:
    """What a race came to: the answers, the stored file, the conflicts recorded."""

    stored: bool  #: one file is in the spool under the UID
    successes: int  #: senders answered Success whose data set is the stored one
    wrong_successes: int  #: senders answered Success whose data set is not the stored one
    conflicts: int  #: senders answered 0xB006
    other_bytes: int  #: senders whose data set is not the stored one
    other_answers: tuple[str, ...]  #: anything else, as text
    recorded_conflicts: tuple[str, ...]  #: calling AE titles in instance_conflicts, sorted
    conflicting_senders: tuple[str, ...]  #: calling AE titles answered 0xB006, sorted


@dataclass(frozen=True)
class OneWinner:
    """Expected: one stored copy, a winner's bytes; its senders Success, other bytes 0xB006 and recorded."""

    senders: int
    variants: int  #: how many different data sets were sent

    def mismatch(self, observed: Any) -> str | None:
        if not isinstance(observed, RaceOutcome):
            return f"expected a race outcome, observed {observed!r}"
        problems = []
        if not observed.stored:
            problems.append("nothing stored")
        if observed.other_answers:
            problems.append(f"other answers {observed.other_answers}")
        if observed.wrong_successes:
            problems.append(f"{observed.wrong_successes} Success answers for data sets that were not stored")
        if observed.successes < 1 or observed.successes + observed.conflicts != self.senders:
            problems.append(f"{observed.successes} Success + {observed.conflicts} 0xB006 for {self.senders} senders")
        if observed.conflicts != observed.other_bytes:
            problems.append(f"{observed.conflicts} 0xB006 for {observed.other_bytes} senders of other bytes")
        if self.variants == 1 and observed.conflicts:
            problems.append("conflicts among identical data sets")
        if observed.recorded_conflicts != observed.conflicting_senders:
            problems.append(f"recorded conflicts {observed.recorded_conflicts} != answered {observed.conflicting_senders}")
        return "; ".join(problems) or None


def race_attack(senders: int, variants: int) -> Any:
    """``senders`` associations send one UID at once; sender ``n`` sends data set variant ``n % variants``."""

    def attack(ctx: CaseContext) -> RaceOutcome:
        identity = RadiographIdentity.new()
        data = [radiograph(identity=identity, seed=seed).join() for seed in range(variants)]
        peers = [
            RawAssociation.open(ctx.port, [(DX_FOR_PRESENTATION, [EXPLICIT_VR_LE])], source=ctx.source(), calling_aet=f"RACER{n}")
            for n in range(senders)
        ]
        barrier = threading.Barrier(senders)
        answers: dict[int, str] = {}

        def send(n: int) -> None:
            peer = peers[n]
            barrier.wait()
            peer.send_c_store(peer.context_for(DX_FOR_PRESENTATION), DX_FOR_PRESENTATION, identity.sop_instance_uid, data[n % variants])
            answer = next_answer(peer.sock, ANSWER_TIMEOUT)
            answers[n] = f"0x{answer.values[0]:04X}" if answer.kind == "status" and answer.values else str(answer)
            try:
                peer.sock.sendall(RELEASE_RQ)
                next_answer(peer.sock, 5)
            finally:
                peer.sock.close()

        threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(ANSWER_TIMEOUT + 10)
        path = ctx.spool / identity.study_instance_uid / identity.series_instance_uid / f"{identity.sop_instance_uid}.dcm"
        stored = dataset_bytes(path) if path.is_file() else b""
        success = {n for n, a in answers.items() if a == "0x0000"}
        if success:
            ctx.note_stored(identity.sop_instance_uid)
        stored_by = {n for n in range(senders) if stored and data[n % variants] == stored}
        conflicted = sorted(f"RACER{n}" for n, a in answers.items() if a == "0xB006")
        return RaceOutcome(
            stored=bool(stored),
            successes=len(success & stored_by),
            wrong_successes=len(success - stored_by),
            conflicts=len(conflicted),
            other_bytes=senders - len(stored_by),
            other_answers=tuple(sorted(a for a in answers.values() if a not in ("0x0000", "0xB006"))),
            recorded_conflicts=tuple(sorted(ctx.conflicts(identity.sop_instance_uid))),
            conflicting_senders=tuple(conflicted),
        )

    return attack


def race_cases() -> list[HostileCase]:
    """Races of 2 to 8 senders, with 1 (all identical), 2 or as many data sets as senders."""
    cases = []
    for senders, variants in ((2, 1), (4, 1), (8, 1), (2, 2), (4, 2), (4, 4), (6, 3), (8, 8)):
        what = "same-content" if variants == 1 else ("all-different" if variants == senders else f"{variants}-contents")
        cases.append(HostileCase(f"{senders}-senders-{what}", RACE, race_attack(senders, variants), OneWinner(senders, variants)))
    return cases
