"""Evaluation: AUROC with bootstrap confidence intervals, lung Dice, ROC curves, JSON reports.

- :func:`auroc`: one label's AUROC, the single place ``sklearn.metrics.roc_auc_score`` is called;
  :func:`classification_metrics`: per-label, macro and No Finding AUROC without intervals (cheap
  enough for every validation epoch of a training loop).
- :func:`auroc_ci`: one label's AUROC (:func:`auroc`) with a seeded
  percentile bootstrap interval (images resampled with replacement; resamples that hold a single
  class are skipped and counted).
- :func:`classification_report`: per-label AUROC with intervals, the macro AUROC (mean over the
  labels that have both classes) with its own interval from the same resamples, and the No
  Finding AUROC of the derived score (:func:`models.classifier.scoring.no_finding_score`,
  ``prod_k (1 - p_k)``, unless scores are given).
- :func:`dice`, :func:`lung_dice`, :func:`segmentation_report`: Dice per lung.
- :func:`plot_roc_curves`: ROC curves as a PNG (matplotlib's Agg canvas, no pyplot state).
- :func:`write_report`: the report as JSON (NaN and infinities written as ``null``).

A label whose ground truth holds a single class has no AUROC: its entry says ``null`` with the
reason, and the macro mean leaves it out (naming it), instead of failing the whole evaluation.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from models.labels import FINDINGS, NO_FINDING

logger = logging.getLogger(__name__)

#: Bootstrap defaults.
DEFAULT_BOOTSTRAP = 1000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0

#: Most cells (resamples x distinct scores) handled at once in the bootstrap (memory bound).
_BOOTSTRAP_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class AurocEstimate:
    """AUROC of one label with its bootstrap interval.

    ``auroc``, ``ci_low`` and ``ci_high`` are ``None`` when undefined; ``reason`` then says why.
    ``n_bootstrap`` counts the resamples that held both classes (those the interval uses).
    """

    auroc: float | None
    ci_low: float | None
    ci_high: float | None
    n_positive: int
    n_negative: int
    n_bootstrap: int
    confidence: float
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_binary(y_true: np.ndarray, name: str = "y_true") -> np.ndarray:
    arr = np.asarray(y_true)
    if arr.dtype == bool:
        return arr.astype(np.int8)
    if not np.all(np.isin(arr, (0, 1))):
        raise ValueError(f"{name} must hold only 0/1 (or booleans); got values {np.unique(arr)[:5].tolist()}")
    return arr.astype(np.int8)


def _check_scores(y_score: np.ndarray, name: str = "y_score") -> np.ndarray:
    arr = np.asarray(y_score, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite numbers; found NaN or infinity")
    return arr


def _single_class_reason(n_pos: int, n_neg: int) -> str | None:
    if n_pos == 0 and n_neg == 0:
        return "no cases"
    if n_pos == 0:
        return f"only negative cases (0 positives among {n_neg}): AUROC is undefined"
    if n_neg == 0:
        return f"only positive cases (0 negatives among {n_pos}): AUROC is undefined"
    return None


def auroc(y_true: Sequence[int] | np.ndarray, y_score: Sequence[float] | np.ndarray) -> float | None:
    """ROC AUC of one label (ties count one half); ``None`` where the truth holds a single class.

    Parameters
    ----------
    y_true : ``(N,)`` 0/1 (or bool) ground truth
    y_score : ``(N,)`` finite scores, higher = more likely positive
    """
    y = _check_binary(np.ravel(y_true))
    s = _check_scores(np.ravel(y_score))
    if y.shape != s.shape:
        raise ValueError(f"y_true and y_score must have the same length; got {y.shape[0]} and {s.shape[0]}")
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, s))


def classification_metrics(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, Any]:
    """Per-label AUROC, their macro mean, and the No Finding AUROC of the derived score; no intervals.

    The training loops measure every validation epoch and the held-out test set with this; the
    keys are the ones model manifests carry (``test.macro_auroc``, ``test.auroc.Mass``, ...).

    Parameters
    ----------
    y_true : ``(N, K)`` {0, 1}, K = len(FINDINGS), columns in FINDINGS order
    y_score : ``(N, K)`` probabilities in [0, 1]

    Returns
    -------
    dict with ``auroc`` (label -> AUROC or ``None`` for a single-class label), ``macro_auroc``
    (mean over the defined labels, or ``None``), ``no_finding_auroc`` (of
    :func:`models.classifier.scoring.no_finding_score`, or ``None``), ``count``, ``positives``
    (label -> positives) and the No Finding count under its label name.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    per_label = {name: auroc(y_true[:, k], y_score[:, k]) for k, name in enumerate(FINDINGS)}
    defined = [v for v in per_label.values() if v is not None]
    normal = (y_true.sum(axis=1) == 0).astype(int)
    return {
        "auroc": per_label,
        "macro_auroc": float(np.mean(defined)) if defined else None,
        "no_finding_auroc": auroc(normal, _default_no_finding_scores(y_score)),
        "count": int(len(y_true)),
        "positives": {name: int(y_true[:, k].sum()) for k, name in enumerate(FINDINGS)},
        NO_FINDING: int(normal.sum()),
    }


def bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """``(n_bootstrap, n)`` int indices drawn with replacement from a seeded generator."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_bootstrap, n))


def bootstrap_aurocs(y: np.ndarray, s: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """AUROC of each resample ``indices[b]`` of ``(y, s)``; NaN where a resample has one class.

    ``y`` ``(N,)`` 0/1, ``s`` ``(N,)`` scores, ``indices`` ``(B, N)``. Equal to
    ``roc_auc_score(y[indices[b]], s[indices[b]])`` (ties count one half), computed from each
    resample's multiplicities over the sorted distinct scores in O(B * N), without sorting per
    resample.
    """
    y = np.asarray(y).astype(bool)
    n_boot, n = indices.shape
    out = np.full(n_boot, np.nan)
    if n_boot == 0 or n == 0:
        return out
    _, inverse = np.unique(s, return_inverse=True)
    n_unique = int(inverse.max()) + 1
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // max(n, n_unique))
    for start in range(0, n_boot, chunk):
        idx = indices[start : start + chunk]
        b = idx.shape[0]
        offsets = (np.arange(b) * n_unique)[:, None]
        cells = (inverse[idx] + offsets).ravel()
        positive = y[idx].ravel()
        pos = np.bincount(cells[positive], minlength=b * n_unique).reshape(b, n_unique).astype(np.float64)
        neg = np.bincount(cells[~positive], minlength=b * n_unique).reshape(b, n_unique).astype(np.float64)
        below = np.cumsum(neg, axis=1) - neg
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        auc[(n_pos == 0) | (n_neg == 0)] = np.nan
        out[start : start + chunk] = auc
    return out


def _interval(samples: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    ok = samples[np.isfinite(samples)]
    if ok.size == 0:
        return None, None
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(ok, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)


def _validate_bootstrap(n_bootstrap: int, confidence: float) -> None:
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0; got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1; got {confidence}")


def auroc_ci(
    y_true: Sequence[int] | np.ndarray,
    y_score: Sequence[float] | np.ndarray,
    *,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
    indices: np.ndarray | None = None,
) -> AurocEstimate:
    """AUROC of one label with a percentile bootstrap confidence interval.

    Parameters
    ----------
    y_true: ``(N,)`` 0/1 (or bool) ground truth
    y_score: ``(N,)`` scores, higher = more likely positive
    n_bootstrap: resamples (0: no interval)
    confidence: interval coverage, e.g. 0.95 for the 2.5th..97.5th percentiles
    seed: seed of the resampling (same seed, same interval)
    indices: ``(B, N)`` resample indices to use instead of drawing them (shared across labels)
    """
    _validate_bootstrap(n_bootstrap, confidence)
    return _auroc_and_resamples(y_true, y_score, n_bootstrap, confidence, seed, indices)[0]


def _auroc_and_resamples(
    y_true: Any, y_score: Any, n_bootstrap: int, confidence: float, seed: int, indices: np.ndarray | None
) -> tuple[AurocEstimate, np.ndarray]:
    """The estimate and the ``(B,)`` bootstrap AUROCs behind it (NaN where single-class)."""
    y = _check_binary(np.ravel(y_true))
    s = _check_scores(np.ravel(y_score))
    if y.shape != s.shape:
        raise ValueError(f"y_true and y_score must have the same length; got {y.shape[0]} and {s.shape[0]}")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    reason = _single_class_reason(n_pos, n_neg)
    if reason is not None:
        return AurocEstimate(None, None, None, n_pos, n_neg, 0, confidence, reason), np.zeros(0)
    auc = auroc(y, s)
    if indices is None:
        indices = bootstrap_indices(y.size, n_bootstrap, seed) if n_bootstrap else np.zeros((0, y.size), int)
    boots = bootstrap_aurocs(y, s, indices)
    low, high = _interval(boots, confidence)
    used = int(np.isfinite(boots).sum())
    return AurocEstimate(auc, low, high, n_pos, n_neg, used, confidence, None), boots


def _default_no_finding_scores(y_score: np.ndarray) -> np.ndarray:
    from models.classifier.scoring import no_finding_score

    return np.asarray(no_finding_score(np.clip(y_score, 0.0, 1.0)), dtype=np.float64)


def classification_report(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    labels: Sequence[str] = FINDINGS,
    no_finding_scores: np.ndarray | None = None,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Per-label AUROC with intervals, macro AUROC, No Finding AUROC.

    Parameters
    ----------
    y_true: ``(N, K)`` 0/1 ground truth, columns in ``labels`` order
    y_score: ``(N, K)`` probabilities
    labels: the K label names (default :data:`FINDINGS`)
    no_finding_scores: ``(N,)`` No Finding scores; default ``prod_k (1 - p_k)`` of ``y_score``
        (requires K = len(FINDINGS))

    Returns
    -------
    dict with ``"labels"`` (name -> :meth:`AurocEstimate.to_dict`), ``"macro_auroc"``
    (``{"auroc", "ci_low", "ci_high", "labels", "excluded"}``), ``"no_finding"`` (an
    :class:`AurocEstimate` dict; positive = no finding present), ``"n_images"``,
    ``"prevalence"`` (name -> positives) and ``"bootstrap"`` (resamples, confidence, seed).
    All labels share the same resamples, so the macro interval is coherent.
    """
    _validate_bootstrap(n_bootstrap, confidence)
    yt = _check_binary(np.asarray(y_true))
    ys = _check_scores(np.asarray(y_score))
    if yt.ndim != 2 or yt.shape != ys.shape or yt.shape[1] != len(labels):
        raise ValueError(
            f"y_true and y_score must both be (N, {len(labels)}) for labels {list(labels)}; "
            f"got {yt.shape} and {ys.shape}"
        )
    n = yt.shape[0]
    indices = bootstrap_indices(n, n_bootstrap, seed) if n_bootstrap and n else np.zeros((0, n), int)
    per_label: dict[str, AurocEstimate] = {}
    boots: dict[str, np.ndarray] = {}
    for k, name in enumerate(labels):
        per_label[name], resampled = _auroc_and_resamples(yt[:, k], ys[:, k], n_bootstrap, confidence, seed, indices)
        if per_label[name].auroc is not None and len(indices):
            boots[name] = resampled

    defined = [name for name in labels if per_label[name].auroc is not None]
    excluded = {name: per_label[name].reason for name in labels if per_label[name].auroc is None}
    macro: dict[str, Any] = {"auroc": None, "ci_low": None, "ci_high": None, "labels": defined, "excluded": excluded}
    if defined:
        macro["auroc"] = float(np.mean([per_label[name].auroc for name in defined]))
        if boots:
            stacked = np.stack([boots[name] for name in defined])
            complete = np.all(np.isfinite(stacked), axis=0)
            macro["ci_low"], macro["ci_high"] = _interval(stacked[:, complete].mean(axis=0), confidence)
            macro["n_bootstrap"] = int(complete.sum())
    else:
        macro["reason"] = "no label has both classes"

    if no_finding_scores is None:
        if tuple(labels) != tuple(FINDINGS):
            raise ValueError(f"pass no_finding_scores when the labels are not {list(FINDINGS)}")
        nf_scores = _default_no_finding_scores(ys)
        nf_source = "prod_k (1 - p_k) (models.classifier.scoring.no_finding_score)"
    else:
        nf_scores = _check_scores(np.ravel(no_finding_scores), "no_finding_scores")
        if nf_scores.shape != (n,):
            raise ValueError(f"no_finding_scores must be ({n},); got {nf_scores.shape}")
        nf_source = "given"
    normal = (yt.sum(axis=1) == 0).astype(np.int8)
    nf = auroc_ci(normal, nf_scores, n_bootstrap=n_bootstrap, confidence=confidence, indices=indices)
    return {
        "labels": {name: est.to_dict() for name, est in per_label.items()},
        "macro_auroc": macro,
        "no_finding": {**nf.to_dict(), "score": nf_source, "label": NO_FINDING},
        "n_images": int(n),
        "prevalence": {name: int(yt[:, k].sum()) for k, name in enumerate(labels)} | {NO_FINDING: int(normal.sum())},
        "bootstrap": {"resamples": int(n_bootstrap), "confidence": confidence, "seed": seed, "method": "percentile"},
    }


