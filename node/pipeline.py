"""One image's way: selection -> pixels -> models -> output builders -> records.

Called by ``process_study`` (:mod:`node.tasks.process`) for each instance of a claimed job,
one decoded image at a time:

1. **Selection** (:func:`node.processing.selection.classify_instance`): laterals, other body
   parts and other modalities get a ``skipped`` result with the reason; an unreadable or
   undecodable frontal chest image a ``failed`` one.
2. **Pixels** (:func:`node.processing.pixels.model_input`): ``(H, W) float32`` in ``[0, 1]``
   as displayed, with the pixel spacing.
3. **Models** (:func:`models.analyze_policies`): one segmentation, then every mask policy of
   the study (``settings.policies_for(calling AET, called AET)``).
4. **Outputs**: the output builders (:mod:`node.outputs.builders`): one lung SEG per image
   (it does not depend on the policy), one TID 1500 SR per image and policy; written
   atomically under ``data_dir/outputs``.
5. **Records** (:func:`store_records`, in the transaction that closes the job): a ``results``
   row per (job, image, policy) with probabilities, thresholds, decisions, model versions and
   seconds per stage; an ``output_objects`` row per file.

Idempotent: output UIDs are derived from the source, the model versions and the policy, and
rows are keyed by (job, instance, policy) and (job, SOP Instance UID), so a retried job
rewrites the same files and updates the same rows.
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

from sqlalchemy.orm import Session

from node.constants import ResultStatus
from node.db.schema import OutputObject, Result
from node.faults import explain
from node.outputs.builders import DEFAULT_BUILDERS, BuildInput, OutputBuilder
from node.outputs.header import output_header
from node.outputs.files import write_output
from node.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from models.loading import ModelBundle
    from models.result import AnalysisResult
    from node.tasks.process import OpenedInstance

log = logging.getLogger(__name__)

#: Key of the analysis summary in a job's summary (``summary["steps"]["analysis"]``).
STEP_NAME = "analysis"
#: Stages that are model forward passes; everything else is the node's own overhead.
MODEL_STAGES = ("image_encoder", "mask_decoder", "classifier", "regions")
#: Never one image's fault, wherever they happen: the disk, the memory. They fail the job
#: (which is retried) instead of the image; so do failures to load the models or write outputs.
ENVIRONMENT_ERRORS: tuple[type[BaseException], ...] = (OSError, MemoryError)

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
    outputs: list[tuple[OutputBuilder, Dataset, Path]] = field(default_factory=list)
    #: What the outputs lack, e.g. "left out of the outputs: Patient's Birth Date (0010,0030): not a valid DA".
    warnings: list[str] = field(default_factory=list)

    @property
    def stored_reason(self) -> str | None:
        """The reason with the warnings, as ``results.reason`` stores it."""
        parts = [p for p in (self.reason, *self.warnings) if p]
        return "; ".join(parts) if parts else None


def analysis_summary(
    records: Sequence[ImageRecord], output_ids: Sequence[int], destinations: Sequence[object], delivery_ids: Sequence[int]
) -> dict[str, Any]:
    """The ``analysis`` part of a job summary (JSON-serialisable): counts and reasons per image."""
    return {
        "policies": list(dict.fromkeys(r.policy for r in records)),
        "images": len({r.instance_id for r in records}),
        "ok": sorted({r.sop_instance_uid for r in records if r.status is ResultStatus.OK}),
        "skipped": {r.sop_instance_uid: r.reason for r in records if r.status is ResultStatus.SKIPPED},
        "failed": {f"{r.sop_instance_uid} ({r.policy})": r.reason for r in records if r.status is ResultStatus.FAILED},
        "warnings": {r.sop_instance_uid: r.warnings for r in records if r.warnings},
        "outputs": len(output_ids),
        "destinations": [str(d) for d in destinations],
        "deliveries_enqueued": len(delivery_ids),
    }


def _records_for_all(opened: "OpenedInstance", policies: Sequence[str], status: ResultStatus, reason: str, timings: dict[str, float]) -> list[ImageRecord]:
    return [ImageRecord(opened.instance_id, opened.sop_instance_uid, p, status, reason, timings=dict(timings)) for p in policies]


def _image_failed(opened: "OpenedInstance", policies: Sequence[str], what: str, exc: BaseException, timings: dict[str, float]) -> list[ImageRecord]:
    """Failed records for every policy: ``what`` and an explanation that quotes no header value."""
    reason = f"{what}: {explain(exc)}"
    log.warning("instance %s failed: %s (%s)", opened.sop_instance_uid, what, type(exc).__name__)
    return _records_for_all(opened, policies, ResultStatus.FAILED, reason, timings)


def analyse_image(
    opened: "OpenedInstance",
    policies: Sequence[str],
    settings: Settings,
    builders: Sequence[OutputBuilder] = DEFAULT_BUILDERS,
    bundle: "ModelBundle | None" = None,
) -> list[ImageRecord]:
    """Select, analyse and build the outputs of one opened instance; one record per policy.

    Outputs are written under ``settings.output_dir`` (atomically, deterministic UIDs).

    What is this image's fault and what is not, stage by stage:

    * reading its header (selection, the output header check), converting its pixels and
      building an output from it: any exception is this image's content (an unknown VR, a
      value that does not convert, a pixel module pydicom or highdicom refuses), except
      :data:`ENVIRONMENT_ERRORS`. It becomes a failed record whose reason names the attribute
      and the problem, never a value (:func:`node.faults.explain`);
    * the models refusing the image (``ValueError`` from the analysis): a failed record;
    * loading the models, writing an output file, and :data:`ENVIRONMENT_ERRORS` anywhere:
      not the image's fault; the exception propagates and the job fails (and is retried).

    Invalid patient or study attributes are left out of the outputs
    (:func:`node.outputs.header.output_header`); each record says which in ``warnings``.
    """
    from models.analysis import SKIP_REASON_SEGMENTATION_FAILED, analyze_policies, classifier_skipped
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
    try:
        selection = classify_instance(ds)
    except ENVIRONMENT_ERRORS:
        raise
    except Exception as exc:  # this image's header
        return _image_failed(opened, policies, "header not readable", exc, timings)
    timings["select"] = time.perf_counter() - clock
    if not selection.accepted:
        log.info("instance %s skipped: %s", opened.sop_instance_uid, selection.reason)
        return _records_for_all(opened, policies, ResultStatus.SKIPPED, str(selection.reason), timings)
    if not opened.decoded:
        reason = f"pixel data could not be decoded: {opened.inspection.get('error', 'unknown error')}"
        return _records_for_all(opened, policies, ResultStatus.FAILED, reason, timings)

    try:
        header = output_header(ds)
    except ENVIRONMENT_ERRORS:
        raise
    except Exception as exc:  # an attribute the outputs are built on
        return _image_failed(opened, policies, "outputs cannot be built", exc, timings)
    if header.left_out:
        log.warning("instance %s: left out of the outputs: %s", opened.sop_instance_uid, ", ".join(header.left_out_keywords))

    clock = time.perf_counter()
    try:
        prepared = model_input(ds)
    except ENVIRONMENT_ERRORS:
        raise
    except Exception as exc:  # this image's pixel module
        return _image_failed(opened, policies, "pixel data not usable", exc, timings)
    timings["model_input"] = time.perf_counter() - clock

    models = bundle or bundle_for(settings)  # not the image's fault when it fails: the job fails
    try:
        analyses = analyze_policies(prepared.image, prepared.pixel_spacing_mm, policies, bundle=models)
    except ValueError as exc:  # the models' own checks of the image; they never see the header
        log.warning("instance %s: the analysis refused the image", opened.sop_instance_uid)
        return _records_for_all(opened, policies, ResultStatus.FAILED, f"analysis refused the image: {exc}", timings)

    warnings = [f"left out of the outputs: {text}" for text in header.left_out]
    records = [
        ImageRecord(opened.instance_id, opened.sop_instance_uid, a.policy, ResultStatus.OK, analysis=a, warnings=list(warnings))
        for a in analyses
    ]
    for record in records:
        record.timings = {**timings, **{k: float(v) for k, v in record.analysis.timings.items()}}  # type: ignore[union-attr]
    built: dict[str, Dataset] = {}
    for builder in (b for b in builders if not b.per_policy):  # once per image, first policy's analysis
        given = BuildInput(header.dataset, analyses[0], built)
        if builder.skip_reason(given) is not None:
            continue
        try:
            output, seconds = _build_and_write(builder, given, settings.output_dir)
        except _BuildFailed as failed:
            return _records_for_all(opened, policies, ResultStatus.FAILED, failed.reason, timings)
        built[builder.kind] = output[1]
        records[0].outputs.append(output)
        for record in records:
            record.timings.update(seconds)

    segmentation = analyses[0].segmentation
    for record in records:
        analysis = record.analysis
        assert analysis is not None  # set above for every record
        if classifier_skipped(analysis):
            record.status = ResultStatus.FAILED
            record.reason = f"{SKIP_REASON_SEGMENTATION_FAILED}: {segmentation.failure_reason}"
            continue
        for builder in (b for b in builders if b.per_policy):
            given = BuildInput(header.dataset, analysis, built)
            if builder.skip_reason(given) is not None:
                continue
            try:
                output, seconds = _build_and_write(builder, given, settings.output_dir)
            except _BuildFailed as failed:
                record.status = ResultStatus.FAILED
                record.reason = failed.reason
                break
            record.outputs.append(output)
            record.timings.update(seconds)
        if record.status is ResultStatus.OK and not segmentation.ok:
            record.reason = f"lung segmentation failed ({segmentation.failure_reason}); no SEG, SR without lung areas"
    return records


class _BuildFailed(Exception):
    """An output could not be built from this image; ``reason`` quotes no header value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _build_and_write(builder: OutputBuilder, given: BuildInput, output_dir: Path) -> tuple[tuple[OutputBuilder, Dataset, Path], dict[str, float]]:
    """Build one output (its failures are the image's: :class:`_BuildFailed`) and write it (its failures are not)."""
    clock = time.perf_counter()
    try:
        ds = builder.build(given)
    except ENVIRONMENT_ERRORS:
        raise
    except Exception as exc:  # highdicom/pydicom refusing this image's header or analysis
        log.warning("instance %s: %s not built (%s)", given.source.get("SOPInstanceUID", "?"), builder.kind, type(exc).__name__)
        raise _BuildFailed(f"{builder.kind} could not be built: {explain(exc)}") from exc
    built_at = time.perf_counter()
    path = write_output(output_dir, ds)
    name = builder.kind.lower()
    return (builder, ds, path), {f"build_{name}": built_at - clock, f"write_{name}": time.perf_counter() - built_at}


