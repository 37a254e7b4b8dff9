"""Run the corpus against a real ``cxr-node serve`` while a good sender sends a normal study.

:func:`run_corpus` starts the node (:class:`tests.support.node_process.NodeProcess` with
:data:`tests.hostile.corpus.NODE_ENV`), warms it up with one good study (models loaded, so the
memory baseline is that of a working node), resets its peak RSS, then runs every case on a
thread pool, ``workers`` at a time, slow ones first, while a good sender (DCMTK ``storescu``
from 127.0.0.1) stores a three-instance study and waits for it to be processed. Afterwards it
reads the node's peak RSS from ``/proc``, checks that the node still runs and answers C-ECHO,
compares the spool with the database and with the Success answers, and lists every file that
appeared outside the spool where the node has no business writing.

``benchmarks/hostile_corpus.py`` is the command that runs it with repetitions and prints the figures.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from node.constants import PARTIAL_SUFFIX
from node.dicom_uids import is_valid_uid
from tests.hostile import corpus as corpus_module
from tests.hostile.cases import CATEGORIES, CaseContext, HostileCase
from tests.support.dcmtk import echoscu, storescu
from tests.support.dicom_files import make_study
from tests.support.hostile_peer import peak_rss_bytes, reset_peak_rss
from tests.support.node_process import NodeProcess

MIB = 1024 * 1024
#: How much the node's peak RSS may grow over its warmed-up baseline while the corpus runs.
RSS_BOUND_BYTES = 1024 * MIB
#: Seconds the good sender may take to get its study stored while attackers are active.
GOOD_SENDER_TIMEOUT = 60.0
#: Files the node writes outside the spool by design (database, its reserve, outputs, models).
ALLOWED_OUTSIDE_SPOOL = ("cxr-node.sqlite3", "outputs/", "models/")


@dataclass
class CaseResult:
    case: HostileCase
    observed: Any
    mismatch: str | None
    seconds: float


@dataclass
class GoodSender:
    """The good sender's study: how long until stored, and its state once processed."""

    study_uid: str = ""
    stored_after: float | None = None
    statuses: list[int] = field(default_factory=list)
    state: str | None = None
    results: int = 0
    error: str | None = None


