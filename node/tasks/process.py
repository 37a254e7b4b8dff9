"""The ``process_study`` task: claim the job, open, decode and analyse each image, record, deliver.

``process_study(job_id, context=...)`` is a plain function; the in-process dispatcher calls it on
a thread and the Celery app wraps it as the task :data:`~node.constants.TASK_PROCESS_STUDY` on
queue ``inference``. What it does for one claimed job:

1. open each of the study's instances from the spool and decode its pixels (every transfer
   syntax the listener accepts; the decoders are pydicom's with pylibjpeg/pyjpegls plug-ins);
2. record what it found on ``Instance.inspection`` (modality, view position, body part, size,
   photometric interpretation, bits, transfer syntax, decoded or the error) — a file that
   cannot be decoded is recorded as such and does not fail the job;
3. analyse each image and write its outputs (:func:`node.pipeline.analyse_image`), one decoded
   image at a time;
4. record results, outputs and deliveries and close the job ``done`` in one transaction (or
   ``failed`` with the error), and only then wake the deliveries.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from sqlalchemy.exc import InterfaceError, OperationalError

from node.constants import COMPANION_SOP_CLASSES, TASK_PROCESS_STUDY
from node.db import Instance
from node.faults import explain
from node.processing.dimensions import DEFAULT_MAX_IMAGE_PIXELS, ImageSize, size_problem
from node.tasks.context import TaskContext
from node.delivery.destinations import destinations_for
from node.delivery.records import create_deliveries
from node.delivery.task import enqueue_deliveries, group_by_destination
from node.lifecycle import JobEvent
from node.pipeline import STEP_NAME, ImageRecord, analyse_image, analysis_summary, bundle_for, store_records
from node.tasks.heartbeat import JobHeartbeat
from node.tasks.interruptions import STAGE_MODELS
from node.tasks.jobs import ClaimedJob, claim_job, close_job, fail_job, release_job, was_interrupted

log = logging.getLogger(__name__)

#: Errors that mean the database is unreachable (restarting, network), not that the study is bad.
DATABASE_AWAY = (OperationalError, InterfaceError)

#: Longest decode error text kept in an inspection.
DECODE_ERROR_MAX_CHARS = 500


@dataclass
class OpenedInstance:
    """One instance of the study as ``process_study`` opened it.

    Attributes
    ----------
    instance_id, sop_instance_uid, series_instance_uid, sop_class_uid:
        From the instance row.
    path:
        Absolute path of the spool file.
    inspection:
        The dict recorded on ``Instance.inspection`` (see :func:`inspect_dataset`).
    dataset:
        The dataset read from the spool, or ``None`` if the file could not be read.
    pixels:
        The decoded pixel data as pydicom returns it, or ``None`` if decoding failed:
        ``(Rows, Columns)`` for one grey frame, ``(frames, Rows, Columns)`` for several,
        a trailing samples axis for colour; stored values (no modality or VOI LUT applied),
        dtype from Bits Allocated and Pixel Representation.
    """

    instance_id: int
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    path: Path
    inspection: dict[str, Any]
    dataset: Dataset | None
    pixels: np.ndarray | None

    @property
    def decoded(self) -> bool:
        return self.pixels is not None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _spacing(ds: Dataset, keyword: str) -> list[float] | None:
    value = ds.get(keyword)
    if not value:
        return None
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def read_spool_file(path: Path, transfer_syntax_uid: str | None = None) -> Dataset:
    """Read a spool file: a DICOM Part 10 file, or a bare dataset with its transfer syntax given.

    Raises
    ------
    FileNotFoundError
        The file is not in the spool.
    pydicom.errors.InvalidDicomError
        The bytes are not a DICOM dataset.
    """
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        if transfer_syntax_uid is None:
            raise
        ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
        if transfer_syntax_uid is None:
            raise InvalidDicomError(f"{path.name}: no transfer syntax in the file and none recorded")
        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = transfer_syntax_uid
    return ds


def inspect_dataset(ds: Dataset) -> dict[str, Any]:
    """What the node needs to know about an image, without any patient attribute.

    Returns a JSON-serialisable dict: ``sop_class_uid``, ``modality``, ``view_position``,
    ``body_part_examined``, ``image_laterality``, ``rows``, ``columns``, ``number_of_frames``,
    ``samples_per_pixel``, ``photometric_interpretation``, ``bits_allocated``, ``bits_stored``,
    ``pixel_representation``, ``pixel_spacing_mm`` and ``imager_pixel_spacing_mm`` (row, column
    spacing), ``transfer_syntax_uid``, ``has_pixel_data``. An attribute that cannot be read
    (unknown VR, a value that does not convert) is ``None``, never an exception.
    """

    def read(reader: Any, keyword: str) -> Any:
        try:
            return reader(ds, keyword)
        except Exception:  # this image's header; the analysis records what it lacks
            return None

    file_meta = getattr(ds, "file_meta", Dataset())
    try:
        transfer_syntax_uid = str(file_meta.get("TransferSyntaxUID", "")) or None
    except Exception:  # as above
        transfer_syntax_uid = None
    return {
        "sop_class_uid": read(_text, "SOPClassUID"),
        "modality": read(_text, "Modality"),
        "view_position": read(_text, "ViewPosition"),
        "body_part_examined": read(_text, "BodyPartExamined"),
        "image_laterality": read(_text, "ImageLaterality"),
        "rows": read(_int, "Rows"),
        "columns": read(_int, "Columns"),
        "number_of_frames": read(_int, "NumberOfFrames") or 1,
        "samples_per_pixel": read(_int, "SamplesPerPixel"),
        "photometric_interpretation": read(_text, "PhotometricInterpretation"),
        "bits_allocated": read(_int, "BitsAllocated"),
        "bits_stored": read(_int, "BitsStored"),
        "pixel_representation": read(_int, "PixelRepresentation"),
        "pixel_spacing_mm": read(_spacing, "PixelSpacing"),
        "imager_pixel_spacing_mm": read(_spacing, "ImagerPixelSpacing"),
        "transfer_syntax_uid": transfer_syntax_uid,
        "has_pixel_data": any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")),
    }


def open_instance(
    path: Path, transfer_syntax_uid: str | None = None, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[dict[str, Any], Dataset | None, np.ndarray | None]:
    """Read and decode one spool file; never raises for bad content.

    The declared size is checked before anything is decoded
    (:func:`node.processing.dimensions.size_problem`, ``max_image_pixels`` samples at most):
    a decoder allocates what the header declares, whatever the size of the data.

    Returns
    -------
    (inspection, dataset, pixels)
        ``inspection`` as :func:`inspect_dataset` plus ``decoded`` (bool), ``decode_seconds``,
        ``pixel_min``/``pixel_max`` when decoded and ``error`` (a short reason that quotes no
        header value, :func:`node.faults.explain`) when not; ``dataset`` is ``None`` when the
        file could not be read, ``pixels`` when it could not be decoded.
    """
    try:
        ds = read_spool_file(path, transfer_syntax_uid)
    except FileNotFoundError:
        return {"decoded": False, "error": "file missing from the spool"}, None, None
    except Exception as exc:  # corrupt or truncated: record it, never fail the study for it
        return {"decoded": False, "error": _reason("unreadable", exc)}, None, None
    inspection = inspect_dataset(ds)
    if inspection["sop_class_uid"] in COMPANION_SOP_CLASSES:
        # SEG/SR/KOS/GSPS stored with the study (e.g. the node's own outputs sent back): never
        # analysed, so not decoded; the analysis step records them as skipped.
        inspection.update(decoded=False, error="companion object (SEG/SR/KOS/GSPS), not decoded")
        return inspection, ds, None
    if not inspection["has_pixel_data"]:
        inspection.update(decoded=False, error="no pixel data")
        return inspection, ds, None
    size = ImageSize(
        rows=inspection["rows"],
        columns=inspection["columns"],
        frames=inspection["number_of_frames"],
        samples_per_pixel=inspection["samples_per_pixel"],
        bits_allocated=inspection["bits_allocated"],
    )
    problem = size_problem(size, max_image_pixels)
    if problem is not None:
        inspection.update(decoded=False, error=problem)
        return inspection, ds, None
    started = time.perf_counter()
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # any decoder failure is a property of this file
        inspection.update(decoded=False, error=_reason("pixel data not decodable", exc))
        return inspection, ds, None
    inspection["decode_seconds"] = round(time.perf_counter() - started, 4)
    expected = (inspection["rows"], inspection["columns"])
    if tuple(pixels.shape[-2:] if (inspection["samples_per_pixel"] or 1) == 1 else pixels.shape[-3:-1]) != expected:
        inspection.update(decoded=False, error=f"decoded shape {tuple(pixels.shape)} does not match Rows x Columns {expected}")
        return inspection, ds, None
    inspection.update(
        decoded=True,
        shape=list(pixels.shape),
        dtype=str(pixels.dtype),
        pixel_min=float(np.min(pixels)),
        pixel_max=float(np.max(pixels)),
    )
    return inspection, ds, pixels


def _reason(what: str, exc: Exception) -> str:
    """``what`` and an explanation of ``exc`` that quotes no header value (:func:`node.faults.explain`)."""
    return f"{what}: {explain(exc)}"[:DECODE_ERROR_MAX_CHARS]


def _instance_rows(claim: ClaimedJob, context: TaskContext) -> list[Any]:
    with context.database.session() as session:
        return list(
            session.execute(
                select(
                    Instance.id,
                    Instance.sop_instance_uid,
                    Instance.series_instance_uid,
                    Instance.sop_class_uid,
                    Instance.transfer_syntax_uid,
                    Instance.path,
                )
                .where(Instance.study_id == claim.study_id)
                .order_by(Instance.id)
            ).all()
        )


def open_study_instance(claim: ClaimedJob, row: Any, context: TaskContext) -> OpenedInstance:
    """Open and decode one instance of the claimed study; record its inspection in the database."""
    instance_id, sop_uid, series_uid, sop_class, ts_uid, rel_path = row
    path = Path(rel_path) if Path(rel_path).is_absolute() else context.settings.spool_dir / rel_path
    inspection, ds, pixels = open_instance(path, ts_uid, max_image_pixels=context.settings.max_image_pixels)
    inspection.setdefault("transfer_syntax_uid", ts_uid)
    inspection["job_id"] = claim.job_id
    with context.database.session() as session:
        session.get(Instance, instance_id).inspection = inspection  # type: ignore[union-attr]
    if pixels is None and inspection.get("sop_class_uid") not in COMPANION_SOP_CLASSES:
        log.warning("study %s instance %s not decoded: %s", claim.study_instance_uid, sop_uid, inspection.get("error"))
    return OpenedInstance(instance_id, sop_uid, series_uid, sop_class, path, inspection, ds, pixels)


def open_study_instances(claim: ClaimedJob, context: TaskContext) -> list[OpenedInstance]:
    """Open and decode every instance of the claimed study at once (a job itself opens one at a time)."""
    return [open_study_instance(claim, row, context) for row in _instance_rows(claim, context)]


class StageError(RuntimeError):
    """A stage of ``process_study`` failed for a reason outside the images (models, disk, database)."""

    def __init__(self, stage: str, cause: Exception) -> None:
        super().__init__(f"stage {stage!r} failed: {type(cause).__name__}: {cause}")
        self.stage = stage


def run_study(
    claim: ClaimedJob, context: TaskContext, heartbeat: JobHeartbeat | None = None
) -> tuple[dict[str, Any], list[ImageRecord]]:
    """Open, decode and analyse the claimed study's images one at a time; return the summary and records.

    Only one decoded image is held at a time. Outputs are written to the output directory
    here; their rows are recorded by :func:`record_study`. With ``heartbeat``, the image and
    stage reached are recorded before each stage (the point a crash happened at).
    """
    started = time.perf_counter()
    policies = context.settings.policies_for(claim.calling_aet, claim.called_aet)
    records: list[ImageRecord] = []
    counts = {"instances": 0, "decoded": 0}
    not_decoded: list[str] = []
    views: set[str] = set()
    seconds = {"open": 0.0, "images": 0.0}
    rows = _instance_rows(claim, context)
    if heartbeat is not None:
        heartbeat.reached(STAGE_MODELS)
    try:
        bundle_for(context.settings)  # loaded once per process; a death here says nothing about the study
    except DATABASE_AWAY:
        raise
    except Exception as exc:
        raise StageError("models", exc) from exc
    for number, row in enumerate(rows, start=1):
        if heartbeat is not None:
            heartbeat.reached("open", number, len(rows))
        clock = time.perf_counter()
        opened = open_study_instance(claim, row, context)
        seconds["open"] += time.perf_counter() - clock
        counts["instances"] += 1
        counts["decoded"] += int(opened.decoded)
        if not opened.decoded:
            not_decoded.append(opened.sop_instance_uid)
        views.add(opened.inspection.get("view_position") or "")
        if heartbeat is not None:
            heartbeat.reached("analyse", number, len(rows))
        clock = time.perf_counter()
        try:
            records.extend(analyse_image(opened, policies, context.settings, context.builders))
        except DATABASE_AWAY:
            raise
        except Exception as exc:  # models, disk: not this image's fault; the job fails
            raise StageError("analysis", exc) from exc
        seconds["images"] += time.perf_counter() - clock
        del opened  # one decoded image at a time
    summary: dict[str, Any] = {
        "generation": claim.generation,
        **counts,
        "not_decoded": sorted(not_decoded),
        "view_positions": sorted(views - {""}),
        "policies": list(policies),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    summary["seconds"]["total"] = round(time.perf_counter() - started, 3)
    return summary, records


def record_study(claim: ClaimedJob, summary: dict[str, Any], records: list[ImageRecord], context: TaskContext) -> list[int] | None:
    """Commit results, outputs, deliveries and the job's ``done`` in one transaction; return the delivery ids.

    ``None`` when the job was taken over by another worker meanwhile: nothing is recorded.
    """
    destinations = destinations_for(context.settings, claim.calling_aet)
    with context.database.session() as session:
        output_ids = store_records(session, claim.job_id, records, context.settings.output_dir)
        delivery_ids = create_deliveries(session, output_ids, destinations)
        summary["steps"] = {STEP_NAME: analysis_summary(records, output_ids, destinations, delivery_ids)}
        if not close_job(session, claim, JobEvent.FINISHED, summary=summary):
            session.rollback()
            return None
    return delivery_ids


def process_study(job_id: int, *, context: TaskContext) -> dict[str, Any] | None:
    """Process the job ``job_id`` if it is claimable; return its summary, or ``None`` if not claimed.

    The way of one study, as plain calls: claim the job; open, decode and analyse each image
    and write its outputs (:func:`run_study`); record results, outputs, deliveries and the
    job's end in one transaction (:func:`record_study`); only then wake the deliveries.

    While it runs, the job's heartbeat is renewed (:class:`~node.tasks.heartbeat.JobHeartbeat`);
    a job interrupted before runs alone in this process (:class:`~node.tasks.isolation.IsolationGate`).

    Idempotent: a duplicate wake-up, or one for a job running or finished, returns ``None`` and
    changes nothing. Failures are recorded on the job (state ``failed``, ``error``) and logged;
    the function itself returns normally so that the transport acknowledges the wake-up. When
    the database goes away mid-job, the job is given back to the queue once it answers again
    (:func:`release_when_possible`) and the wake-up is sent again after a short delay: a
    database restart is not the study's failure.
    """
    # A job interrupted before runs alone; it waits for the gate before it is claimed, so that
    # a job waiting here is not `running` beside the others if the process dies meanwhile.
    with context.isolation.hold(exclusive=was_interrupted(context.database, job_id)):
        claim = claim_job(context.database, job_id, worker=context.worker_name())
        if claim is None:
            return None
        outcome = _run_claimed(claim, context)
    if outcome is None or "error" in outcome:
        return outcome
    summary, delivery_ids = outcome["summary"], outcome["delivery_ids"]
    if delivery_ids:
        try:
            wakeups = enqueue_deliveries(context.dispatcher, group_by_destination(context.database, delivery_ids))
        except Exception as exc:  # the broker away: the deliveries are recorded, the delivery sweep sends them
            log.warning(
                "job %d done but its %d deliveries could not be woken (%s); the delivery sweep sends them",
                job_id,
                len(delivery_ids),
                type(exc).__name__,
            )
            wakeups = 0
        summary["steps"][STEP_NAME]["delivery_wakeups"] = wakeups
    log.info(
        "job %d done: study %s, %d instance(s), %d decoded, %d deliveries",
        job_id,
        claim.study_instance_uid,
        summary["instances"],
        summary["decoded"],
        len(delivery_ids),
    )
    return summary


def _run_claimed(claim: ClaimedJob, context: TaskContext) -> dict[str, Any] | None:
    """Run and record the claimed job inside its heartbeat; the outcome, or None if it is no longer ours."""
    job_id = claim.job_id
    with JobHeartbeat(context.database, job_id, claim.attempt, every_seconds=context.settings.job_heartbeat_seconds) as heartbeat:
        try:
            summary, records = run_study(claim, context, heartbeat)
            heartbeat.reached("record")
            delivery_ids = record_study(claim, summary, records, context)
        except DATABASE_AWAY as exc:
            log.warning("job %d (study %s): the database went away (%s)", job_id, claim.study_instance_uid, type(exc).__name__)
            if release_when_possible(context, claim, f"the database went away ({type(exc).__name__})"):
                _wake_again(context, job_id, wake_again_seconds(claim.attempt))
            return {"job_id": job_id, "state": "released", "error": f"database unavailable: {type(exc).__name__}"}
        except Exception as exc:
            log.exception("job %d (study %s) failed", job_id, claim.study_instance_uid)
            error = str(exc) if isinstance(exc, StageError) else f"{type(exc).__name__}: {exc}"
            fail_job(context.database, claim, error)
            return {"job_id": job_id, "state": "failed", "error": error}
    if delivery_ids is None:
        return None
    return {"summary": summary, "delivery_ids": delivery_ids}


#: Seconds :func:`release_when_possible` keeps trying.
RELEASE_PATIENCE_SECONDS = 60.0
#: The wake-up after a release comes after 2, 4, 8 ... seconds (by attempt), at most this long.
WAKE_AGAIN_MAX_SECONDS = 300.0


def wake_again_seconds(attempt: int) -> float:
    """Delay of the wake-up after the ``attempt``-th attempt was released: doubling, capped.

    A database that stays unwritable (a full disk) must not turn into a loop of attempts.
    """
    return min(2.0 ** max(attempt, 1), WAKE_AGAIN_MAX_SECONDS)


def release_when_possible(context: TaskContext, claim: ClaimedJob, reason: str) -> bool:
    """Give the job back to the queue, retrying while the database is away; False if it never answered.

    Called inside the job's heartbeat, so the sweep does not take the job for a dead worker's
    while this waits. If the database stays away longer than :data:`RELEASE_PATIENCE_SECONDS`,
    the heartbeat stops with this attempt and the sweep queues the job again later.
    """
    deadline = time.monotonic() + RELEASE_PATIENCE_SECONDS
    delay = 0.5
    while True:
        try:
            return release_job(context.database, claim, reason)
        except DATABASE_AWAY:
            if time.monotonic() + delay > deadline:
                log.error("job %d: the database did not answer for %.0f s; the sweep will queue it again", claim.job_id, RELEASE_PATIENCE_SECONDS)
                return False
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _wake_again(context: TaskContext, job_id: int, countdown: float) -> None:
    try:
        context.dispatcher.enqueue(TASK_PROCESS_STUDY, job_id, countdown=countdown)
    except Exception as exc:  # broker away or node stopping: the job is queued in the database for the sweeps
        log.warning("job %d: wake-up not sent again (%s); the sweep wakes it", job_id, type(exc).__name__)
