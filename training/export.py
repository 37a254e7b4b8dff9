"""Turn a finished training run into a model-store version (manifest, weights, model card).

The training loops write their own files (:func:`training.segmenter.train_segmenter`: a plain
state dict; :func:`training.classifier.train_demo_classifier` and
:meth:`models.classifier.ChestClassifier.save`: ``weights.pt`` + ``classifier.json``). These
functions write them into a store root with :func:`models.store.write_version`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch

from models.labels import FINDINGS, LUNG_SIDES
from models.loading import CLASSIFIER_NORMALISATION, SEGMENTER_NORMALISATION
from models.segmenter import get_architecture
from models.store import ROLE_CLASSIFIER, ROLE_SEGMENTER, ModelVersion, data_fingerprint, write_version


def flatten_metrics(data: Any, prefix: str = "") -> dict[str, float]:
    """Nested metrics as ``{"a.b": number}``; ``None``, booleans and non-numbers are dropped."""
    out: dict[str, float] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            out.update(flatten_metrics(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(float(data)):
        out[prefix] = float(data)
    return out


def _fingerprint(training_data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    description = {k: v for k, v in training_data.items() if k != "fingerprint"}
    return str(training_data.get("fingerprint") or data_fingerprint(description)), description


def export_segmenter(
    root: Path,
    weights: Path,
    *,
    architecture: str,
    name: str,
    version: str,
    metrics: Mapping[str, Any],
    training_data: Mapping[str, Any],
    intended_use: str,
    clinical_use: bool = False,
    created_at: str | None = None,
    float_dtype: torch.dtype | None = None,
) -> ModelVersion:
    """Write a trained segmenter (a plain state dict file of ``architecture``) as a store version.

    ``metrics`` (e.g. held-out Dice per lung) are flattened to numbers; ``training_data`` describes
    the data (a ``fingerprint`` key is used as is, otherwise one is computed from the description).
    ``float_dtype`` as in :func:`models.store.write_version`.
    """
    size = get_architecture(architecture).image_size
    fingerprint, description = _fingerprint(training_data)
    return write_version(
        root,
        role=ROLE_SEGMENTER,
        name=name,
        version=version,
        architecture=architecture,
        weights=torch.load(Path(weights), map_location="cpu", weights_only=True),
        input_size=(size, size),
        channels=3,
        normalisation=SEGMENTER_NORMALISATION,
        labels=LUNG_SIDES,
        metrics=flatten_metrics(metrics),
        intended_use=intended_use,
        training_data_description=json.dumps(description, sort_keys=True),
        training_data_fingerprint=fingerprint,
        clinical_use=clinical_use,
        created_at=created_at,
        float_dtype=float_dtype,
    )


def export_classifier(
    root: Path,
    folder: Path,
    *,
    name: str,
    version: str,
    intended_use: str,
    clinical_use: bool = False,
    created_at: str | None = None,
    float_dtype: torch.dtype | None = None,
) -> ModelVersion:
    """Write the classifier saved in ``folder`` (``weights.pt``, ``classifier.json``) as a store version.

    Architecture, input size, mean/std, labels, policy and thresholds come from ``classifier.json``
    (the :class:`models.classifier.ClassifierConfig` fields); ``metrics`` and ``training_data`` from
    its extra keys when present.
    """
    folder = Path(folder)
    meta = json.loads((folder / "classifier.json").read_text())
    fingerprint, description = _fingerprint(meta.get("training_data", {"source": str(folder)}))
    labels = list(meta.get("labels", FINDINGS))
    return write_version(
        root,
        role=ROLE_CLASSIFIER,
        name=name,
        version=version,
        architecture=str(meta["architecture"]),
        parameters={"mean": float(meta["mean"]), "std": float(meta["std"])},
        weights=torch.load(folder / "weights.pt", map_location="cpu", weights_only=True),
        input_size=(int(meta["input_size"]), int(meta["input_size"])),
        channels=1,
        normalisation=CLASSIFIER_NORMALISATION,
        labels=labels,
        policy=str(meta["policy"]),
        thresholds={k: float(meta["thresholds"][k]) for k in labels},
        metrics=flatten_metrics(meta.get("metrics", {})),
        intended_use=intended_use,
        training_data_description=json.dumps(description, sort_keys=True),
        training_data_fingerprint=fingerprint,
        clinical_use=clinical_use,
        created_at=created_at,
        float_dtype=float_dtype,
    )
