"""Names shared across the node: states, queues, task names, file suffixes.

Defined once here and imported everywhere else, so that a state written by the listener
is spelled the same in the scanner, the worker, the CLI and the database.
"""

from __future__ import annotations

import enum


class StudyState(enum.StrEnum):
    """Where a study is in its way through the node (the database is the source of truth)."""

    RECEIVED = "received"  # instances arriving; the quiet-period timer runs
    QUEUED = "queued"  # complete; a job row exists and a wake-up was sent
    RUNNING = "running"  # a worker is processing the job
    DONE = "done"  # processed; outputs written (delivery may still be pending)
    DELIVERED = "delivered"  # every output reached every destination
    FAILED = "failed"  # processing or delivery gave up; the reason is on the job


class JobState(enum.StrEnum):
    """State of one processing job (one generation of a study)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


# Celery queues: one per kind of work (inference on GPU hosts, delivery, training).
QUEUE_INFERENCE = "inference"
QUEUE_DELIVERY = "delivery"
QUEUE_TRAINING = "training"

# Celery task names; stable strings so that workers and producers of different builds agree.
TASK_PROCESS_STUDY = "cxr_node.process_study"
TASK_DELIVER = "cxr_node.deliver"

# Spool layout.
SPOOL_DIRNAME = "spool"
OUTPUT_DIRNAME = "outputs"
DICOM_SUFFIX = ".dcm"
PARTIAL_SUFFIX = ".part"

# Mask policies (definitions in docs/mask-policies.md and models/policies.py).
MASK_POLICIES = ("original", "loose", "tight")


class ResultStatus(enum.StrEnum):
    """Outcome of one image under one mask policy in one job (``results.status``)."""

    OK = "ok"  # analysed; outputs built
    SKIPPED = "skipped"  # not a frontal chest radiograph (lateral, other body part, modality); reason recorded
    FAILED = "failed"  # analysis failed (e.g. implausible segmentation); reason recorded


class OutputKind(enum.StrEnum):
    """Kind of an output object written into the study."""

    SEG = "SEG"
    SR = "SR"


class DeliveryState(enum.StrEnum):
    """State of one output object towards one destination (``deliveries.state``)."""

    PENDING = "pending"  # waiting for its next attempt at ``next_attempt_at``
    DELIVERED = "delivered"  # the destination answered Success or a warning
    FAILED = "failed"  # attempts exhausted or refused for good; the reason is in ``last_error``


# Companion SOP Classes (PS3.4 B.5): non-image objects of a chest study that the listener
# accepts (node.scp.contexts) so that a PACS forwarding a whole study, the node's own SEG and
# SR included, is not refused; node.ingest records them without re-opening a processed study
# and the worker skips them.
#: PS3.4 B.5: Segmentation Storage (the node's own lung SEG, among others).
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
#: PS3.4 B.5: Basic Text SR Storage.
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
#: PS3.4 B.5: Enhanced SR Storage.
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
#: PS3.4 B.5: Comprehensive SR Storage.
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
#: PS3.4 B.5: Comprehensive 3D SR Storage (the node's own measurement reports).
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
#: PS3.4 B.5: Key Object Selection Document Storage.
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
#: PS3.4 B.5: Grayscale Softcopy Presentation State Storage.
GRAYSCALE_SOFTCOPY_PRESENTATION_STATE = "1.2.840.10008.5.1.4.1.1.11.1"

#: Non-image objects of a chest study, accepted so that a whole-study transfer succeeds;
#: stored and recorded, never analysed, and they never re-open a processed study.
COMPANION_SOP_CLASSES: tuple[str, ...] = (
    SEGMENTATION,
    BASIC_TEXT_SR,
    ENHANCED_SR,
    COMPREHENSIVE_SR,
    COMPREHENSIVE_3D_SR,
    KEY_OBJECT_SELECTION,
    GRAYSCALE_SOFTCOPY_PRESENTATION_STATE,
)
#: SOP Classes whose data sets need no Pixel Data (the listener answers 0xA900 for the others).
NO_PIXEL_DATA_SOP_CLASSES: frozenset[str] = frozenset(set(COMPANION_SOP_CLASSES) - {SEGMENTATION})

#: Manufacturer (0008,0070) of the node's own output objects (node.outputs SEG and SR).
NODE_MANUFACTURER = "cxr-node"
