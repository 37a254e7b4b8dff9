"""Fault injection, quick form: SIGKILL each part of the node at seeded moments during a stream of studies.

The full form is ``benchmarks/fault_injection.py`` (more studies, more faults, figures); these
run its code small:

- the production shape (:class:`tests.support.deployment.Deployment`): PostgreSQL, Redis,
  Orthanc, ``cxr-node serve``, the inference and the delivery worker as real processes, each
  SIGKILLed once at a seeded moment of a stream of 24 single-image 256 px studies (one every 3 s) and started
  again after an outage of 1-3 s;
- the embedded default (``cxr-node serve`` alone: SQLite, in-process task threads, delivering
  to a real Orthanc), serve SIGKILLed four times during a stream.

Asserted afterwards: every instance acknowledged with Success at least once (the sender
re-sends what the node refused while down), every acknowledged instance processed by its
study's final job, exactly one SEG and one SR per study at Orthanc, nothing queued, running or
pending, no delivery and no study failed, and every fault has its figures. A lost job is
noticed 5 s after its heartbeat stopped (``CXR_NODE_JOB_HEARTBEAT_TIMEOUT_SECONDS``), not 15 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.end_to_end import make_studies
from benchmarks.fault_injection import (
    INFERENCE,
    INGEST,
    STAGES,
    Fault,
    FaultRecord,
    FaultRun,
    NodeRecords,
    fault_figures,
    format_run,
    make_schedule,
    run_faults,
    slow_recovery,
)
from tests.support.deployment import COMPONENTS, INFERENCE_WORKER, SERVE
from tests.support.store_load import StoreOutcome, StreamedFile

SIZE = 256


def _report(run: FaultRun) -> str:
    text = "\n".join(format_run(run))
    logs = run.evidence.get("logs", {})
    return text + "".join(f"\n--- {name} ---\n{tail}" for name, tail in logs.items())


def _assert_all_checks_pass(run: FaultRun, studies: int) -> None:
    report = _report(run)
    print(report)  # the figures, for `pytest -s`
    assert run.problems == [], report
    totals = run.totals
    assert totals["sent"] == totals["acknowledged"] == totals["processed"] == studies, report
    assert totals["duplicates"] == totals["failed_studies"] == totals["stuck"] == 0, report
    assert totals["delivered"] == totals["deliveries"] == 2 * studies, report  # one SEG and one SR each
    for record in run.faults:
        assert record.killed_at is not None and record.back_at is not None and record.error is None, report
        assert record.figures["down_s"] >= record.fault.outage_s, report


@pytest.mark.slow
def test_every_component_killed_once_during_a_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    studies = make_studies(tmp_path / "studies", 24, SIZE)

    run = run_faults(tmp_path / "deployment", studies, seed=11, faults=len(COMPONENTS), interval_s=3.0, settle_timeout=240.0)

    _assert_all_checks_pass(run, len(studies))
    assert sorted(r.fault.component for r in run.faults) == sorted(COMPONENTS)
    # A job running when its worker was SIGKILLed was noticed by its heartbeat, queued again and done once.
    [worker_kill] = [r for r in run.faults if r.fault.component == INFERENCE_WORKER]
    if worker_kill.running_jobs:
        assert worker_kill.figures["interruptions_recorded"] >= 1, _report(run)
        assert isinstance(worker_kill.figures["interrupted_done_s"], float), _report(run)
    assert run.totals["interruptions"] >= (1 if worker_kill.running_jobs else 0)


@pytest.mark.slow
def test_embedded_serve_killed_four_times_during_a_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    studies = make_studies(tmp_path / "studies", 24, SIZE)

    run = run_faults(
        tmp_path / "embedded", studies, seed=5, faults=4, interval_s=3.0, production=False, min_gap_s=8.0, settle_timeout=180.0
    )

    _assert_all_checks_pass(run, len(studies))
    assert [r.fault.component for r in run.faults] == [SERVE] * 4
    # In-process, serve runs the jobs: a kill while one ran is an interruption found at the next start.
    interrupted = [r for r in run.faults if r.running_jobs]
    assert sum(r.figures.get("interruptions_recorded", 0) for r in interrupted) >= len(interrupted)


# --- the schedule and the figures, without servers --------------------------------------------------


def test_schedule_is_seeded_kills_each_component_once_per_round_and_keeps_faults_apart() -> None:
    schedule = make_schedule(7, COMPONENTS, 24, 400.0, outage_s=(1.0, 3.0))

    assert schedule == make_schedule(7, COMPONENTS, 24, 400.0, outage_s=(1.0, 3.0))
    assert schedule != make_schedule(8, COMPONENTS, 24, 400.0, outage_s=(1.0, 3.0))
    for start in range(0, 24, len(COMPONENTS)):
        assert sorted(f.component for f in schedule[start : start + len(COMPONENTS)]) == sorted(COMPONENTS)
    moments = [f.at_s for f in schedule]
    slot = 0.7 * 400.0 / 24
    assert 0.05 * 400.0 <= moments[0] and moments[-1] <= 0.75 * 400.0
    assert all(b - a >= 0.25 * slot - 0.01 for a, b in zip(moments, moments[1:]))
    assert all(1.0 <= f.outage_s <= 3.0 for f in schedule)
    with pytest.raises(ValueError):
        make_schedule(1, (), 3, 10.0)


def _file(failed_at: float, acknowledged_at: float) -> StreamedFile:
    refused = StoreOutcome(Path("a.dcm"), "1.2.3", 0, None, None, 1, "association not established")
    stored = StoreOutcome(Path("a.dcm"), "1.2.3", 0, 0x0000, acknowledged_at, 1)
    return StreamedFile(Path("a.dcm"), failed_at, [(failed_at, refused), (acknowledged_at - 0.1, stored)])


def test_figures_measure_from_the_kill_to_the_held_up_work_resuming_and_finishing() -> None:
    kill, back = 1000.0, 1004.0
    record = FaultRecord(Fault(10.0, SERVE, 3.0), killed_at=kill, back_at=back, running_jobs=(1,))
    records = NodeRecords(studies={}, jobs={}, deliveries={}, instances={})
    files = [_file(1001.0, 1004.5), _file(1002.0, 1006.0), _file(990.0, 991.0)]  # the last one refused before the kill

    figures = fault_figures(record, files, records)

    assert figures["down_s"] == 4.0
    assert figures["held_up"] == {INGEST: 2}
    assert (figures["resumed_s"], figures["recovered_s"]) == (4.5, 6.0)
    assert "interrupted_jobs" not in figures  # serve runs no jobs in the production shape


def test_a_job_never_finished_shows_as_never_recovered() -> None:
    kill, back = 1000.0, 1010.0
    record = FaultRecord(Fault(10.0, INFERENCE_WORKER, 2.0), killed_at=kill, back_at=back, running_jobs=(1,))
    interruption = {"noticed_at": "1970-01-01T00:16:46+00:00"}  # 1006 s: after the kill
    jobs = {
        1: {"created_at": 990.0, "finished_at": None, "interruptions": [interruption]},
        2: {"created_at": 995.0, "finished_at": 1012.0, "interruptions": []},
        3: {"created_at": 900.0, "finished_at": 950.0, "interruptions": []},  # done before the kill: not held up
    }
    records = NodeRecords(studies={}, jobs=jobs, deliveries={}, instances={})

    figures = fault_figures(record, [], records, STAGES)

    assert figures["held_up"] == {INFERENCE: 2}
    assert figures["resumed_s"] == 12.0
    assert figures["recovered_s"] == "never"
    assert (figures["interrupted_jobs"], figures["interrupted_done_s"], figures["interruptions_recorded"]) == (1, "never", 1)
    json.dumps(figures)  # what --json writes


def test_work_cut_short_and_done_late_or_never_is_a_slow_recovery() -> None:
    def record(**figures: object) -> FaultRecord:
        return FaultRecord(Fault(1.0, INFERENCE_WORKER, 1.0), figures={"down_s": 8.0, **figures})

    assert slow_recovery(record(interrupted_done_s=20.0)) is None
    assert slow_recovery(record()) is None  # nothing was under way at the kill
    assert "job(s) running at the kill finished 60.0 s" in (slow_recovery(record(interrupted_done_s=60.0)) or "")
    assert "delivery(ies) being sent" in (slow_recovery(record(sending_done_s="never")) or "")
