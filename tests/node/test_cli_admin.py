"""Admin commands: cxr-node models list/show/verify/promote/import-medsam, evaluate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from models.loading import load_models
from models.segmenter import build_segmenter
from models.store import ModelStore, write_version
from node.cli import app

runner = CliRunner()


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str | None]:
    """A fresh data directory: its model store is empty, the bundled demo store is the fallback."""
    return {"CXR_NODE_DATA_DIR": str(tmp_path / "var"), "CXR_NODE_MODEL_DIR": None, "CXR_NODE_CONFIG_FILE": None}


def _invoke(args: list[str], env: dict[str, str | None]):
    """Run ``cxr-node ARGS`` in-process; ``output`` holds stdout and stderr."""
    return runner.invoke(app, args, env=env)


def test_models_list_json_shows_the_demo_versions_and_what_is_active(env: dict[str, str | None]) -> None:
    result = _invoke(["models", "list", "--json"], env)
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert listing["root"] == str(Path(env["CXR_NODE_DATA_DIR"]) / "models")
    by_role: dict[str, list[dict]] = {}
    for version in listing["versions"]:
        by_role.setdefault(version["role"], []).append(version)
        assert version["read_only"] and version["clinical_use"] is False
    assert len(by_role["segmenter"]) == 1 and by_role["segmenter"][0]["active_for"] == ["segmenter"]
    active = sorted(a for v in by_role["classifier"] for a in v["active_for"])
    assert active == ["classifier:loose", "classifier:original", "classifier:tight"]


def test_models_verify_passes_on_the_demo_store_and_fails_on_a_damaged_copy(env: dict[str, str | None]) -> None:
    ok = _invoke(["models", "verify", "--json"], env)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["ok"] is True

    demo = ModelStore(None).active_classifier("loose")
    root = Path(env["CXR_NODE_DATA_DIR"]) / "models"
    copy = root / "classifier" / demo.manifest.name / demo.manifest.version
    shutil.copytree(demo.folder, copy)  # shadows the demo version
    with open(copy / demo.manifest.weights_file, "r+b") as handle:
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0xFF]))
    bad = _invoke(["models", "verify"], env)
    assert bad.exit_code == 1
    assert f"FAIL {demo.ref}" in bad.output and str(copy / demo.manifest.weights_file) in bad.output
    assert "rebuild" in bad.output


def test_models_promote_switches_the_active_classifier_of_its_policy(env: dict[str, str | None]) -> None:
    demo = ModelStore(None).active_classifier("tight")
    root = Path(env["CXR_NODE_DATA_DIR"]) / "models"
    m = demo.manifest
    write_version(
        root, role="classifier", name=m.name, version="retrained-1", architecture=m.architecture,
        parameters=m.parameters, weights=demo.load_state_dict(), input_size=m.input_size,
        channels=m.input["channels"], normalisation=m.input["normalisation"], labels=m.labels, policy="tight",
        thresholds={k: 0.3 for k in m.labels}, intended_use=m.intended_use,
        training_data_description="test copy", training_data_fingerprint=m.training_data["fingerprint"],
    )
    ref = f"{m.name}:retrained-1"
    refused = _invoke(["models", "promote", "classifier", ref, "--policy", "loose"], env)
    assert refused.exit_code == 1 and "trained under mask policy 'tight'" in refused.output

    promoted = _invoke(["models", "promote", "classifier", ref], env)
    assert promoted.exit_code == 0, promoted.output
    shown = json.loads(_invoke(["models", "show", ref, "--json"], env).output)
    assert shown["active_for"] == ["classifier:tight"] and shown["read_only"] is False
    assert json.loads((root / "active.json").read_text()) == {"classifier": {"tight": ref}}
    bundle = load_models(root, "cpu", policies=["tight", "loose"])
    assert bundle.classifier_versions["tight"].ref == ref
    assert bundle.classifier_versions["loose"].read_only  # still the demo one
    assert bundle.classifiers["tight"].config.thresholds == {k: 0.3 for k in m.labels}


def test_import_medsam_refuses_a_checkpoint_of_another_layout(env: dict[str, str | None], tmp_path: Path) -> None:
    torch.manual_seed(0)
    wrong = tmp_path / "medsam_vit_b.pth"
    torch.save(build_segmenter("sam_tiny").state_dict(), wrong)
    result = _invoke(["models", "import-medsam", str(wrong)], env)
    assert result.exit_code == 1
    assert "does not fit architecture 'sam_vit_b'" in result.output and "missing keys" in result.output
    assert not (Path(env["CXR_NODE_DATA_DIR"]) / "models" / "segmenter").exists()


def test_models_show_names_an_unknown_version_and_what_exists(env: dict[str, str | None]) -> None:
    result = _invoke(["models", "show", "nonexistent"], env)
    assert result.exit_code == 1
    assert "no model version 'nonexistent'" in result.output and "demo_sam_tiny" in result.output


@pytest.mark.slow
def test_evaluate_writes_the_json_report_and_roc_pngs(env: dict[str, str | None], tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    result = _invoke(["evaluate", "--classifier", "demo_cxr_tiny_loose", "--count", "24", "--bootstrap", "100", "--out", str(out)], env)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["policy"] == "loose" and report["data"]["kind"] == "phantoms"
    classified = report["classification"]["n_images"]
    assert classified + report["not_classified"]["count"] == 24
    assert report["segmentation"]["left"]["n"] == 24
    assert report["segmentation"]["left"]["median"] >= 0.9 and report["segmentation"]["right"]["median"] >= 0.9
    assert set(report["classification"]["labels"]) == {"Mass", "Nodule", "Pneumonia", "Edema", "Fibrosis"}
    for name in ("roc.png", "roc_Mass.png", "roc_Fibrosis.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "macro      AUROC" in result.output


@pytest.mark.slow
def test_train_commands_register_new_versions_in_the_store(env: dict[str, str | None]) -> None:
    seg = _invoke(["train", "segmenter", "--steps", "2", "--batch-size", "2", "--held-out", "2", "--version", "t1", "--promote"], env)
    assert seg.exit_code == 0, seg.output
    cls = _invoke(["train", "classifier", "--policy", "tight", "--backbone", "cxr_tiny", "--data", "phantoms",
                   "--count", "12", "--epochs", "1", "--batch-size", "4", "--input-size", "64", "--image-size", "64",
                   "--version", "t1", "--promote"], env)
    assert cls.exit_code == 0, cls.output
    listing = json.loads(_invoke(["models", "list", "--json"], env).output)
    mine = {v["ref"]: v for v in listing["versions"] if not v["read_only"]}
    assert mine["segmenter_sam_tiny:t1"]["active_for"] == ["segmenter"]
    assert "held_out.mean_dice_left" in mine["segmenter_sam_tiny:t1"]["metrics"]
    classifier = mine["classifier_cxr_tiny_tight:t1"]
    assert classifier["active_for"] == ["classifier:tight"] and classifier["policy"] == "tight"
    assert len(classifier["training_data"]["fingerprint"]) == 64
    assert _invoke(["models", "verify"], env).exit_code == 0


@pytest.mark.slow
def test_import_medsam_registers_and_promotes_an_official_layout_checkpoint(env: dict[str, str | None], tmp_path: Path) -> None:
    torch.manual_seed(0)
    checkpoint = tmp_path / "medsam_vit_b.pth"
    torch.save(build_segmenter("sam_vit_b").state_dict(), checkpoint)  # random init, official keys
    result = _invoke(["models", "import-medsam", str(checkpoint), "--version", "2026.11.25-test", "--promote"], env)
    assert result.exit_code == 0, result.output
    shown = json.loads(_invoke(["models", "show", "medsam_vit_b", "--json"], env).output)
    assert shown["ref"] == "medsam_vit_b:2026.11.25-test" and shown["active_for"] == ["segmenter"]
    assert shown["architecture"] == "sam_vit_b" and shown["weights_file"] == "medsam_vit_b.pth"
    assert shown["input"] == {"size": [1024, 1024], "channels": 3, "normalisation": "minmax"}
    assert shown["clinical_use"] is False
