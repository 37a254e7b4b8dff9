"""Classifier training loop (training.classifier): policy datasets, checkpoints and resume, demo run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.classifier import ChestClassifier, ClassifierConfig, resize_images
from models.labels import FINDINGS
from models.policies import apply_policy
from training.classifier import (
    CHECKPOINT_NAME,
    PolicyDataset,
    TrainConfig,
    materialize,
    segmenter_masks,
    to_sample,
    train_classifier,
    train_demo_classifier,
)
from training.phantoms import PhantomDataset, generate_phantom
from tests.support.torch_threads import one_torch_thread  # noqa: F401 (fixture)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Phantoms:
    """PhantomDataset items as Phantom objects."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        self.ds = PhantomDataset(n, size, seed=seed, finding_probability=0.5)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds.phantom(i)


def test_policy_dataset_applies_the_policy_like_inference():
    ph = generate_phantom(96, seed=11)
    x, y = PolicyDataset([ph], "tight", 64)[0]
    classifier = ChestClassifier.build(ClassifierConfig(architecture="cxr_tiny", input_size=64, policy="tight"), device="cpu")
    prepared = classifier.prepare(ph.image, ph.left_lung, ph.right_lung, ph.pixel_spacing_mm)
    np.testing.assert_array_equal(prepared, apply_policy(ph.image, ph.left_lung, ph.right_lung, "tight", ph.pixel_spacing_mm))
    torch.testing.assert_close(x, resize_images([prepared], 64)[0])
    np.testing.assert_array_equal(y.numpy(), ph.label_vector())


def test_dict_items_from_phantom_dataset_become_samples():
    item = PhantomDataset(2, 64, seed=3)[1]
    sample = to_sample(item)
    assert sample.image.shape == (64, 64) and sample.left_lung.dtype == bool
    assert sample.labels.shape == (len(FINDINGS),)
    assert sample.pixel_spacing_mm == pytest.approx(tuple(item["pixel_spacing_mm"].tolist()))


def test_segmenter_mask_source_refuses_a_failed_segmentation():
    ph = generate_phantom(64, seed=1)
    failed = SimpleNamespace(ok=False, failure_reason="left lung area implausible", left=None, right=None)
    source = segmenter_masks(lambda image, spacing: failed)
    with pytest.raises(ValueError, match="lung segmentation failed: left lung area implausible"):
        PolicyDataset([ph], "loose", 64, source)[0]
    good = SimpleNamespace(ok=True, left=ph.left_lung, right=ph.right_lung)
    x, _ = PolicyDataset([ph], "loose", 64, segmenter_masks(lambda image, spacing: good))[0]
    torch.testing.assert_close(x, PolicyDataset([ph], "loose", 64)[0][0])


@pytest.mark.slow
def test_training_resumes_from_its_checkpoint_and_continues_the_step_count(tmp_path):
    train = materialize(PolicyDataset(Phantoms(24, 64, seed=500), "loose", 64), progress=False)
    val = materialize(PolicyDataset(Phantoms(16, 64, seed=501), "loose", 64), progress=False)
    config = TrainConfig(architecture="cxr_tiny", policy="loose", input_size=64, epochs=1, batch_size=8, seed=0, device="cpu")
    first = train_classifier(train, val, config, tmp_path, progress=False)
    assert (first.steps, first.epochs_run) == (3, 1)
    assert (tmp_path / CHECKPOINT_NAME).exists()

    config.epochs = 2
    second = train_classifier(train, val, config, tmp_path, progress=False)
    assert (second.steps, second.epochs_run) == (6, 1)
    assert [h["epoch"] for h in second.history] == [1, 2]
    assert second.history[0] == first.history[0]
    assert second.classifier.policy == "loose"
    assert set(second.classifier.config.thresholds) == set(FINDINGS)

    fresh = train_classifier(train, val, config, tmp_path / "other", resume=True, progress=False)
    assert (fresh.steps, fresh.epochs_run) == (6, 2)

    with pytest.raises(ValueError, match="policy='loose', not 'tight'"):
        train_classifier(
            train, val, TrainConfig(architecture="cxr_tiny", policy="tight", input_size=64, epochs=3, batch_size=8, device="cpu"),
            tmp_path, progress=False,
        )


@pytest.mark.slow
def test_demo_training_writes_weights_and_a_complete_description(tmp_path):
    out = train_demo_classifier(
        tmp_path / "demo", "tight", seed=1, image_size=64, input_size=64, n_train=32, n_val=24, n_test=24,
        epochs=1, batch_size=16, progress=False, device="cpu",
    )
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["policy"] == "tight" and meta["architecture"] == "cxr_tiny" and meta["input_size"] == 64
    assert meta["labels"] == list(FINDINGS) and set(meta["thresholds"]) == set(FINDINGS)
    assert set(meta["metrics"]["test"]["auroc"]) == set(FINDINGS)
    assert len(meta["training_data"]["fingerprint"]) == 64
    assert meta["training_data"]["lung_masks"] == "ground truth (phantom)"
    assert meta["clinical_use"] is False
    loaded = ChestClassifier.load(out / ChestClassifier.WEIGHTS_NAME, out / ChestClassifier.CONFIG_NAME, device="cpu")
    assert loaded.predict([np.zeros((64, 64), np.float32)]).shape == (1, len(FINDINGS))
    again = train_demo_classifier(
        tmp_path / "again", "tight", seed=1, image_size=64, input_size=64, n_train=32, n_val=24, n_test=24,
        epochs=1, batch_size=16, progress=False, device="cpu",
    )
    assert json.loads((again / "classifier.json").read_text())["training_data"] == meta["training_data"]
    torch.testing.assert_close(
        torch.load(again / "weights.pt", weights_only=True), torch.load(out / "weights.pt", weights_only=True)
    )
