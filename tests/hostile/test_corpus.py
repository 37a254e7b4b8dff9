"""The hostile-input corpus against a real ``cxr-node serve``: every case gets its expected answer.

The corpus runs once per module (:func:`tests.hostile.runner.run_corpus`: all cases at once on
16 threads while a good sender stores and gets processed a normal study); each case is then
its own test, so a failure names the case. The other tests check what the node looked like
afterwards: still serving, never killed, peak RSS within the bound, the spool holding exactly
what was answered Success, nothing written where it should not be.

Run it alone: ``.venv/bin/python -m pytest -q -p no:cacheprovider tests/hostile``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.cases import CATEGORIES, HostileCase
from tests.hostile.corpus import corpus, counts
from tests.hostile.runner import RSS_BOUND_BYTES, CorpusRun, run_corpus

CASES = corpus()
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> CorpusRun:
    run = run_corpus(Path(tmp_path_factory.mktemp("hostile")), CASES)
    print("\n" + run.summary())
    return run


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_gets_its_expected_answer(corpus_run: CorpusRun, case: HostileCase) -> None:
    (result,) = corpus_run.by_id()[case.id]
    assert result.mismatch is None, f"{case.id}: {result.mismatch}"


def test_the_corpus_covers_every_category_with_many_cases() -> None:
    per_category = counts(CASES)
    assert len(CASES) >= 100
    assert set(per_category) == set(CATEGORIES), per_category
    assert all(count >= 3 for count in per_category.values()), per_category


def test_a_good_sender_got_its_study_stored_and_processed_while_attackers_were_active(corpus_run: CorpusRun) -> None:
    good = corpus_run.good
    assert good.error is None, good.error
    assert good.stored_after is not None and good.stored_after < 30, good
    assert good.state == "done" and good.results == 3, good


def test_the_node_kept_serving_and_was_never_killed(corpus_run: CorpusRun) -> None:
    assert corpus_run.alive and corpus_run.exit_code is None, f"exit code {corpus_run.exit_code}\n{corpus_run.log[-3000:]}"
    assert "MemoryError" not in corpus_run.log


def test_peak_rss_stayed_within_a_gib_of_the_warmed_up_baseline(corpus_run: CorpusRun) -> None:
    growth = corpus_run.rss_growth
    print(f"peak RSS {corpus_run.peak_rss / MIB:.0f} MiB, baseline {corpus_run.baseline_rss / MIB:.0f} MiB")
    assert growth < RSS_BOUND_BYTES, f"peak RSS grew {growth / MIB:.0f} MiB"


def test_the_spool_holds_exactly_the_instances_answered_success(corpus_run: CorpusRun) -> None:
    assert corpus_run.spool_problems == []


def test_nothing_was_written_outside_the_spool(corpus_run: CorpusRun) -> None:
    assert corpus_run.outside_spool == []


def test_no_raw_control_character_from_the_network_reached_the_log(corpus_run: CorpusRun) -> None:
    assert "\x1b" not in corpus_run.log and "\r" not in corpus_run.log
    assert not [line for line in corpus_run.log.splitlines() if line.startswith(("FORGED", "2026 INFO forged"))]
