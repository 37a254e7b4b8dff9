"""Realistic :class:`models.result.AnalysisResult` objects for tests of the output side.

The masks are a phantom's ground truth (``training.phantoms``: patient's left lung on the
image's right-hand side as in a PA view), the probabilities follow its true labels with
seeded noise, and the regions of findings above threshold are its lesions, so SEG and SR
builders get what :func:`models.analyze` would hand them without running a model.

Example::

    phantom = phantom_radiograph(256, seed=3, findings=["Mass"])
    analysis = make_analysis(phantom, policy="loose", clinical_use=False)
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

from models.labels import FINDINGS
from models.result import AnalysisResult, FindingRegion, LungSegmentation, ModelVersionInfo
from training.phantoms import Phantom, generate_phantom

_DEFAULT_THRESHOLDS = {"Mass": 0.5, "Nodule": 0.45, "Pneumonia": 0.4, "Edema": 0.55, "Fibrosis": 0.6}


def phantom_radiograph(size: int = 256, *, seed: int = 0, findings: Iterable[str] | None = None) -> Phantom:
    """A phantom chest radiograph (H4's generator): ``image`` ``(H, W) float32`` spanning
    ``[0, 1]``, ``left_lung``/``right_lung`` ``(H, W) bool``, its lesions and pixel spacing."""
    return generate_phantom(size, seed=seed, findings=findings)


def model_version(
    role: str,
    *,
    clinical_use: bool = False,
    version: str = "2026.11.25-1",
    policy: str | None = None,
) -> ModelVersionInfo:
    """A model version; its Device UID and sha256 change with ``role`` and ``version``."""
    name = "demo_sam_tiny" if role == "segmenter" else "demo_resnet18"
    digest = hashlib.sha256(f"{role}:{version}:{clinical_use}".encode()).hexdigest()
    return ModelVersionInfo(
        role=role,
        name=name if not clinical_use else name.replace("demo_", "clinical_"),
        version=version,
        architecture="sam_vit_tiny" if role == "segmenter" else "resnet18",
        device_uid=f"2.25.{int(digest[:32], 16)}",
        sha256=digest,
        clinical_use=clinical_use,
        policy=policy,
    )


def make_analysis(
    radiograph: Phantom,
    *,
    policy: str = "loose",
    seed: int = 0,
    probabilities: dict[str, float] | None = None,
    clinical_use: bool = False,
    segmenter_version: str = "2026.11.25-1",
    classifier_version: str = "2026.11.25-1",
) -> AnalysisResult:
    """An analysis of ``radiograph`` as the ML core would return it.

    Probabilities follow the phantom's true labels (present: 0.6-0.98, absent: 0.01-0.3,
    drawn from ``seed``) unless given. Regions of findings above threshold are the phantom's
    lesion circles where it has one, else an ellipse inside a lung.
    """
    rng = np.random.default_rng(seed)
    if probabilities is None:
        probabilities = {
            label: float(rng.uniform(0.6, 0.98) if radiograph.labels[label] else rng.uniform(0.01, 0.3))
            for label in FINDINGS
        }
    decisions = {label: probabilities[label] >= _DEFAULT_THRESHOLDS[label] for label in FINDINGS}
    no_finding = float(np.prod([1.0 - probabilities[label] for label in FINDINGS]))

    regions = {}
    lungs = (radiograph.left_lung, radiograph.right_lung)
    lesions = {lesion.kind: lesion for lesion in radiograph.lesions if lesion.radius_px}
    for index, label in enumerate(FINDINGS):
        if not decisions[label]:
            continue
        if label in lesions:
            lesion = lesions[label]
            radius = float(lesion.radius_px)
            regions[label] = FindingRegion(center_xy=tuple(map(float, lesion.center_xy)), semi_axes_xy=(radius, radius))
            continue
        rows, cols = np.nonzero(lungs[index % 2])
        pick = rng.integers(len(rows))
        regions[label] = FindingRegion(
            center_xy=(float(cols[pick]), float(rows[pick])),
            semi_axes_xy=(float(rng.uniform(4, 12)), float(rng.uniform(3, 10))),
        )

    segmentation = LungSegmentation(
        left=radiograph.left_lung.copy(),
        right=radiograph.right_lung.copy(),
        quality={"left": 0.93, "right": 0.95},
        boxes={side: _box(mask) for side, mask in (("left", radiograph.left_lung), ("right", radiograph.right_lung))},
    )
    return AnalysisResult(
        policy=policy,
        segmentation=segmentation,
        probabilities=probabilities,
        no_finding=no_finding,
        thresholds=dict(_DEFAULT_THRESHOLDS),
        decisions=decisions,
        regions=regions,
        segmenter=model_version("segmenter", clinical_use=clinical_use, version=segmenter_version),
        classifier=model_version("classifier", clinical_use=clinical_use, version=classifier_version, policy=policy),
        timings={"preprocess": 0.01, "segment": 0.05, "classify": 0.02},
    )


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(mask)
    return float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)
