"""Inference-side ML on arrays: lung segmenter, mask policies, classifier, model store.

This package never imports pydicom, :mod:`node` or :mod:`training`. The node calls one entry
point, :func:`models.analyze`.
"""

from models.labels import FINDINGS, LUNG_SIDES, NO_FINDING
from models.result import AnalysisResult, FindingRegion, LungSegmentation, ModelVersionInfo

__all__ = [
    "FINDINGS",
    "LUNG_SIDES",
    "NO_FINDING",
    "AnalysisResult",
    "FindingRegion",
    "LungSegmentation",
    "ModelVersionInfo",
]
