"""What :func:`models.analyze` returns: plain arrays and numbers, no DICOM.

The node turns these into a DICOM SEG (the masks) and a TID 1500 SR (the findings); the
field names here are what its builders read.

Coordinates: images are ``(H, W)`` arrays indexed ``[row, column]``; points and boxes are
``(x, y)`` = ``(column, row)`` in source-image pixels, the convention of DICOM SCOORD.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ModelVersionInfo:
    """Identity of one model version, as written into outputs and the database."""

    role: str  # "segmenter" or "classifier"
    name: str  # e.g. "medsam_vit_b", "demo_resnet18"
    version: str  # e.g. "2026.11.25-1"
    architecture: str  # e.g. "sam_vit_b", "resnet50"
    device_uid: str  # DICOM UID naming this exact version (IHE AIR Device UID)
    sha256: str  # of the weights file
    clinical_use: bool  # False for demo and research models; outputs then carry a warning
    policy: str | None = None  # for classifiers: the mask policy it was trained under

    @property
    def label(self) -> str:
        """``name version`` as shown to people."""
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class LungSegmentation:
    """Left and right lung masks of one radiograph, with their quality.

    ``left`` is the patient's left lung (on a PA image in standard orientation, the image's
    right-hand side).
    """

    left: np.ndarray  # (H, W) bool
    right: np.ndarray  # (H, W) bool
    quality: dict[str, float]  # {"left": q, "right": q}, predicted IoU in [0, 1]
    boxes: dict[str, tuple[float, float, float, float]]  # prompt boxes, xyxy in source pixels
    ok: bool = True
    failure_reason: str | None = None


@dataclass(frozen=True)
class FindingRegion:
    """Where a finding's evidence lies: an ellipse in source pixels (for the SR's SCOORD)."""

    center_xy: tuple[float, float]
    semi_axes_xy: tuple[float, float]  # half width, half height in pixels

    def ellipse_points(self) -> list[tuple[float, float]]:
        """The four DICOM ELLIPSE points: major axis end points, then minor axis end points."""
        cx, cy = self.center_xy
        ax, ay = self.semi_axes_xy
        horizontal = [(cx - ax, cy), (cx + ax, cy)]
        vertical = [(cx, cy - ay), (cx, cy + ay)]
        return horizontal + vertical if ax >= ay else vertical + horizontal


@dataclass(frozen=True)
class AnalysisResult:
    """Everything the ML core concluded about one radiograph under one mask policy."""

    policy: str
    segmentation: LungSegmentation
    probabilities: dict[str, float]  # finding -> probability in [0, 1], keys = models.labels.FINDINGS
    no_finding: float  # derived No Finding score in [0, 1]
    thresholds: dict[str, float]  # finding -> operating threshold stored with the classifier
    decisions: dict[str, bool]  # finding -> probability >= threshold
    regions: dict[str, FindingRegion]  # finding -> region, for findings above threshold
    segmenter: ModelVersionInfo
    classifier: ModelVersionInfo
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    @property
    def clinical_use(self) -> bool:
        """False when any model involved is not for clinical use (demo, research)."""
        return self.segmenter.clinical_use and self.classifier.clinical_use