def model_versions_json(analysis: "AnalysisResult") -> dict[str, Any]:
    """``{"segmenter": {...}, "classifier": {...}}`` with name, version, Device UID, sha256, clinical use."""
    return {
        "segmenter": dataclasses.asdict(analysis.segmenter),
        "classifier": dataclasses.asdict(analysis.classifier),
    }


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def store_records(session: Session, job_id: int, records: Sequence[ImageRecord], output_dir: Path) -> list[int]:
    """Upsert result and output rows of ``records`` in ``session``; return the output ids in build order."""
    output_ids: list[int] = []
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
        row.reason = record.stored_reason
        row.probabilities = dict(analysis.probabilities) if analysis and analysis.probabilities else None
        row.no_finding = _finite(analysis.no_finding) if analysis and analysis.probabilities else None
        row.thresholds = dict(analysis.thresholds) if analysis else None
        row.decisions = {k: bool(v) for k, v in analysis.decisions.items()} if analysis and analysis.decisions else None
        row.model_versions = model_versions_json(analysis) if analysis else None
        session.flush()
        for builder, ds, path in record.outputs:
            output_ids.append(_upsert_output(session, job_id, row.id, builder, ds, path, output_dir))
        record.timings["record"] = time.perf_counter() - clock
        row.timings = {k: round(v, 5) for k, v in record.timings.items()}
    return list(dict.fromkeys(output_ids))


def _upsert_output(session: Session, job_id: int, result_id: int, builder: OutputBuilder, ds: Dataset, path: Path, output_dir: Path) -> int:
    sop_instance_uid = str(ds.SOPInstanceUID)
    row = session.scalar(
        select(OutputObject).where(OutputObject.job_id == job_id, OutputObject.sop_instance_uid == sop_instance_uid)
    )
    data = path.read_bytes()
    values = {
        "result_id": result_id,
        "kind": builder.kind,
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
        if row.result_id is not None and not builder.per_policy:
            values.pop("result_id")  # an image-scoped output stays linked to the first policy's result
        for key, value in values.items():
            setattr(row, key, value)
    session.flush()
    return int(row.id)
