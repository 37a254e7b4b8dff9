"""Load benchmark: many single-image studies over concurrent associations into the production deployment.

Set-up (:class:`tests.support.deployment.Deployment`, all on loopback): PostgreSQL, Redis,
Orthanc as the destination, ``cxr-node serve`` with a broker, one ``cxr-node worker`` for the
``inference`` queue (solo pool) and one for ``delivery`` (threads), the bundled demo models on
the CPU. ``--studies`` (default 1000) DX phantom studies of one image each (``--size`` px,
default 512) are sent by ``--associations`` (default 8) pynetdicom sender threads, one
association each; the benchmark then waits until every study is delivered and nothing is
queued, running or pending.

Printed:

- throughput in studies/s: **received** = studies / the senders' wall time; **processed** =
  studies / (last job finished - first instance acknowledged); **delivered** = studies / (last
  output delivered - first instance acknowledged);
- queue depth over time, sampled every second: Redis ``LLEN`` of the ``inference`` and
  ``delivery`` queues, messages reserved by workers (``unacked``), jobs queued and running and
  deliveries pending in the database, studies delivered;
- latency per study from the acknowledgement of its instance (the row is committed before the
  C-STORE Success) to its last output delivered (the destination's Success recorded), from the
  database's timestamps; it includes the quiet period (``CXR_NODE_STABLE_SECONDS``, 1 s);
- a check of Orthanc: exactly one SEG and one SR per policy in every study, no duplicates.

The baseline runs the same load in the same script: by default the embedded default
(``cxr-node serve`` alone: SQLite, in-process task threads), ``--baseline one-association``
the same deployment with one association, ``--baseline none`` none. Exit status 1 when a study
was not acknowledged, not delivered, left anything unfinished, or has other than the expected
outputs in Orthanc (in the measured run or the baseline).

Run::

    .venv/bin/python benchmarks/load.py                              # 1000 studies, 8 associations
    .venv/bin/python benchmarks/load.py --studies 100 --baseline none
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from benchmarks.end_to_end import make_studies, percentile  # noqa: E402
from tests.support.deployment import QUEUES, Deployment  # noqa: E402

SAMPLE_INTERVAL_S = 1.0
SPARK = "▁▂▃▄▅▆▇█"
#: Columns of the queue-depth series: Redis (None for the embedded default), then the database.
SERIES = (*QUEUES, "unacked", "jobs_queued", "jobs_running", "deliveries_pending", "delivered")


@dataclass
class LoadRun:
    """What one run measured; ``problems`` lists every way it fell short (empty: all delivered once)."""

    label: str
    studies: int
    associations: int
    send_seconds: float
    figures: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unfinished: dict[str, int] = field(default_factory=dict)
    output_problems: dict[str, str] = field(default_factory=dict)


class Sampler(threading.Thread):
    """Every ``interval`` s: queue depths from Redis and job and delivery counts from the database."""

    def __init__(self, deployment: Deployment, interval: float = SAMPLE_INTERVAL_S) -> None:
        super().__init__(name="load-sampler", daemon=True)
        self.deployment = deployment
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._stopping = threading.Event()
        self.started = time.monotonic()

    def sample(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t": round(time.monotonic() - self.started, 1)}
        row.update(self.deployment.queue_depths())
        try:
            jobs = self.deployment.job_states()
            deliveries = self.deployment.delivery_states()
            studies = self.deployment.study_states()
        except SQLAlchemyError:
            return row
        row.update(
            jobs_queued=jobs.get("queued", 0),
            jobs_running=jobs.get("running", 0),
            deliveries_pending=deliveries.get("pending", 0),
            delivered=studies.get("delivered", 0),
        )
        return row

    def run(self) -> None:
        while not self._stopping.is_set():
            self.samples.append(self.sample())
            self._stopping.wait(self.interval)

    def stop(self) -> list[dict[str, Any]]:
        self._stopping.set()
        self.join()
        self.samples.append(self.sample())
        return self.samples


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"p50": percentile(list(values), 50), "p95": percentile(list(values), 95), "mean": statistics.fmean(values), "max": max(values)}


def run_load(
    workdir: Path,
    studies: Sequence[tuple[str, Path]],
    *,
    associations: int,
    production: bool = True,
    policies: Sequence[str] = ("loose",),
    timeout: float = 3600.0,
    label: str = "",
) -> LoadRun:
    """Start a deployment, send ``studies`` over ``associations``, wait until all are delivered, measure."""
    uids = [uid for uid, _ in studies]
    paths = [path for _, path in studies]
    run = LoadRun(label or ("production" if production else "embedded"), len(studies), associations, 0.0)
    with Deployment(workdir, policies=policies, production=production) as deployment:
        sampler = Sampler(deployment)
        sampler.start()
        try:
            started = time.monotonic()
            outcomes = deployment.send(paths, associations=associations)
            run.send_seconds = time.monotonic() - started
            refused = [o for o in outcomes if not o.acknowledged]
            if len(outcomes) != len(paths) or refused:
                run.problems.append(
                    f"{len(paths) - len(outcomes) + len(refused)} of {len(paths)} instances not acknowledged"
                    + (f", e.g. status {refused[0].status} ({refused[0].error})" if refused else "")
                )
            try:
                times = deployment.wait_until_settled(uids, timeout=timeout)
            except AssertionError as exc:
                run.problems.append(str(exc).split("\n", 1)[0])
                times = deployment.studies(uids)
        finally:
            run.samples = sampler.stop()
        run.unfinished = deployment.unfinished()
        if any(run.unfinished.values()):
            run.problems.append(f"left unfinished: {run.unfinished}")
        not_delivered = [uid for uid in uids if uid not in times or times[uid].state != "delivered"]
        if not_delivered:
            states = sorted({times[u].state if u in times else "unknown" for u in not_delivered})
            run.problems.append(f"{len(not_delivered)} studies not delivered (states: {', '.join(states)})")
        run.output_problems = deployment.output_problems(uids)
        if run.output_problems:
            first = next(iter(run.output_problems.items()))
            run.problems.append(f"{len(run.output_problems)} studies with other outputs in Orthanc than expected, e.g. {first[0]}: {first[1]}")
        delivered = [t for t in times.values() if t.delivered_at is not None]
        if delivered:
            first_ack = min(t.last_received_at for t in times.values())
            last_job = max(t.job_finished_at for t in delivered if t.job_finished_at is not None)
            last_delivery = max(t.delivered_at for t in delivered if t.delivered_at is not None)
            run.figures = {
                "received_per_s": len(outcomes) / run.send_seconds,
                "processed_per_s": len(delivered) / (last_job - first_ack).total_seconds(),
                "delivered_per_s": len(delivered) / (last_delivery - first_ack).total_seconds(),
                "latency_s": stats([(t.delivered_at - t.last_received_at).total_seconds() for t in delivered if t.delivered_at]),
                "span_s": (last_delivery - first_ack).total_seconds(),
            }
    return run


# --- printing ----------------------------------------------------------------------------------


def sparkline(values: Sequence[float | None], width: int = 60) -> str:
    """``values`` squeezed to ``width`` buckets (maximum of each), drawn with block characters."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    buckets = max(1, -(-len(values) // width))
    peaks = [max((v for v in values[i : i + buckets] if v is not None), default=None) for i in range(0, len(values), buckets)]
    top = max(known) or 1
    return "".join(" " if p is None else SPARK[min(len(SPARK) - 1, int(p / top * (len(SPARK) - 1) + 0.5))] for p in peaks)


