"""The per-study processing of issue 5: images -> models -> SEG + SR -> records -> deliveries.

Registered as the study step ``analysis`` of ``process_study`` (:mod:`node.tasks.process` opens
and decodes every instance first). For each instance of the study:

1. **Selection** (:func:`node.processing.selection.classify_instance`): laterals, other body
   parts and other modalities get a ``skipped`` result with the reason; an unreadable or
   undecodable frontal chest image a ``failed`` one.
2. **Pixels** (:func:`node.processing.pixels.model_input`): ``(H, W) float32`` in ``[0, 1]``
   as displayed, with the pixel spacing.
3. **Models** (:func:`models.analyze_policies`): one segmentation, then every mask policy of
   the study (``settings.policies_for(calling AET, called AET)``).
4. **Outputs**: one lung SEG per image (it does not depend on the policy), one TID 1500 SR per
   image and policy; written atomically under ``data_dir/outputs``.
5. **Records**: a ``results`` row per (job, image, policy) with probabilities, thresholds,
   decisions, model versions and seconds per stage; an ``output_objects`` row per file.
6. **Deliveries**: a row per output and destination, then one ``deliver`` wake-up per
   destination (queue ``delivery``).

Idempotent: output UIDs are derived from the source, the model versions and the policy, and
rows are keyed by (job, instance, policy) and (job, SOP Instance UID), so a retried job
rewrites the same files and updates the same rows; deliveries already delivered stay so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from sqlalchemy import select

from node.constants import OutputKind, ResultStatus
from node.db import Database
from node.db.schema import OutputObject, Result
from node.delivery.destinations import destinations_for
from node.delivery.records import create_deliveries
from node.delivery.task import enqueue_deliveries, group_by_destination
from node.settings import Settings
from node.tasks.registry import study_step

if TYPE_CHECKING:  # pragma: no cover
    from models.loading import ModelBundle
    from models.result import AnalysisResult
    from node.tasks.context import TaskContext
    from node.tasks.jobs import ClaimedJob
    from node.tasks.process import OpenedInstance

log = logging.getLogger(__name__)

#: Name of the study step (the job summary holds its summary under this key).
STEP_NAME = "analysis"
#: Runs after any inspection-only step of lower order.
STEP_ORDER = 500
#: Stages that are model forward passes; everything else is the node's own overhead.
MODEL_STAGES = ("image_encoder", "mask_decoder", "classifier", "regions")

_bundles: dict[tuple[str, str], "ModelBundle"] = {}
_bundles_lock = threading.Lock()


def model_dir_for(settings: Settings) -> Path:
    """The writable model store: ``CXR_NODE_MODEL_DIR``, else ``data_dir/models``."""
    return settings.model_dir if settings.model_dir is not None else settings.data_dir / "models"


def bundle_for(settings: Settings) -> "ModelBundle":
    """The models for ``settings``, loaded once per process and reused for every image."""
    from models.loading import load_models

    key = (str(model_dir_for(settings).resolve()), settings.device)
    with _bundles_lock:
        bundle = _bundles.get(key)
        if bundle is None:
            bundle = load_models(model_dir_for(settings), settings.device)
            _bundles[key] = bundle
        return bundle


@dataclass
class ImageRecord:
    """What the pipeline concluded for one instance under one policy, before it is stored."""

    instance_id: int
    sop_instance_uid: str
    policy: str
    status: ResultStatus
    reason: str | None = None
    analysis: "AnalysisResult | None" = None
    timings: dict[str, float] = field(default_factory=dict)
    outputs: list[tuple[OutputKind, Dataset, Path]] = field(default_factory=list)


@study_step(STEP_NAME, order=STEP_ORDER)
def analyse_study(claim: "ClaimedJob", instances: "list[OpenedInstance]", context: "TaskContext") -> dict[str, Any]:
    """The ``analysis`` study step: see the module docstring."""
    return process_images(
        claim, instances, context.settings, context.database, dispatcher=context.dispatcher, bundle=None
    )


def process_images(
    claim: "ClaimedJob",
    instances: "Sequence[OpenedInstance]",
    settings: Settings,
    database: Database,
    *,
    dispatcher: object | None = None,
    bundle: "ModelBundle | None" = None,
) -> dict[str, Any]:
    """Analyse, write, record and enqueue delivery for the opened ``instances`` of a claimed job.

    Returns the step summary (JSON-serialisable): policies, counts, reasons per skipped or
    failed instance, output and delivery counts, seconds per phase.
    """
    started = time.perf_counter()
    policies = settings.policies_for(claim.calling_aet, claim.called_aet)
    records: list[ImageRecord] = []
    for opened in instances:
        records.extend(_process_one(opened, policies, settings, bundle))
    processed = time.perf_counter()

    output_ids = _store_records(database, claim.job_id, records, settings.output_dir)
    destinations = destinations_for(settings, claim.calling_aet)
    with database.session() as session:
        delivery_ids = create_deliveries(session, output_ids, destinations)
    wakeups = 0
    if dispatcher is not None and delivery_ids:
        wakeups = enqueue_deliveries(dispatcher, group_by_destination(database, delivery_ids))
    finished = time.perf_counter()

    summary: dict[str, Any] = {
        "policies": list(policies),
        "images": len(instances),
        "ok": sorted({r.sop_instance_uid for r in records if r.status is ResultStatus.OK}),
        "skipped": {r.sop_instance_uid: r.reason for r in records if r.status is ResultStatus.SKIPPED},
        "failed": {f"{r.sop_instance_uid} ({r.policy})": r.reason for r in records if r.status is ResultStatus.FAILED},
        "outputs": len(output_ids),
        "destinations": [str(d) for d in destinations],
        "deliveries_enqueued": len(delivery_ids),
        "delivery_wakeups": wakeups,
        "seconds": {
            "images": round(processed - started, 4),
            "record_and_enqueue": round(finished - processed, 4),
        },
    }
    log.info(
        "study %s job %d: %d image(s), %d ok, %d skipped, %d failed result(s), %d output(s), %d deliveries",
        claim.study_instance_uid,
        claim.job_id,
        len(instances),
        len(summary["ok"]),
        len(summary["skipped"]),
        len(summary["failed"]),
        len(output_ids),
        len(delivery_ids),
    )
    return summary


def _records_for_all(opened: "OpenedInstance", policies: Sequence[str], status: ResultStatus, reason: str, timings: dict[str, float]) -> list[ImageRecord]:
    return [ImageRecord(opened.instance_id, opened.sop_instance_uid, p, status, reason, timings=dict(timings)) for p in policies]


def _process_one(
    opened: "OpenedInstance", policies: Sequence[str], settings: Settings, bundle: "ModelBundle | None"
) -> list[ImageRecord]:
    from models.analysis import SKIP_REASON_SEGMENTATION_FAILED, analyze_policies, classifier_skipped
    from node.outputs.files import write_output
    from node.outputs.seg import build_lung_segmentation
    from node.outputs.sr import build_measurement_report
    from node.processing.pixels import model_input
    from node.processing.selection import classify_instance

    timings: dict[str, float] = {}
    if opened.inspection.get("decode_seconds") is not None:
        timings["decode"] = float(opened.inspection["decode_seconds"])
    ds = opened.dataset
    if ds is None:
        reason = f"could not be read: {opened.inspection.get('error', 'unknown error')}"
        return _records_for_all(opened, policies, ResultStatus.FAILED, reason, timings)

    clock = time.perf_counter()
    selection = classify_instance(ds)
    timings["select"] = time.perf_counter() - clock
    if not selection.accepted:
        log.info("instance %s skipped: %s", opened.sop_instance_uid, selection.reason)
        return _records_for_all(opened, policies, ResultStatus.SKIPPED, str(selection.reason), timings)
    if not opened.decoded:
        reason = f"pixel data could not be decoded: {opened.inspection.get('error', 'unknown error')}"
        return _records_for_all(opened, policies, ResultStatus.FAILED, reason, timings)

    clock = time.perf_counter()
    try:
        prepared = model_input(ds)
    except ValueError as exc:
        return _records_for_all(opened, policies, ResultStatus.FAILED, f"pixel data not usable: {exc}", timings)
    timings["model_input"] = time.perf_counter() - clock

    models_bundle = bundle or bundle_for(settings)
    try:
        analyses = analyze_policies(prepared.image, prepared.pixel_spacing_mm, policies, bundle=models_bundle)
    except ValueError as exc:
        return _records_for_all(opened, policies, ResultStatus.FAILED, f"analysis refused the image: {exc}", timings)

    segmentation = analyses[0].segmentation
    seg_ds: Dataset | None = None
    seg_path: Path | None = None
    seg_timings: dict[str, float] = {}
    if segmentation.ok:
        clock = time.perf_counter()
        try:
            seg_ds = build_lung_segmentation(ds, analyses[0])
        except ValueError as exc:
            return _records_for_all(opened, policies, ResultStatus.FAILED, f"SEG could not be built: {exc}", timings)
        seg_timings["build_seg"] = time.perf_counter() - clock
        clock = time.perf_counter()
        seg_path = write_output(settings.output_dir, seg_ds)
        seg_timings["write_seg"] = time.perf_counter() - clock

    records: list[ImageRecord] = []
    for index, analysis in enumerate(analyses):
        record = ImageRecord(opened.instance_id, opened.sop_instance_uid, analysis.policy, ResultStatus.OK, analysis=analysis)
        record.timings = {**timings, **{k: float(v) for k, v in analysis.timings.items()}, **seg_timings}
        if index == 0 and seg_ds is not None and seg_path is not None:
            record.outputs.append((OutputKind.SEG, seg_ds, seg_path))
        if classifier_skipped(analysis):
            record.status = ResultStatus.FAILED
            record.reason = f"{SKIP_REASON_SEGMENTATION_FAILED}: {segmentation.failure_reason}"
            records.append(record)
            continue
        clock = time.perf_counter()
        try:
            sr_ds = build_measurement_report(ds, seg_ds, analysis)
        except ValueError as exc:
            record.status = ResultStatus.FAILED
            record.reason = f"SR could not be built: {exc}"
            records.append(record)
            continue
        record.timings["build_sr"] = time.perf_counter() - clock
        clock = time.perf_counter()
        sr_path = write_output(settings.output_dir, sr_ds)
        record.timings["write_sr"] = time.perf_counter() - clock
        record.outputs.append((OutputKind.SR, sr_ds, sr_path))
        if not segmentation.ok:
            record.reason = f"lung segmentation failed ({segmentation.failure_reason}); no SEG, SR without lung areas"
        records.append(record)
    return records


def model_versions_json(analysis: "AnalysisResult") -> dict[str, Any]:
    """``{"segmenter": {...}, "classifier": {...}}`` with name, version, Device UID, sha256, clinical use."""
    return {
        "segmenter": dataclasses.asdict(analysis.segmenter),
        "classifier": dataclasses.asdict(analysis.classifier),
    }


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _store_records(database: Database, job_id: int, records: Sequence[ImageRecord], output_dir: Path) -> list[int]:
    """Upsert result and output rows of ``records``; return the output ids, SEG before SR."""
    output_ids: list[int] = []
    with database.session() as session:
        for record in records:
            clock = time.perf_counter()
            row = session.scalar(
                select(Result).where(
                    Result.job_id == job_id, Result.instance_id == record.instance_id, Result.policy == record.policy
                )
            )
            if row is None:
                row = Result(job_id=job_id, instance_id=record.instance_id, policy=record.policy)
                session.add(row)
            analysis = record.analysis
            row.status = record.status.value
            row.reason = record.reason
            row.probabilities = dict(analysis.probabilities) if analysis and analysis.probabilities else None
            row.no_finding = _finite(analysis.no_finding) if analysis and analysis.probabilities else None
            row.thresholds = dict(analysis.thresholds) if analysis else None
            row.decisions = {k: bool(v) for k, v in analysis.decisions.items()} if analysis and analysis.decisions else None
            row.model_versions = model_versions_json(analysis) if analysis else None
            session.flush()
            for kind, ds, path in record.outputs:
                output_ids.append(_upsert_output(session, job_id, row.id, kind, ds, path, output_dir))
            record.timings["record"] = time.perf_counter() - clock
            row.timings = {k: round(v, 5) for k, v in record.timings.items()}
    return list(dict.fromkeys(output_ids))


def _upsert_output(session: Any, job_id: int, result_id: int, kind: OutputKind, ds: Dataset, path: Path, output_dir: Path) -> int:
    sop_instance_uid = str(ds.SOPInstanceUID)
    row = session.scalar(
        select(OutputObject).where(OutputObject.job_id == job_id, OutputObject.sop_instance_uid == sop_instance_uid)
    )
    data = path.read_bytes()
    values = {
        "result_id": result_id,
        "kind": kind.value,
        "sop_class_uid": str(ds.SOPClassUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "study_instance_uid": str(ds.StudyInstanceUID),
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
        "path": str(path.relative_to(output_dir)),
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if row is None:
        row = OutputObject(job_id=job_id, sop_instance_uid=sop_instance_uid, **values)
        session.add(row)
    else:
        if row.result_id is not None and kind is OutputKind.SEG:
            values.pop("result_id")  # the SEG stays linked to the first policy's result
        for key, value in values.items():
            setattr(row, key, value)
    session.flush()
    return int(row.id)
