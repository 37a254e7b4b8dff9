"""Output builders: the ordered list of DICOM objects a job writes into the study for each image.

Each builder says what it needs (:meth:`OutputBuilder.skip_reason`), what it writes
(:meth:`OutputBuilder.build`), and which SOP Class and transfer syntaxes it sends. An
image-scoped builder (``per_policy = False``) runs once per image on the first policy's
analysis; a policy-scoped one once per image and mask policy. Image-scoped builders run
before policy-scoped ones, each group in list order, and a later builder sees what the
earlier ones built for the same image (the SR references the SEG). A new output kind is one
:class:`OutputBuilder` subclass and one entry in :data:`DEFAULT_BUILDERS`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from models.analysis import classifier_skipped
from models.result import AnalysisResult
from node.constants import COMPREHENSIVE_3D_SR, SEGMENTATION, OutputKind
from node.outputs.seg import build_lung_segmentation
from node.outputs.sr import build_measurement_report


@dataclass(frozen=True)
class BuildInput:
    """What a builder gets for one image (and, when policy-scoped, one policy).

    ``built`` maps the kind of every object already built for this image to its dataset.
    """

    source: Dataset
    analysis: AnalysisResult
    built: Mapping[str, Dataset]


class OutputBuilder(abc.ABC):
    """One kind of output object (see the module docstring)."""

    #: Short name recorded in ``output_objects.kind`` (at most 8 characters).
    kind: ClassVar[str]
    #: The SOP Class of what it builds.
    sop_class_uid: ClassVar[str]
    #: Transfer syntaxes it can be sent in, preferred first.
    transfer_syntaxes: ClassVar[tuple[str, ...]]
    #: False: once per image (first policy's analysis); True: once per image and policy.
    per_policy: ClassVar[bool]

    def skip_reason(self, given: BuildInput) -> str | None:
        """Why this object is not built for ``given`` (what it needs is missing), or None to build it."""
        return None

    @abc.abstractmethod
    def build(self, given: BuildInput) -> Dataset:
        """Build the object; ``ValueError`` when the source or the analysis cannot make a valid one."""


class LungSegmentationBuilder(OutputBuilder):
    """The lung SEG (:func:`node.outputs.seg.build_lung_segmentation`); needs a plausible segmentation."""

    kind = OutputKind.SEG.value
    sop_class_uid = SEGMENTATION
    transfer_syntaxes = (JPEG2000Lossless,)
    per_policy = False

    def skip_reason(self, given: BuildInput) -> str | None:
        segmentation = given.analysis.segmentation
        return None if segmentation.ok else f"lung segmentation failed ({segmentation.failure_reason})"

    def build(self, given: BuildInput) -> Dataset:
        return build_lung_segmentation(given.source, given.analysis)


class MeasurementReportBuilder(OutputBuilder):
    """The TID 1500 SR (:func:`node.outputs.sr.build_measurement_report`); needs the classifier's result."""

    kind = OutputKind.SR.value
    sop_class_uid = COMPREHENSIVE_3D_SR
    transfer_syntaxes = (ExplicitVRLittleEndian,)
    per_policy = True

    def skip_reason(self, given: BuildInput) -> str | None:
        return "the classifier was not run" if classifier_skipped(given.analysis) else None

    def build(self, given: BuildInput) -> Dataset:
        return build_measurement_report(given.source, given.built.get(OutputKind.SEG.value), given.analysis)


#: What a job writes for each image, in order.
DEFAULT_BUILDERS: tuple[OutputBuilder, ...] = (LungSegmentationBuilder(), MeasurementReportBuilder())
