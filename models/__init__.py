"""Inference-side ML on arrays: lung segmenter, mask policies, classifier, model store.

This package never imports pydicom, :mod:`node` or :mod:`training`. The node calls one entry
point, :func:`models.analyze`.
"""

from typing import Any

from models.labels import FINDINGS, LUNG_SIDES, NO_FINDING
from models.result import AnalysisResult, FindingRegion, LungSegmentation, ModelVersionInfo

# The entry points load torch and segment-anything: imported on first use (PEP 562), so that
# ``import models`` stays light for code that only needs the result contract.
_LAZY = {
    "analyze": "models.analysis",
    "analyze_policies": "models.analysis",
    "ModelBundle": "models.loading",
    "load_models": "models.loading",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = [
    "FINDINGS",
    "LUNG_SIDES",
    "NO_FINDING",
    "analyze",
    "analyze_policies",
    "load_models",
    "AnalysisResult",
    "ModelBundle",
    "FindingRegion",
    "LungSegmentation",
    "ModelVersionInfo",
]
