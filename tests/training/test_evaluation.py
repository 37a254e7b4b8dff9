"""Evaluation metrics against hand-computable cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from models.labels import FINDINGS, NO_FINDING
from training.evaluation import (
    auroc_ci,
    classification_report,
    dice,
    lung_dice,
    plot_roc_curves,
    segmentation_report,
    write_report,
)


def test_perfectly_separable_scores_give_auroc_one():
    est = auroc_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_bootstrap=200)
    assert est.auroc == 1.0
    assert est.ci_low == est.ci_high == 1.0  # every resample with both classes separates too
    assert (est.n_positive, est.n_negative) == (2, 2)


def test_reversed_scores_give_auroc_zero():
    assert auroc_ci([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], n_bootstrap=50).auroc == 0.0


def test_hand_computed_auroc_with_a_tie():
    # pairs (pos, neg): 0.8>0.1, 0.8>0.5, 0.5=0.5 (half), 0.5>0.1 -> (1 + 1 + 0.5 + 1) / 4
    est = auroc_ci([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.1], n_bootstrap=0)
    assert est.auroc == pytest.approx(3.5 / 4)
    assert est.ci_low is None and est.n_bootstrap == 0


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = y * 0.8 + rng.normal(0, 0.6, 300)
    a = auroc_ci(y, s, n_bootstrap=1000, seed=3)
    b = auroc_ci(y, s, n_bootstrap=1000, seed=3)
    c = auroc_ci(y, s, n_bootstrap=1000, seed=4)
    assert a == b
    assert a.ci_low < a.auroc < a.ci_high
    assert a.ci_high - a.ci_low < 0.2
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.auroc == pytest.approx(roc_auc_score(y, s))
    assert a.n_bootstrap == 1000


def test_bootstrap_resamples_match_sklearn():
    from training.evaluation import bootstrap_aurocs, bootstrap_indices

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.random(40), 1)  # many ties
    idx = bootstrap_indices(40, 20, seed=0)
    fast = bootstrap_aurocs(y, s, idx)
    for row, value in zip(idx, fast):
        if len(np.unique(y[row])) == 2:
            assert value == pytest.approx(roc_auc_score(y[row], s[row]))
        else:
            assert np.isnan(value)


def test_single_class_label_reports_null_with_the_reason():
    est = auroc_ci([0, 0, 0], [0.1, 0.5, 0.9])
    assert est.auroc is None and est.ci_low is None
    assert "only negative" in est.reason


def test_bad_inputs_are_refused_with_the_rule():
    with pytest.raises(ValueError, match="0/1"):
        auroc_ci([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same length"):
        auroc_ci([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        auroc_ci([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        auroc_ci([0, 1], [0.1, 0.2], confidence=95)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        classification_report(np.zeros((4, 3)), np.zeros((4, 3)))


def _five_label_case():
    # Mass separable, Nodule reversed, Pneumonia random, Edema separable, Fibrosis absent
    y = np.zeros((8, 5), int)
    y[[0, 1, 2, 3], 0] = 1
    y[[4, 5], 1] = 1
    y[[1, 3, 5, 7], 2] = 1
    y[[6, 7], 3] = 1
    p = np.full((8, 5), 0.1)
    p[:, 0] = [0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1, 0.05]
    p[:, 1] = [0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.9, 0.9]
    p[:, 2] = [0.5] * 8
    p[:, 3] = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.95]
    return y, p


def test_report_macro_leaves_out_single_class_labels_and_says_so():
    y, p = _five_label_case()
    report = classification_report(y, p, n_bootstrap=200, seed=0)
    aucs = {name: report["labels"][name]["auroc"] for name in FINDINGS}
    assert aucs == {"Mass": 1.0, "Nodule": 0.0, "Pneumonia": 0.5, "Edema": 1.0, "Fibrosis": None}
    assert report["labels"]["Fibrosis"]["reason"].startswith("only negative")
    macro = report["macro_auroc"]
    assert macro["auroc"] == pytest.approx((1.0 + 0.0 + 0.5 + 1.0) / 4)
    assert macro["labels"] == ["Mass", "Nodule", "Pneumonia", "Edema"]
    assert "Fibrosis" in macro["excluded"]
    assert macro["ci_low"] <= macro["auroc"] <= macro["ci_high"]
    assert report["prevalence"][NO_FINDING] == int((y.sum(axis=1) == 0).sum())


def test_no_finding_auroc_uses_the_derived_score():
    y = np.zeros((6, 5), int)
    y[0, 0] = y[1, 2] = y[2, 4] = 1  # images 0-2 abnormal, 3-5 normal
    p = np.full((6, 5), 0.05)
    p[0, 0] = p[1, 2] = p[2, 4] = 0.9
    report = classification_report(y, p, n_bootstrap=100)
    assert report["no_finding"]["auroc"] == 1.0
    expected = roc_auc_score((y.sum(1) == 0), np.prod(1 - p, axis=1))
    assert report["no_finding"]["auroc"] == expected
    given = classification_report(y, p, n_bootstrap=0, no_finding_scores=-np.prod(1 - p, axis=1))
    assert given["no_finding"]["auroc"] == 0.0


def test_dice_of_known_overlaps():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:5] = True  # 20 pixels
    b[2:6, 0:5] = True  # 20 pixels, 10 shared
    assert dice(a, b) == pytest.approx(2 * 10 / 40)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    scores = lung_dice(a, b, a, a)
    assert scores == {"left": 1.0, "right": 0.5, "mean": 0.75}
    with pytest.raises(ValueError, match="same shape"):
        dice(a, np.zeros((5, 5), bool))


def test_segmentation_report_summarises_per_lung():
    a = np.zeros((10, 10), bool)
    a[2:8, 2:8] = True
    half = a.copy()
    half[2:5] = False
    cases = [(a, a, a, a), (half, a, a, a)]
    report = segmentation_report(cases, names=["good", "bad"], threshold=0.9)
    assert report["right"]["mean"] == 1.0
    assert report["left"]["min"] == pytest.approx(2 * 18 / (18 + 36))
    assert report["left"]["n"] == 2
    assert report["below_threshold"] == ["bad"]


def test_roc_png_is_written_and_readable(tmp_path):
    y, p = _five_label_case()
    report = classification_report(y, p, n_bootstrap=50)
    path = plot_roc_curves(y, p, tmp_path / "roc" / "curves.png", report=report, title="test")
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] > 300 and img.size[1] > 300
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 10  # something was drawn


def test_report_json_round_trips_with_nulls(tmp_path):
    y, p = _five_label_case()
    report = classification_report(y, p, n_bootstrap=20)
    report["extra"] = {"nan": float("nan"), "array": np.arange(3), "flag": np.bool_(True)}
    path = write_report(report, tmp_path / "report.json")
    back = json.loads(path.read_text())
    assert back["labels"]["Fibrosis"]["auroc"] is None
    assert back["labels"]["Mass"]["auroc"] == 1.0
    assert back["extra"] == {"nan": None, "array": [0, 1, 2], "flag": True}
