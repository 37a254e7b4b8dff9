"""Packaging demo training runs into a store (the training itself is tested by its owners)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from models.classifier import ChestClassifier, ClassifierConfig
from models.loading import load_models
from models.policies import MaskPolicy
from models.segmenter import build_segmenter
from models.store import MODEL_CARD_FILENAME, ModelStore
from training.build_demo import DEMO_CREATED_AT, build_demo_store, compare_stores


def _fake_runs(incoming: Path) -> None:
    """Finished runs in the layout the demo recipes write (random weights: packaging only)."""
    torch.manual_seed(0)
    seg = incoming / "segmenter"
    seg.mkdir(parents=True)
    torch.save(build_segmenter("sam_tiny").state_dict(), seg / "weights.pt")
    (seg / "segmenter.json").write_text(json.dumps({
        "architecture": "sam_tiny",
        "seed": 0,
        "threads": 1,
        "steps": 3,
        "held_out": {"mean_dice_left": 0.95, "mean_dice_right": 0.94, "count": 20, "seeds": "1..20"},
        "training_data": {"generator": "training.phantoms.generate_phantom"},
    }))
    for policy in MaskPolicy:
        config = ClassifierConfig(architecture="cxr_tiny", input_size=64, policy=policy.value)
        ChestClassifier.build(config, device="cpu").save(
            incoming / f"classifier_{policy.value}",
            {"metrics": {"test": {"macro_auroc": 0.97, "auroc": {"Mass": 0.99, "Nodule": None}}},
             "training_data": {"sets": {"train": {"count": 10, "seed": 10000}}, "fingerprint": "a" * 64},
             "training": {"seed": 0, "torch_threads": 1}},
        )


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_finished_runs_are_packaged_into_a_complete_demo_store_identically_twice(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    _fake_runs(incoming)
    first = build_demo_store(tmp_path / "a", incoming=incoming, progress=False)
    second = build_demo_store(tmp_path / "b", incoming=incoming, progress=False)
    assert _tree_digest(first) == _tree_digest(second)
    assert compare_stores(first, second) == []

    store = ModelStore(first, fallback=None)
    assert all(error is None for _, error in store.verify())
    segmenter = store.active_segmenter().manifest
    assert segmenter.metrics["held_out.mean_dice_left"] == 0.95 and segmenter.created_at == DEMO_CREATED_AT
    for policy in MaskPolicy:
        version = store.active_classifier(policy.value)
        m = version.manifest
        assert m.policy == policy.value and m.clinical_use is False
        assert m.metrics == {"test.macro_auroc": 0.97, "test.auroc.Mass": 0.99}
        assert m.training_data["fingerprint"] == "a" * 64
        assert "NOT FOR CLINICAL USE" in (version.folder / MODEL_CARD_FILENAME).read_text()
    assert "NOT FOR CLINICAL USE" in (first / "README.md").read_text()
    bundle = load_models(first, "cpu", fallback=None)
    assert set(bundle.classifiers) == {p.value for p in MaskPolicy}


def test_a_run_made_with_another_recipe_is_refused(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    _fake_runs(incoming)
    summary = json.loads((incoming / "segmenter" / "segmenter.json").read_text())
    (incoming / "segmenter" / "segmenter.json").write_text(json.dumps({**summary, "threads": 2}))  # recipe: 1
    with pytest.raises(ValueError, match="trained with .*'threads': 2.*retrain with the demo recipe"):
        build_demo_store(tmp_path / "store", incoming=incoming, progress=False)


def test_a_rebuild_keeps_the_drop_folder_and_replaces_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "store"
    incoming = out / "_incoming"
    _fake_runs(incoming)
    (out / "stale.txt").write_text("old")
    build_demo_store(out, incoming=incoming, progress=False)
    assert incoming.is_dir() and not (out / "stale.txt").exists()
    assert (out / "active.json").is_file()
