"""No Finding formula, decisions and threshold selection (models.classifier.scoring)."""

from __future__ import annotations

import numpy as np
import pytest

from models.classifier.scoring import FALLBACK_THRESHOLD, decide, no_finding_score, select_thresholds, youden_threshold
from models.labels import FINDINGS


def test_no_finding_is_the_product_of_absences():
    probs = {"Mass": 0.5, "Nodule": 0.2, "Pneumonia": 0.0, "Edema": 0.1, "Fibrosis": 0.0}
    assert no_finding_score(probs) == pytest.approx(0.5 * 0.8 * 1.0 * 0.9 * 1.0)
    batch = np.array([[0.0] * 5, [1.0, 0, 0, 0, 0], [0.1] * 5])
    np.testing.assert_allclose(no_finding_score(batch), [1.0, 0.0, 0.9**5], rtol=1e-6)


def test_no_finding_falls_when_any_finding_rises():
    base = np.full(5, 0.1)
    for k in range(5):
        raised = base.copy()
        raised[k] = 0.8
        assert no_finding_score(raised) < no_finding_score(base)


def test_no_finding_refuses_incomplete_or_out_of_range_input():
    with pytest.raises(ValueError, match="each of"):
        no_finding_score({"Mass": 0.1})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        no_finding_score(np.array([1.2, 0, 0, 0, 0]))


def test_decide_uses_each_labels_threshold_inclusively():
    thresholds = dict(zip(FINDINGS, [0.5, 0.3, 0.9, 0.2, 0.7]))
    probs = dict(zip(FINDINGS, [0.5, 0.29, 0.95, 0.1, 0.7]))
    assert decide(probs, thresholds) == dict(zip(FINDINGS, [True, False, True, False, True]))
    assert decide([0.5, 0.29, 0.95, 0.1, 0.7], thresholds) == decide(probs, thresholds)
    with pytest.raises(ValueError, match="no operating threshold"):
        decide(probs, {"Mass": 0.5})


def test_youden_threshold_separates_separable_scores():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    t = youden_threshold(y, s)
    assert 0.3 < t <= 0.6
    assert ((s >= t) == y.astype(bool)).all()


def test_youden_threshold_falls_back_with_one_class():
    assert youden_threshold(np.zeros(4), np.linspace(0, 1, 4)) == FALLBACK_THRESHOLD


def test_select_thresholds_gives_one_per_label():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (200, 5))
    s = np.clip(y * 0.5 + rng.random((200, 5)) * 0.6, 0, 1)
    thresholds = select_thresholds(y, s)
    assert list(thresholds) == list(FINDINGS)
    for k, name in enumerate(FINDINGS):
        pred = s[:, k] >= thresholds[name]
        tpr = pred[y[:, k] == 1].mean()
        fpr = pred[y[:, k] == 0].mean()
        assert tpr - fpr > 0.6