def format_series(samples: Sequence[dict[str, Any]], rows: int = 20) -> list[str]:
    """The queue-depth samples as a sparkline per series and a table of at most ``rows`` rows."""
    series = [name for name in SERIES if any(name in s for s in samples)]
    lines = [f"queue depth, one sample per {SAMPLE_INTERVAL_S:g} s ({len(samples)} samples; sparklines scaled to each maximum):"]
    for name in series:
        values = [s.get(name) for s in samples]
        peak = max((v for v in values if v is not None), default=0)
        lines.append(f"  {name:<19} max {peak:>5}  {sparkline(values)}")
    step = max(1, -(-len(samples) // rows))
    widths = [len(name) + 2 for name in series]
    lines.append("  " + f"{'t (s)':>7}" + "".join(f"{name:>{w}}" for name, w in zip(series, widths)))
    for s in [*samples[::step], *([samples[-1]] if (len(samples) - 1) % step else [])]:
        cells = ("-" if s.get(n) is None else str(s[n]) for n in series)
        lines.append("  " + f"{s['t']:>7.1f}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    return lines


def format_run(run: LoadRun) -> list[str]:
    lines = [f"\n== {run.label}: {run.studies} studies over {run.associations} association(s) =="]
    if run.figures:
        f = run.figures
        lines.append(
            f"throughput (studies/s): received {f['received_per_s']:.2f}, processed {f['processed_per_s']:.2f}, "
            f"delivered {f['delivered_per_s']:.2f}  (senders {run.send_seconds:.1f} s, all delivered after {f['span_s']:.1f} s)"
        )
        lat = f["latency_s"]
        lines.append(
            f"latency acknowledged -> delivered: p50 {lat['p50']:.2f} s, p95 {lat['p95']:.2f} s, mean {lat['mean']:.2f} s, max {lat['max']:.2f} s"
        )
    lines.extend(format_series(run.samples))
    lines.append("check: " + ("every study delivered once, exactly the expected SEG and SR in Orthanc" if not run.problems else "FAILED"))
    lines.extend(f"  - {p}" for p in run.problems)
    return lines


def format_comparison(measured: LoadRun, baseline: LoadRun) -> list[str]:
    if not (measured.figures and baseline.figures):
        return []
    lines = [f"\n{measured.label} / {baseline.label}:"]
    for key in ("received_per_s", "processed_per_s", "delivered_per_s"):
        a, b = measured.figures[key], baseline.figures[key]
        lines.append(f"  {key:<16} {a:8.2f} / {b:8.2f} = {a / b:5.2f}")
    for q in ("p50", "p95"):
        a, b = measured.figures["latency_s"][q], baseline.figures["latency_s"][q]
        lines.append(f"  latency {q:<8} {a:8.2f} / {b:8.2f} = {a / b:5.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--size", type=int, default=512, help="phantom width and height in pixels (default 512)")
    parser.add_argument("--policy", default="loose", help="mask policy or policies, comma separated (CXR_NODE_MASK_POLICY)")
    parser.add_argument(
        "--baseline",
        choices=("embedded", "one-association", "none"),
        default="embedded",
        help="the same load into the embedded default (SQLite, in-process tasks), into the deployment over one association, or none",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for all studies to be delivered, per run")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files and logs under this directory")
    parser.add_argument("--json", type=Path, default=None, help="write the figures and samples to this file")
    args = parser.parse_args(argv)
    if args.studies < 1 or args.associations < 1:
        parser.error("--studies and --associations must be at least 1")
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    # SIGTERM ends the run through the deployment's clean-up, so that no server or worker is left
    # behind (a job started in the background ignores SIGINT).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    root = Path(args.workdir or tempfile.mkdtemp(prefix="cxr-load-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    studies = make_studies(root / "studies", args.studies, args.size)
    print(
        f"load: {args.studies} single-image studies, {args.size}x{args.size} px DX phantoms "
        f"({studies[0][1].stat().st_size / 1024:.0f} KiB each), policies {'+'.join(policies)}, demo models on the CPU; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    runs = [run_load(root / "production", studies, associations=args.associations, policies=policies, timeout=args.timeout, label="production")]
    if args.baseline == "embedded":
        runs.append(run_load(root / "embedded", studies, associations=args.associations, production=False, policies=policies, timeout=args.timeout, label="embedded (baseline)"))
    elif args.baseline == "one-association":
        runs.append(run_load(root / "one-association", studies, associations=1, policies=policies, timeout=args.timeout, label="one association (baseline)"))
    for run in runs:
        print("\n".join(format_run(run)), flush=True)
    if len(runs) == 2:
        print("\n".join(format_comparison(runs[0], runs[1])))
    print(f"\nwall time {time.monotonic() - started:.0f} s; load average after {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps([run.__dict__ for run in runs], indent=2, default=str))
    if args.workdir is None:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 1 if any(run.problems for run in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
