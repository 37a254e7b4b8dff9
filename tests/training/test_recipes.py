"""Training recipes (training.recipes): specs refuse bad parameters early; recipes register versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.store import ModelStore
from training.recipes import (
    ClassifierSpec,
    EvaluationSpec,
    SegmenterSpec,
    evaluate_models,
    train_classifier,
    train_segmenter,
)
from tests.support.torch_threads import one_torch_thread  # noqa: F401 (fixture)


def test_classifier_spec_refuses_nih_without_its_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--data nih needs --nih-root"):
        ClassifierSpec(store_root=tmp_path, policy="loose", data="nih")


def test_classifier_spec_refuses_an_unknown_policy_and_unknown_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown mask policy 'snug'"):
        ClassifierSpec(store_root=tmp_path, policy="snug")
    with pytest.raises(ValueError, match="--data must be phantoms or nih; got 'jsrt'"):
        ClassifierSpec(store_root=tmp_path, policy="tight", data="jsrt")


def test_segmenter_spec_refuses_data_other_than_phantoms_and_an_unknown_architecture(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not supported for segmenters here"):
        SegmenterSpec(store_root=tmp_path, data="nih")
    with pytest.raises(ValueError, match="sam_huge"):
        SegmenterSpec(store_root=tmp_path, architecture="sam_huge")
    with pytest.raises(ValueError, match="--steps must be at least 1; got 0"):
        SegmenterSpec(store_root=tmp_path, steps=0)


@pytest.mark.usefixtures("one_torch_thread")
def test_train_classifier_registers_and_promotes_a_version_of_its_policy(tmp_path: Path) -> None:
    spec = ClassifierSpec(store_root=tmp_path / "store", policy="tight", backbone="cxr_tiny", count=12, epochs=1,
                          batch_size=4, input_size=64, image_size=64, version="r1", promote=True)
    run = train_classifier(spec)
    assert run.version.ref == "classifier_cxr_tiny_tight:r1" and run.promoted
    assert run.work_dir == tmp_path / "store" / "_work" / "classifier_cxr_tiny_tight-r1"
    assert (run.work_dir / "checkpoints" / "checkpoint.pt").is_file()
    store = ModelStore(tmp_path / "store", fallback=None)
    assert store.active_classifier("tight").ref == run.version.ref
    assert run.version.manifest.policy == "tight" and run.metrics == dict(run.version.manifest.metrics)
    assert json.loads((tmp_path / "store" / "active.json").read_text()) == {"classifier": {"tight": run.version.ref}}


@pytest.mark.usefixtures("one_torch_thread")
def test_train_segmenter_registers_held_out_dice_without_promoting(tmp_path: Path) -> None:
    spec = SegmenterSpec(store_root=tmp_path / "store", steps=1, batch_size=1, held_out=2, version="s1",
                         work_dir=tmp_path / "work")
    run = train_segmenter(spec)
    assert run.version.ref == "segmenter_sam_tiny:s1" and not run.promoted
    assert run.metrics["count"] == 2 and 0.0 <= run.metrics["mean_dice_left"] <= 1.0
    assert run.version.manifest.metrics["held_out.mean_dice_left"] == pytest.approx(run.metrics["mean_dice_left"])
    assert (tmp_path / "work" / "weights.pt").is_file()
    assert not (tmp_path / "store" / "active.json").exists()


@pytest.mark.usefixtures("one_torch_thread")
def test_evaluate_models_reports_every_image_of_the_demo_versions(tmp_path: Path) -> None:
    spec = EvaluationSpec(store_root=tmp_path / "store", classifier="demo_cxr_tiny_original", out=tmp_path / "eval",
                          count=6, bootstrap=10, progress=False)
    report = evaluate_models(spec)
    assert report["policy"] == "original"
    assert report["classification"]["n_images"] + report["not_classified"]["count"] == 6
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["classifier"]["ref"] == report["classifier"]["ref"]