# ----------------------------------------------------------------------------------------------
# segmentation


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient ``2 |A & B| / (|A| + |B|)`` of two ``(H, W)`` masks (bool or 0/1).

    Both empty gives 1.0 (perfect agreement that nothing is there).
    """
    a = np.asarray(pred).astype(bool)
    b = np.asarray(target).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape to compare; got {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def lung_dice(
    pred_left: np.ndarray, pred_right: np.ndarray, true_left: np.ndarray, true_right: np.ndarray
) -> dict[str, float]:
    """Dice per lung (the patient's left and right) and their mean."""
    left = dice(pred_left, true_left)
    right = dice(pred_right, true_right)
    return {"left": left, "right": right, "mean": (left + right) / 2.0}


def _summary(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"n": 0, "mean": None, "median": None, "min": None, "max": None, "std": None}
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "std": float(arr.std()),
    }


def segmentation_report(
    cases: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    *,
    names: Sequence[str] | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Lung Dice over many images.

    ``cases`` yields ``(pred_left, pred_right, true_left, true_right)`` ``(H, W)`` masks per image.
    Returns ``{"left": summary, "right": summary, "mean": summary, "per_image": [...]}`` where a
    summary has ``n, mean, median, min, max, std``; with ``threshold``, also
    ``"below_threshold"``: the images whose Dice of either lung is under it.
    """
    per_image = []
    for i, (pl, pr, tl, tr) in enumerate(cases):
        scores = lung_dice(pl, pr, tl, tr)
        per_image.append({"name": names[i] if names is not None else str(i), **scores})
    report: dict[str, Any] = {
        side: _summary([row[side] for row in per_image]) for side in ("left", "right", "mean")
    }
    report["per_image"] = per_image
    if threshold is not None:
        report["threshold"] = threshold
        report["below_threshold"] = [row["name"] for row in per_image if min(row["left"], row["right"]) < threshold]
    return report


# ----------------------------------------------------------------------------------------------
# outputs


def plot_roc_curves(
    y_true: np.ndarray,
    y_score: np.ndarray,
    path: str | Path,
    *,
    labels: Sequence[str] = FINDINGS,
    report: Mapping[str, Any] | None = None,
    no_finding_scores: np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """Draw one ROC curve per label (and No Finding) into a PNG; return its path.

    ``y_true``/``y_score`` as in :func:`classification_report`. Labels with a single class are
    listed in the legend as undefined instead of drawn. ``report`` (from
    :func:`classification_report`) puts the AUROC and its interval in the legend. No Finding is
    drawn when the labels are :data:`FINDINGS` or ``no_finding_scores`` are given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    yt = _check_binary(np.asarray(y_true))
    ys = _check_scores(np.asarray(y_score))
    if yt.ndim != 2 or yt.shape != ys.shape or yt.shape[1] != len(labels):
        raise ValueError(f"y_true and y_score must both be (N, {len(labels)}); got {yt.shape} and {ys.shape}")
    curves: list[tuple[str, np.ndarray, np.ndarray]] = [(name, yt[:, k], ys[:, k]) for k, name in enumerate(labels)]
    if no_finding_scores is not None or tuple(labels) == tuple(FINDINGS):
        nf = _default_no_finding_scores(ys) if no_finding_scores is None else _check_scores(np.ravel(no_finding_scores))
        curves.append((NO_FINDING, (yt.sum(axis=1) == 0).astype(np.int8), nf))

    fig = Figure(figsize=(6.4, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for name, y, s in curves:
        if len(np.unique(y)) < 2:
            ax.plot([], [], label=f"{name}: undefined (one class)")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        entry = None
        if report is not None:
            entry = report["no_finding"] if name == NO_FINDING else report["labels"].get(name)
        auc = entry["auroc"] if entry else auroc(y, s)
        text = f"{name}: {auc:.3f}"
        if entry and entry.get("ci_low") is not None:
            text += f" [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
        ax.plot(fpr, tpr, linewidth=1.6, linestyle="--" if name == NO_FINDING else "-", label=text)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title or "ROC curves (AUROC [95% CI])")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write an evaluation report as JSON (numpy values converted, NaN/inf as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_jsonable(report), indent=2, allow_nan=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)
    return path
