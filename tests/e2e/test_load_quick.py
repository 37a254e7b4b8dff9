"""The load benchmark's code path, small: 32 single-image studies over 8 associations into the production deployment.

PostgreSQL, Redis, Orthanc, ``cxr-node serve`` and the inference and delivery workers run as
separate real processes (:class:`tests.support.deployment.Deployment`); eight pynetdicom
associations send at once. Asserted: every instance acknowledged, every study delivered, exactly
one SEG and one SR per study in Orthanc, nothing left queued, running or pending, and the
figures the benchmark prints are computed. Nothing about speed is asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.end_to_end import make_studies
from benchmarks.load import format_run, run_load
from node.constants import COMPREHENSIVE_3D_SR, SEGMENTATION
from tests.support.deployment import output_mismatch

STUDIES = 32
ASSOCIATIONS = 8
SIZE = 256
TIMEOUT_S = 240.0


@pytest.mark.slow
def test_every_study_sent_over_eight_associations_is_delivered_once_with_one_seg_and_one_sr(tmp_path: Path) -> None:
    studies = make_studies(tmp_path / "studies", STUDIES, SIZE)

    run = run_load(tmp_path / "deployment", studies, associations=ASSOCIATIONS, timeout=TIMEOUT_S)

    assert run.problems == [], "\n".join(format_run(run))
    assert run.output_problems == {}
    assert run.unfinished == {"jobs_queued": 0, "jobs_running": 0, "deliveries_pending": 0, "studies_not_final": 0}
    figures = run.figures
    assert all(figures[key] > 0 for key in ("received_per_s", "processed_per_s", "delivered_per_s"))
    latency = figures["latency_s"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["max"]
    # The sampler saw the load move: jobs waited in Redis and in the database, and all ended delivered.
    assert max(s.get("inference") or 0 for s in run.samples) > 0
    assert max(s.get("jobs_queued") or 0 for s in run.samples) > 0
    assert run.samples[-1]["delivered"] == STUDIES
    printed = "\n".join(format_run(run))
    assert "latency acknowledged -> delivered: p50" in printed and "every study delivered once" in printed


def test_output_mismatch_names_a_duplicate_a_missing_output_and_passes_an_exact_set() -> None:
    """The check the benchmark relies on: exact counts, other SOP classes (the image) ignored."""
    expected = {SEGMENTATION: 1, COMPREHENSIVE_3D_SR: 2}
    image = "1.2.840.10008.5.1.4.1.1.1.1"
    assert output_mismatch([image, SEGMENTATION, COMPREHENSIVE_3D_SR, COMPREHENSIVE_3D_SR], expected) is None
    assert output_mismatch([SEGMENTATION, SEGMENTATION, COMPREHENSIVE_3D_SR, COMPREHENSIVE_3D_SR], expected) == "SEG 2, SR 2 (expected 1 and 2)"
    assert output_mismatch([SEGMENTATION, COMPREHENSIVE_3D_SR], expected) == "SEG 1, SR 1 (expected 1 and 2)"
    assert output_mismatch([], expected) == "SEG 0, SR 0 (expected 1 and 2)"
