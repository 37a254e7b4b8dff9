"""The model store: versions as folders, manifests, integrity at load, active versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from models.checkpoint import CheckpointError, load_state_dict_strict
from models.labels import FINDINGS
from models.store import (
    ACTIVE_FILENAME,
    DEMO_STORE_DIR,
    MANIFEST_FILENAME,
    MODEL_CARD_FILENAME,
    ManifestError,
    ModelIntegrityError,
    ModelNotFoundError,
    ModelStore,
    ModelStoreError,
    is_valid_uid,
    read_manifest,
    write_version,
)


def _tiny_weights(seed: int) -> dict:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, len(FINDINGS)).state_dict()


def _write_classifier(root: Path, version: str, policy: str = "loose", seed: int = 0, name: str = "tiny_linear"):
    return write_version(
        root,
        role="classifier",
        name=name,
        version=version,
        architecture="linear",
        weights=_tiny_weights(seed),
        input_size=(64, 64),
        channels=3,
        normalisation="imagenet",
        labels=FINDINGS,
        policy=policy,
        thresholds={label: 0.5 for label in FINDINGS},
        metrics={"macro_auroc": 0.5},
        intended_use="Unit test model.",
        training_data_description="none",
        training_data_fingerprint="0" * 64,
        created_at=f"2026-01-0{int(version[-1]) + 1}T00:00:00+00:00",
    )


def _write_segmenter(root: Path, version: str, seed: int = 0):
    torch.manual_seed(seed)
    return write_version(
        root,
        role="segmenter",
        name="tiny_seg",
        version=version,
        architecture="linear",
        weights=torch.nn.Linear(2, 2).state_dict(),
        input_size=(32, 32),
        channels=3,
        normalisation="minmax",
        labels=("left", "right"),
        intended_use="Unit test model.",
        training_data_description="none",
        training_data_fingerprint="1" * 64,
    )


def test_store_round_trip_write_list_promote_load(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store", fallback=None)
    built = _write_classifier(store.root, "v1")
    assert (built.folder / MODEL_CARD_FILENAME).read_text().count("NOT FOR CLINICAL USE") == 1
    _write_segmenter(store.root, "v1")
    assert built.folder == tmp_path / "store" / "classifier" / "tiny_linear" / "v1"
    assert [p.name for p in built.folder.parent.iterdir()] == ["v1"]  # no staging folder left
    assert [v.ref for v in store.list_versions()] == ["tiny_linear:v1", "tiny_seg:v1"]

    store.promote("classifier", "tiny_linear:v1")
    store.promote("segmenter", "tiny_seg")
    active = json.loads((store.root / ACTIVE_FILENAME).read_text())
    assert active == {"classifier": {"loose": "tiny_linear:v1"}, "segmenter": "tiny_seg:v1"}

    version = store.active_classifier("loose")
    module = torch.nn.Linear(4, len(FINDINGS))
    load_state_dict_strict(module, version.load_state_dict(), source=version.weights_path, target="a linear layer")
    assert torch.equal(module.weight, _tiny_weights(0)["weight"])
    info = version.info()
    assert (info.role, info.policy, info.clinical_use, info.sha256) == ("classifier", "loose", False, version.manifest.sha256)
    assert store.active_segmenter().ref == "tiny_seg:v1"
    with pytest.raises(ModelNotFoundError, match="no active classifier for mask policy 'tight'"):
        store.active_classifier("tight")
    assert all(error is None for _, error in store.verify())


def test_promote_switches_versions_and_refuses_a_foreign_policy(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, fallback=None)
    _write_classifier(tmp_path, "v1", seed=1)
    _write_classifier(tmp_path, "v2", seed=2)
    _write_classifier(tmp_path, "v3", policy="tight", seed=3)
    store.promote("classifier", "v1")
    store.promote("classifier", "tiny_linear:v2", policy="loose")
    assert store.active_classifier("loose").ref == "tiny_linear:v2"
    assert store.get("tiny_linear").ref == "tiny_linear:v3"  # a bare name means its newest version
    with pytest.raises(ValueError, match="trained under mask policy 'tight'"):
        store.promote("classifier", "v3", policy="loose")
    with pytest.raises(ModelNotFoundError, match="no model version 'v9'"):
        store.promote("classifier", "v9")


def test_a_damaged_weights_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    version = _write_classifier(tmp_path, "v1")
    data = bytearray(version.weights_path.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte
    version.weights_path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"weights\.pt is damaged.*sha256.*rebuild"):
        version.load_state_dict()
    store = ModelStore(tmp_path, fallback=None)
    with pytest.raises(ModelIntegrityError):
        store.promote("classifier", "v1")
    report = dict(store.verify())
    assert "damaged" in (report["tiny_linear:v1"] or "")


def test_a_missing_weights_file_is_refused(tmp_path: Path) -> None:
    version = _write_classifier(tmp_path, "v1")
    version.weights_path.unlink()
    with pytest.raises(ModelIntegrityError, match="is missing"):
        version.verify()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("sha256"), r"missing: \['sha256'\]"),
        (lambda m: m.update(colour="blue"), r"unexpected: \['colour'\]"),
        (lambda m: m.update(foo=1), r"unexpected: \['foo'\]"),
        (lambda m: m["input"].update(foo=1), r"unexpected: \['input\.foo'\]"),
        (lambda m: m["training_data"].update(seed=3), r"unexpected: \['training_data\.seed'\]"),
        (lambda m: m.update(device_uid="2.25.01"), "device_uid: must be a valid DICOM UID"),
        (lambda m: m.update(sha256="ABC"), "sha256: must be 64 lowercase hex digits; got 'ABC'"),
        (lambda m: m.update(sha256="0" * 63 + "g"), "sha256: must be 64 lowercase hex digits"),
        (lambda m: m.update(schema_version=2), "schema_version: must be 1; got 2"),
        (lambda m: m.update(role="detector"), r"role: Input should be 'segmenter' or 'classifier'"),
        (lambda m: m.update(name="has space"), "name: must be 1-64 letters, digits"),
        (lambda m: m.update(weights_file="../weights.pt"), "weights_file: must be a plain file name"),
        (lambda m: m.update(created_at="yesterday"), "created_at: must be an ISO 8601 date and time; got 'yesterday'"),
        (lambda m: m.update(clinical_use="no"), "clinical_use: Input should be a valid boolean"),
        (lambda m: m["input"].update(channels=2), "input.channels: must be 1 or 3; got 2"),
        (lambda m: m["input"].update(size=[64]), "input.size: List should have at least 2 items"),
        (lambda m: m["input"].update(normalisation="zscore"), "input.normalisation: Input should be 'minmax', 'meanstd' or 'imagenet'"),
        (lambda m: m["thresholds"].update(Mass=1.5), "thresholds.Mass: Input should be less than or equal to 1"),
        (lambda m: m["metrics"].update(auroc="high"), "metrics.auroc: Input should be a valid number"),
        (lambda m: m.update(labels=[]), "labels: Tuple should have at least 1 item"),
        (lambda m: m.update(policy="sideways"), "unknown mask policy"),
        (lambda m: m["thresholds"].pop("Mass"), "one threshold per label"),
    ],
)
def test_a_manifest_with_wrong_keys_or_values_is_refused(tmp_path: Path, change, message) -> None:
    version = _write_classifier(tmp_path, "v1")
    path = version.folder / MANIFEST_FILENAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=message) as raised:
        ModelStore(tmp_path, fallback=None).list_versions()
    assert str(path) in str(raised.value) and "rebuild" in str(raised.value)


def test_a_manifest_error_lists_every_problem_at_once(tmp_path: Path) -> None:
    version = _write_classifier(tmp_path, "v1")
    path = version.folder / MANIFEST_FILENAME
    manifest = json.loads(path.read_text())
    manifest.pop("intended_use")
    manifest.update(foo=1, sha256="x")
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError) as raised:
        read_manifest(version.folder)
    message = str(raised.value)
    assert "missing: ['intended_use']" in message and "unexpected: ['foo']" in message and "sha256: must be" in message


def test_a_segmenter_manifest_must_not_name_a_policy(tmp_path: Path) -> None:
    version = _write_segmenter(tmp_path, "v1")
    path = version.folder / MANIFEST_FILENAME
    manifest = json.loads(path.read_text())
    manifest["policy"] = "loose"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="policy must be null for a segmenter"):
        read_manifest(version.folder)


def test_write_version_refuses_values_that_break_a_manifest_rule(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"new version tiny_linear:v1: .*thresholds\.Mass: Input should be less than or equal to 1"):
        write_version(
            tmp_path, role="classifier", name="tiny_linear", version="v1", architecture="linear",
            weights=_tiny_weights(0), input_size=(64, 64), channels=3, normalisation="imagenet", labels=FINDINGS,
            policy="loose", thresholds={label: 2.0 for label in FINDINGS}, intended_use="Unit test model.",
            training_data_description="none", training_data_fingerprint="0" * 64,
        )
    assert not (tmp_path / "classifier" / "tiny_linear" / "v1").exists()
    assert not [p for p in (tmp_path / "classifier" / "tiny_linear").iterdir()]  # no staging folder left


def test_the_demo_manifests_round_trip_byte_for_byte() -> None:
    from models.store.writing import json_text

    for version in ModelStore(None).list_versions():
        text = (version.folder / MANIFEST_FILENAME).read_text(encoding="utf-8")
        assert json_text(version.manifest.to_dict()) == text, version.ref


def test_a_manifest_is_immutable() -> None:
    manifest = ModelStore(None).active_segmenter().manifest
    with pytest.raises(ValidationError, match="frozen"):
        manifest.name = "other"  # type: ignore[misc]


def test_state_dict_key_mismatch_names_the_keys_and_the_file(tmp_path: Path) -> None:
    version = _write_classifier(tmp_path, "v1")
    with pytest.raises(CheckpointError) as raised:
        load_state_dict_strict(
            torch.nn.Sequential(torch.nn.Linear(4, 5)), version.load_state_dict(), source=version.weights_path, target="a test net"
        )
    message = str(raised.value)
    assert str(version.weights_path) in message and "does not fit a test net" in message
    assert "missing keys (2): 0.bias, 0.weight" in message and "unexpected keys (2): bias, weight" in message


def test_a_version_whose_weights_are_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    version = write_version(
        tmp_path, role="segmenter", name="tiny_seg", version="v1", architecture="linear",
        weights={"model": torch.nn.Linear(2, 2).state_dict(), "step": 3}, input_size=(32, 32), channels=3,
        normalisation="minmax", labels=("left", "right"), intended_use="Unit test model.",
        training_data_description="none", training_data_fingerprint="1" * 64,
    )
    with pytest.raises(ModelIntegrityError, match=r"not a plain state dict.*tiny_seg:v1.*rebuild"):
        version.load_state_dict()


def test_device_uid_is_a_valid_uid_and_differs_between_versions(tmp_path: Path) -> None:
    first = _write_classifier(tmp_path, "v1", seed=0).manifest.device_uid
    second = _write_classifier(tmp_path, "v2", seed=0).manifest.device_uid  # same weights, new version
    third = _write_classifier(tmp_path, "v3", seed=1).manifest.device_uid
    assert len({first, second, third}) == 3
    for uid in (first, second, third):
        assert is_valid_uid(uid) and uid.startswith("2.25.") and len(uid) <= 64
    # deterministic: the same version written again gets the same UID
    again = _write_classifier(tmp_path / "again", "v1", seed=0).manifest.device_uid
    assert again == first


def test_versions_are_immutable(tmp_path: Path) -> None:
    _write_classifier(tmp_path, "v1")
    with pytest.raises(ModelStoreError, match="immutable"):
        _write_classifier(tmp_path, "v1")


def test_writable_root_overrides_the_fallback_active_entries(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    _write_classifier(demo, "v1", policy="loose")
    _write_classifier(demo, "v2", policy="tight")
    ModelStore(demo, fallback=None).promote("classifier", "v1")
    ModelStore(demo, fallback=None).promote("classifier", "v2")
    store = ModelStore(tmp_path / "user", fallback=demo)
    _write_classifier(store.root, "v3", policy="loose", name="own")
    store.promote("classifier", "own:v3")
    assert store.active_classifier("loose").ref == "own:v3"
    assert store.active_classifier("tight").ref == "tiny_linear:v2"
    assert store.active_classifier("tight").read_only
    assert not (demo / "classifier" / "own").exists()


def test_the_bundled_demo_store_is_complete_and_intact() -> None:
    store = ModelStore(None)
    report = store.verify()
    assert report and all(error is None for _, error in report), report
    assert store.active_segmenter().manifest.clinical_use is False
    for policy in ("original", "loose", "tight"):
        manifest = store.active_classifier(policy).manifest
        assert manifest.clinical_use is False and manifest.policy == policy
        assert "NOT FOR CLINICAL USE" in (store.active_classifier(policy).folder / MODEL_CARD_FILENAME).read_text()
    assert read_manifest(store.active_segmenter().folder).role == "segmenter"
    assert sum(p.stat().st_size for p in DEMO_STORE_DIR.rglob("*") if p.is_file()) < 8 * 1024 * 1024
