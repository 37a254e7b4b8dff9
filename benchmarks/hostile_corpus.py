"""Hostile-input corpus, full form: every case ``--repeat`` times against one ``cxr-node serve``.

The quick suite (``tests/hostile/test_corpus.py``) runs each case once; this runs the same
corpus (:mod:`tests.hostile.corpus`) several times over on one node, all at once on
``--workers`` threads, while a good sender stores a normal study, and prints:

* per category: cases, runs, failed runs, mean and longest seconds per run;
* the node's resident memory: the baseline after a warm-up study (models loaded), the peak
  (``VmHWM`` from ``/proc``, reset after the warm-up) and the growth, against the 1 GiB bound;
* how long the good sender took and whether its study was processed;
* every failed run, with what was expected and what was observed.

Run from the repository root (as root: the disk cases mount a tmpfs)::

    .venv/bin/python benchmarks/hostile_corpus.py                 # 5 repetitions
    .venv/bin/python benchmarks/hostile_corpus.py --repeat 2 --category encoding --category pdu

Exit status 0 when every run got its expected answer and the node stayed within its bounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hostile.cases import CATEGORIES  # noqa: E402
from tests.hostile.corpus import corpus  # noqa: E402
from tests.hostile.runner import run_corpus  # noqa: E402



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of every case (fresh UIDs each; default 5)")
    parser.add_argument("--workers", type=int, default=16, help="cases run at once (default 16)")
    parser.add_argument("--category", action="append", choices=CATEGORIES, help="only these categories (repeatable)")
    args = parser.parse_args(argv)
    cases = corpus(tuple(args.category or CATEGORIES))
    print(f"load average before: {os.getloadavg()[0]:.1f}; {len(cases)} cases x {args.repeat}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cxr-hostile-bench-") as tmp:
        run = run_corpus(Path(tmp), cases, workers=args.workers, repeat=args.repeat)
    total = time.monotonic() - started

    seconds: dict[str, list[float]] = defaultdict(list)
    failed: dict[str, int] = defaultdict(int)
    distinct: dict[str, set[str]] = defaultdict(set)
    for result in run.results:
        category = result.case.category
        seconds[category].append(result.seconds)
        distinct[category].add(result.case.id)
        failed[category] += result.mismatch is not None
    print(f"\n{'category':<10} {'cases':>6} {'runs':>6} {'failed':>7} {'mean s':>8} {'max s':>7}")
    for category in CATEGORIES:
        if seconds[category]:
            times = seconds[category]
            print(
                f"{category:<10} {len(distinct[category]):>6} {len(times):>6} {failed[category]:>7} "
                f"{sum(times) / len(times):>8.2f} {max(times):>7.2f}"
            )
    print(f"{'total':<10} {len(cases):>6} {len(run.results):>6} {len(run.failures):>7}")
    print(f"\ncorpus: {run.seconds:.1f} s of attacks, {total:.1f} s with node start, warm-up and checks")
    print(f"load average after: {os.getloadavg()[0]:.1f}\n")
    print(run.summary())
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