@dataclass
class CorpusRun:
    """Everything :func:`run_corpus` measured."""

    results: list[CaseResult]
    seconds: float
    baseline_rss: int
    peak_rss: int
    good: GoodSender
    alive: bool
    exit_code: int | None
    spool_problems: list[str]
    outside_spool: list[str]
    log: str

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if r.mismatch is not None]

    @property
    def rss_growth(self) -> int:
        return self.peak_rss - self.baseline_rss

    def by_id(self) -> dict[str, list[CaseResult]]:
        grouped: dict[str, list[CaseResult]] = {}
        for result in self.results:
            grouped.setdefault(result.case.id, []).append(result)
        return grouped

    @property
    def ok(self) -> bool:
        """Every case got its answer, and the node stayed up, in bounds and out of other directories."""
        return (
            not self.failures
            and self.alive
            and not self.spool_problems
            and not self.outside_spool
            and self.rss_growth < RSS_BOUND_BYTES
            and self.good.state == "done"
        )

    def summary(self) -> str:
        """Per-category counts, failures, timings and memory, as lines for a terminal."""
        per_category = Counter(r.case.category for r in self.results)
        failed = Counter(r.case.category for r in self.failures)
        lines = [f"{'category':<10} {'cases':>6} {'failed':>6}"]
        for category in CATEGORIES:
            if per_category[category]:
                lines.append(f"{category:<10} {per_category[category]:>6} {failed[category]:>6}")
        lines.append(f"{'total':<10} {len(self.results):>6} {len(self.failures):>6}")
        lines.append(f"corpus run: {self.seconds:.1f} s")
        lines.append(
            f"node RSS: baseline {self.baseline_rss / MIB:.0f} MiB, peak {self.peak_rss / MIB:.0f} MiB, "
            f"growth {self.rss_growth / MIB:.0f} MiB (bound {RSS_BOUND_BYTES / MIB:.0f} MiB)"
        )
        good = self.good
        stored = f"{good.stored_after:.1f} s" if good.stored_after is not None else "never"
        lines.append(f"good sender: stored after {stored}, study {good.state} with {good.results} result(s) {good.error or ''}")
        lines.append(f"node alive: {self.alive} (exit code {self.exit_code})")
        lines += [f"spool: {p}" for p in self.spool_problems]
        lines += [f"written outside the spool: {p}" for p in self.outside_spool]
        for result in self.failures:
            lines.append(f"FAILED {result.case.id}: {result.mismatch}")
        return "\n".join(lines)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _send_good_study(node: NodeProcess, directory: Path, good: GoodSender) -> None:
    """Store a normal three-instance study (retrying while attackers hold the node busy), wait until processed."""
    try:
        made = make_study(directory, 3, size=64)
        good.study_uid = made[0].identity.study_instance_uid
        started = time.monotonic()
        while time.monotonic() - started < GOOD_SENDER_TIMEOUT:
            run = storescu(node.port, [m.path for m in made], calling_aet="GOODPACS", timeout=30)
            good.statuses = run.statuses
            if run.statuses == [0x0000] * len(made):
                good.stored_after = time.monotonic() - started
                break
            time.sleep(0.2)
        if good.stored_after is None:
            good.error = f"not stored within {GOOD_SENDER_TIMEOUT:g} s (last answers {good.statuses})"
            return
        report = _wait_for_state(node, good.study_uid, "done", 120)
        if report is not None:
            good.state = report["study"]["state"]
            good.results = len(report.get("results", []))
    except Exception as error:  # reported, and the test fails on it
        good.error = f"{type(error).__name__}: {error}"


