"""End-to-end benchmark: single-image studies from Orthanc through ``cxr-node serve`` and back.

Set-up, all on loopback: Orthanc 1.10 as the PACS, ``cxr-node serve`` as a subprocess on the
embedded default (SQLite, in-process tasks, the bundled demo models on the CPU), with Orthanc
listed in ``CXR_NODE_KNOWN_PACS`` so results go back to it. ``--studies`` (default 50) DX
phantom studies of one image each are uploaded to Orthanc; then, one study at a time (closed
loop, so that no study waits behind another), Orthanc is asked over REST to C-STORE the study
to the node, and the benchmark waits until the node's SR is stored in Orthanc. One extra study
first warms the node up (model loading) and is reported apart.

Figures per study, from the node's database (same machine, same clock):

- **latency** = SR stored in Orthanc (its C-STORE answered Success) - last instance received -
  quiet period (``CXR_NODE_STABLE_SECONDS``): what the node adds after the study is complete;
- the timeline inside it: completion detection (scanner), queue wait, processing (open and
  decode, selection, pixels, models, SEG and SR building and writing, records), C-STORE of the
  outputs;
- time per stage, from the ``results.timings`` of each image;
- **node overhead** = latency - model forward passes (image encoder, mask decoder, classifier,
  finding regions): everything the node itself costs.

Run::

    .venv/bin/python benchmarks/end_to_end.py                 # 50 studies, 512 px
    .venv/bin/python benchmarks/end_to_end.py --studies 10 --size 256 --json out.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402
from sqlalchemy import select  # noqa: E402

from node.db import Database, Instance, Job, Study  # noqa: E402
from node.db.schema import Delivery, DeliveryAttempt, OutputObject, Result  # noqa: E402
from tests.support.node_process import NodeProcess  # noqa: E402
from tests.support.orthanc import OrthancServer  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from training.dicom_export import RadiographIdentity, write_radiograph  # noqa: E402
from training.phantoms import generate_phantom  # noqa: E402

SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
STUDY_TIMEOUT_S = 300.0
POLL_S = 0.02
#: Stages that are model forward passes (see models.analysis.STAGES); the rest is node overhead.
MODEL_STAGES = ("image_encoder", "mask_decoder", "classifier", "regions")


def utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] (numpy's default method)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def make_studies(directory: Path, count: int, size: int) -> list[tuple[str, Path]]:
    """``count`` single-image PA studies (phantoms with findings); return (Study UID, file)."""
    findings_cycle = [[], ["Nodule"], ["Mass"], ["Pneumonia"], ["Edema"], ["Fibrosis"]]
    studies = []
    for index in range(count):
        phantom = generate_phantom(size, seed=50_000 + index, findings=findings_cycle[index % len(findings_cycle)])
        identity = RadiographIdentity.new()
        path = write_radiograph(
            directory / f"study-{index:03d}.dcm", phantom.image, identity, pixel_spacing_mm=phantom.pixel_spacing_mm
        )
        studies.append((identity.study_instance_uid, path))
    return studies


def sr_in_pacs(pacs: OrthancServer, study_uid: str, sources: set[str]) -> bool:
    for instance in pacs.instances_of_study(study_uid):
        if instance["MainDicomTags"]["SOPInstanceUID"] not in sources:
            sop_class = pacs.request("GET", f"/instances/{instance['ID']}/metadata/SopClassUid").decode().strip()
            if sop_class == SR_SOP_CLASS:
                return True
    return False


def finished_without_sr(database: Database, study_uid: str) -> str | None:
    """Why a study will never have an SR in the PACS (job finished with no SR, or its delivery failed)."""
    with database.session() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            return None
        job = session.scalar(select(Job).where(Job.study_id == study.id).order_by(Job.id.desc()))
        if job is None or job.state not in ("done", "failed"):
            return None
        states = set(
            session.scalars(
                select(Delivery.state)
                .join(OutputObject, Delivery.output_object_id == OutputObject.id)
                .where(OutputObject.job_id == job.id, OutputObject.kind == "SR")
            )
        )
        if not states:
            return f"job {job.id} {job.state} without an SR to deliver: {job.error or job.summary}"
        if states == {"failed"}:
            return f"the SR delivery of job {job.id} failed"
    return None


def study_figures(database: Database, study_uid: str, stable_seconds: float) -> dict[str, Any]:
    """The timeline and stage times of one delivered study, from the node's database."""
    with database.session() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        received = max(utc(i.received_at) for i in session.scalars(select(Instance).where(Instance.study_id == study.id)))
        job = session.scalar(select(Job).where(Job.study_id == study.id).order_by(Job.id.desc()))
        results = list(session.scalars(select(Result).where(Result.job_id == job.id, Result.status == "ok")))
        sr_attempts = list(
            session.execute(
                select(DeliveryAttempt.started_at, DeliveryAttempt.finished_at, DeliveryAttempt.status)
                .join(Delivery, DeliveryAttempt.delivery_id == Delivery.id)
                .join(OutputObject, Delivery.output_object_id == OutputObject.id)
                .where(OutputObject.job_id == job.id, OutputObject.kind == "SR", Delivery.state == "delivered")
                .order_by(DeliveryAttempt.finished_at)
            )
        )
    if not sr_attempts or not results:
        raise RuntimeError(f"study {study_uid}: no delivered SR or no ok result in the database")
    send_started, stored, _ = sr_attempts[-1]
    stored, send_started = utc(stored), utc(send_started)
    created, started = utc(job.created_at), utc(job.started_at)
    stages: dict[str, float] = {}
    for result in results:  # one image, one policy by default: one result
        for name, seconds in (result.timings or {}).items():
            stages[name] = stages.get(name, 0.0) + float(seconds)
    model = sum(stages.get(name, 0.0) for name in MODEL_STAGES)
    latency = (stored - received).total_seconds() - stable_seconds
    return {
        "study_instance_uid": study_uid,
        "latency_s": latency,
        "timeline_s": {
            "completion_detection": (created - received).total_seconds() - stable_seconds,
            "queue_wait": (started - created).total_seconds(),
            "processing": (send_started - started).total_seconds(),
            "c_store_outputs": (stored - send_started).total_seconds(),
        },
        "stages_s": stages,
        "model_forward_s": model,
        "node_overhead_s": latency - model,
    }


