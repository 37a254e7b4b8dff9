"""From probabilities to scores and decisions: No Finding, thresholds, Youden's J.

No Finding
    ``P(no finding) = prod_k (1 - p_k)`` over the five findings: the probability that none of
    them is present if the classifier's outputs are treated as independent. It is 1 when every
    finding is surely absent and falls as soon as any one finding becomes likely.

Operating thresholds
    One per finding, chosen on validation data by Youden's J statistic (the ROC point that
    maximises sensitivity + specificity - 1) and stored with the model. A finding is "present"
    when its probability is at or above its threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from models.labels import FINDINGS

logger = logging.getLogger(__name__)

#: Threshold used for a label whose validation data hold only one class (no ROC to choose from).
FALLBACK_THRESHOLD = 0.5


def no_finding_score(probs: np.ndarray | Mapping[str, float]) -> np.ndarray | float:
    """Derived No Finding score ``prod_k (1 - p_k)``.

    Parameters
    ----------
    probs : (K,) or (B, K) array of finding probabilities in [0, 1], or a dict finding -> p.

    Returns
    -------
    float for a dict or a (K,) array; (B,) float array for a batch.
    """
    if isinstance(probs, Mapping):
        arr = np.asarray([float(probs[k]) for k in FINDINGS if k in probs], dtype=np.float64)
        if arr.size != len(FINDINGS):
            raise ValueError(f"No Finding needs a probability for each of {list(FINDINGS)}; got {sorted(probs)}")
        return float(np.prod(1.0 - arr))
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim not in (1, 2) or arr.shape[-1] != len(FINDINGS):
        raise ValueError(f"probabilities must be (K,) or (B, K) with K={len(FINDINGS)}; got {arr.shape}")
    if np.any((arr < 0) | (arr > 1)) or not np.all(np.isfinite(arr)):
        raise ValueError("probabilities must lie in [0, 1]")
    score = np.prod(1.0 - arr, axis=-1)
    return float(score) if arr.ndim == 1 else score.astype(np.float32)


def decide(probs: Mapping[str, float] | Sequence[float] | np.ndarray, thresholds: Mapping[str, float]) -> dict[str, bool]:
    """Per-finding decisions: ``probability >= threshold``.

    Parameters
    ----------
    probs : dict finding -> probability, or a (K,) sequence in :data:`~models.labels.FINDINGS` order.
    thresholds : dict finding -> threshold, one for every finding in ``probs``.
    """
    if not isinstance(probs, Mapping):
        values = np.asarray(probs, dtype=np.float64).reshape(-1)
        if values.size != len(FINDINGS):
            raise ValueError(f"expected {len(FINDINGS)} probabilities in the order {list(FINDINGS)}; got {values.size}")
        probs = dict(zip(FINDINGS, values.tolist()))
    missing = [k for k in probs if k not in thresholds]
    if missing:
        raise ValueError(f"no operating threshold for {missing}; thresholds are stored with the classifier")
    return {k: bool(float(p) >= float(thresholds[k])) for k, p in probs.items()}


def youden_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The threshold maximising Youden's J = TPR - FPR for one label.

    Parameters
    ----------
    y_true : (N,) {0, 1}
    y_score : (N,) scores (probabilities)

    Returns
    -------
    float: a score value; ``score >= threshold`` reproduces the chosen ROC point. Returns
    :data:`FALLBACK_THRESHOLD` when only one class is present.
    """
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true).astype(int).reshape(-1)
    y_score = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y_true.shape != y_score.shape:
        raise ValueError(f"labels and scores differ in length: {y_true.shape} vs {y_score.shape}")
    if len(np.unique(y_true)) < 2:
        logger.warning("only one class in validation labels; using threshold %.2f", FALLBACK_THRESHOLD)
        return FALLBACK_THRESHOLD
    fpr, tpr, thresholds = roc_curve(y_true, y_score)
    j = tpr - fpr
    best = int(np.argmax(j[1:]) + 1)  # index 0 is the "nothing positive" point (threshold inf)
    return float(min(thresholds[best], 1.0))


def select_thresholds(y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str] = FINDINGS) -> dict[str, float]:
    """Youden's J threshold per label.

    Parameters
    ----------
    y_true : (N, K) {0, 1}
    y_score : (N, K) probabilities
    labels : K names, column order
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    if y_true.ndim != 2 or y_true.shape != y_score.shape or y_true.shape[1] != len(labels):
        raise ValueError(f"need (N, {len(labels)}) labels and scores; got {y_true.shape} and {y_score.shape}")
    return {name: youden_threshold(y_true[:, k], y_score[:, k]) for k, name in enumerate(labels)}