def _wait_for_state(node: NodeProcess, study_uid: str, state: str, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    report = None
    while time.monotonic() < deadline:
        report = node.report(study_uid)
        if report is not None and report["study"]["state"] == state:
            break
        time.sleep(0.2)
    return report


def _context(node: NodeProcess, work_dir: Path) -> CaseContext:
    from node.db import Database
    from node.db.schema import InstanceConflict

    database = Database(node.database_url())

    def conflicts(uid: str) -> list[str]:
        with database.session() as session:
            rows = session.scalars(select(InstanceConflict).where(InstanceConflict.sop_instance_uid == uid))
            return [row.calling_aet or "" for row in rows]

    node.report("1.2.3")  # opens the node's database for the attacks' threads
    return CaseContext(
        port=node.port,
        spool=node.data_dir / "spool",
        work_dir=work_dir,
        report=node.report,
        database_url=node.database_url(),
        acse_timeout=corpus_module.ACSE_TIMEOUT,
        network_timeout=corpus_module.NETWORK_TIMEOUT,
        pdu_timeout=corpus_module.PDU_TIMEOUT,
        max_pdu_size=corpus_module.MAX_PDU_SIZE,
        max_instance_bytes=corpus_module.MAX_INSTANCE_BYTES,
        max_connections_per_peer=corpus_module.MAX_CONNECTIONS_PER_PEER,
        log_text=node.log_text,
        conflicts=conflicts,
    )


def _run_case(case: HostileCase, ctx: CaseContext) -> CaseResult:
    started = time.monotonic()
    try:
        observed = case.attack(ctx)
        mismatch = case.check(observed)
    except Exception as error:
        observed = f"{type(error).__name__}: {error}"
        mismatch = f"the attack raised {observed}"
    return CaseResult(case, observed, mismatch, time.monotonic() - started)


def _spool_problems(node: NodeProcess, stored: set[str], good_uids: set[str]) -> list[str]:
    """Every spool file is ``<study>/<series>/<sop>.dcm`` of an answered Success with a database row, and vice versa."""
    from node.db import Database, Instance

    spool = node.data_dir / "spool"
    problems = []
    files = {p for p in spool.rglob("*") if p.is_file()}
    partial = sorted(str(p.relative_to(spool)) for p in files if p.name.endswith(PARTIAL_SUFFIX))
    if partial:
        problems.append(f"partial files left: {partial[:5]}")
    dcm = {p for p in files if p.suffix == ".dcm"}
    for path in sorted(dcm):
        parts = path.relative_to(spool).parts
        if len(parts) != 3 or not all(is_valid_uid(part.removesuffix(".dcm"), strict=False) for part in parts):
            problems.append(f"unexpected spool path {path.relative_to(spool)}")
    database = Database(node.database_url())
    try:
        with database.session() as session:
            rows = {(row.sop_instance_uid, row.path) for row in session.scalars(select(Instance))}
    finally:
        database.engine.dispose()
    row_paths = {spool / path for _uid, path in rows}
    if row_paths != dcm:
        problems.append(f"{len(dcm - row_paths)} spool files without a row, {len(row_paths - dcm)} rows without a file")
    unexpected = {uid for uid, _path in rows} - stored - good_uids
    if unexpected:
        problems.append(f"instances stored without a Success answer: {sorted(unexpected)[:5]}")
    never = stored - {uid for uid, _path in rows}
    if never:
        problems.append(f"Success answered but nothing stored: {sorted(never)[:5]}")
    return problems


def run_corpus(
    work_dir: Path,
    cases: list[HostileCase] | None = None,
    *,
    workers: int = 16,
    repeat: int = 1,
    on_start: Callable[[NodeProcess], None] | None = None,
) -> CorpusRun:
    """Run ``cases`` (the whole corpus by default) ``repeat`` times against a fresh node in ``work_dir``."""
    cases = corpus_module.corpus() if cases is None else cases
    node = NodeProcess(work_dir / "var", env=dict(corpus_module.NODE_ENV))
    node.start()
    try:
        assert node.process is not None
        pid = node.process.pid
        if on_start is not None:
            on_start(node)
        warm = GoodSender()
        _send_good_study(node, work_dir / "warm-up", warm)
        if warm.state != "done":
            raise RuntimeError(f"the warm-up study was not processed: {warm}\n{node.log_text()[-3000:]}")
        baseline = reset_peak_rss(pid)
        before = _files(work_dir)
        ctx = _context(node, work_dir)
        good = GoodSender()
        started = time.monotonic()
        sender = threading.Timer(1.0, _send_good_study, args=(node, work_dir / "good", good))
        sender.start()
        with ThreadPoolExecutor(workers, thread_name_prefix="hostile") as pool:
            results = list(pool.map(lambda c: _run_case(c, ctx), [c for _ in range(repeat) for c in cases]))
        sender.join()
        seconds = time.monotonic() - started
        peak = peak_rss_bytes(pid)
        alive = node.process.poll() is None and echoscu(node.port, timeout=10).returncode == 0
        exit_code = node.process.poll()
        good_uids = _study_uids(node, warm.study_uid) | _study_uids(node, good.study_uid)
        spool_problems = _spool_problems(node, ctx.stored, good_uids)
        new = _files(work_dir) - before
        outside = sorted(
            path
            for path in new
            if not path.startswith(("var/spool/", "good/", "warm-up/"))
            and not path.startswith(tuple(f"var/{allowed}" for allowed in ALLOWED_OUTSIDE_SPOOL))
            and not path.startswith("cxr-disk-")
            and not path.startswith("node-")
        )
        return CorpusRun(results, seconds, baseline, peak, good, alive, exit_code, spool_problems, outside, node.log_text())
    finally:
        node.stop()


def _study_uids(node: NodeProcess, study_uid: str) -> set[str]:
    report = node.report(study_uid) if study_uid else None
    return {i["sop_instance_uid"] for i in report["instances"]} if report else set()