def summarise(figures: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        return {
            "p50": percentile(values, 50),
            "p95": percentile(values, 95),
            "mean": statistics.fmean(values),
            "max": max(values),
        }

    stage_names = sorted({name for f in figures for name in f["stages_s"]})
    timeline_names = list(figures[0]["timeline_s"])
    return {
        "studies": len(figures),
        "latency_s": stats([f["latency_s"] for f in figures]),
        "node_overhead_s": stats([f["node_overhead_s"] for f in figures]),
        "model_forward_s": stats([f["model_forward_s"] for f in figures]),
        "timeline_s": {name: stats([f["timeline_s"][name] for f in figures]) for name in timeline_names},
        "stages_s": {name: stats([f["stages_s"].get(name, 0.0) for f in figures]) for name in stage_names},
    }


def print_summary(summary: dict[str, Any], warmup: dict[str, Any], elapsed: float, args: argparse.Namespace) -> None:
    def row(name: str, s: dict[str, float]) -> str:
        return f"  {name:<28} p50 {s['p50'] * 1000:8.1f} ms   p95 {s['p95'] * 1000:8.1f} ms   mean {s['mean'] * 1000:8.1f} ms"

    print(f"\nend-to-end: {summary['studies']} single-image studies, {args.size} px DX, demo models, CPU")
    print(f"quiet period {args.stable_seconds} s (subtracted), scanner every {args.scan_interval} s; wall time {elapsed:.0f} s")
    print(f"warm-up study (model loading): latency {warmup['latency_s']:.2f} s\n")
    print(row("latency (SR in Orthanc)", summary["latency_s"]))
    print(row("node overhead", summary["node_overhead_s"]))
    print(row("model forward passes", summary["model_forward_s"]))
    print("timeline:")
    for name, s in summary["timeline_s"].items():
        print(row(name, s))
    print("stages (results.timings):")
    for name, s in summary["stages_s"].items():
        print(row(name, s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="End-to-end latency: Orthanc -> cxr-node -> SEG+SR in Orthanc.")
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--size", type=int, default=512, help="phantom width and height in pixels")
    parser.add_argument("--stable-seconds", type=float, default=1.0, help="the node's quiet period")
    parser.add_argument("--scan-interval", type=float, default=0.1, help="the node's completion scan interval")
    parser.add_argument("--policy", default="loose", help="mask policy or policies (CXR_NODE_MASK_POLICY)")
    parser.add_argument("--model-dir", type=Path, default=None, help="model store to use (default: the bundled demo models)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    args = parser.parse_args(argv)
    if args.studies < 1:
        parser.error("--studies must be at least 1")

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cxr-e2e-bench-") as tmp_name:
        tmp = Path(tmp_name)
        studies = make_studies(tmp / "studies", args.studies + 1, args.size)
        node_port = free_port()
        pacs = OrthancServer(tmp / "orthanc", modalities={"CXRNODE": ("CXRNODE", "127.0.0.1", node_port)})
        node = NodeProcess(
            tmp / "var",
            port=node_port,
            env={
                "CXR_NODE_KNOWN_PACS": f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
                "CXR_NODE_STABLE_SECONDS": str(args.stable_seconds),
                "CXR_NODE_SCAN_INTERVAL_SECONDS": str(args.scan_interval),
                "CXR_NODE_DEVICE": os.environ.get("CXR_NODE_DEVICE", "cpu"),
                "CXR_NODE_MASK_POLICY": args.policy,
                **({"CXR_NODE_MODEL_DIR": str(args.model_dir.resolve())} if args.model_dir else {}),
            },
        )
        pacs.start()
        node.start()
        database = Database(f"sqlite:///{(tmp / 'var' / 'cxr-node.sqlite3').resolve()}")
        figures: list[dict[str, Any]] = []
        try:
            for study_uid, path in studies:
                pacs.upload(path)
            for index, (study_uid, path) in enumerate(studies):
                source = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)}
                pacs.store_to_modality("CXRNODE", pacs.study_id(study_uid))
                deadline = time.monotonic() + STUDY_TIMEOUT_S
                while not sr_in_pacs(pacs, study_uid, source):
                    gave_up = finished_without_sr(database, study_uid)
                    if gave_up:
                        raise RuntimeError(f"study {study_uid}: {gave_up}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no SR for study {study_uid} in Orthanc after {STUDY_TIMEOUT_S} s:\n{node.log_text()[-3000:]}")
                    time.sleep(POLL_S)
                while True:  # the delivery row is committed right after Orthanc answered
                    try:
                        figures.append(study_figures(database, study_uid, args.stable_seconds))
                        break
                    except (RuntimeError, AttributeError):
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(POLL_S)
                label = "warm-up" if index == 0 else f"{index}/{args.studies}"
                print(f"study {label}: latency {figures[-1]['latency_s'] * 1000:.0f} ms", flush=True)
        finally:
            node.stop()
            pacs.stop(graceful=False)
            database.engine.dispose()
    elapsed = time.monotonic() - started
    warmup, measured = figures[0], figures[1:]
    summary = summarise(measured)
    print_summary(summary, warmup, elapsed, args)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "warmup": warmup, "studies": measured}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
