"""models.analyze / analyze_policies with the demo models and with a MedSAM ViT-B checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models.analysis import STAGES, classifier_skipped
from models.labels import FINDINGS
from models.policies import apply_policy
from models.loading import MEDSAM_WEIGHTS_FILENAME, ModelBundle, import_medsam, load_models
from models.segmenter import build_segmenter
from models.store import ModelStore, sha256_file
from training.phantoms import generate_phantom
from training.evaluation import dice as dice_score

#: Held-out phantoms: far from every seed the demo training recipes draw from (0.., 10k, 20k, 30k).
HELD_OUT_SEEDS = (97_001, 97_002)
PHANTOM_SIZE = 384


@pytest.fixture(scope="module")
def demo_bundle() -> ModelBundle:
    return load_models(None, "cpu")


def _count_encoder_calls(bundle: ModelBundle) -> list[int]:
    calls = [0]

    def hook(module, args, output):  # noqa: ANN001 - torch hook signature
        calls[0] += 1

    bundle.segmenter.sam.image_encoder.register_forward_hook(hook)
    return calls


def _check_sane(result: models.AnalysisResult, image: np.ndarray) -> None:
    assert set(result.probabilities) == set(FINDINGS)
    assert all(0.0 <= p <= 1.0 for p in result.probabilities.values())
    assert result.no_finding == pytest.approx(math.prod(1 - p for p in result.probabilities.values()), rel=1e-5)
    assert result.decisions == {k: result.probabilities[k] >= result.thresholds[k] for k in FINDINGS}
    assert set(result.regions) == {k for k, v in result.decisions.items() if v}
    height, width = image.shape
    for region in result.regions.values():
        assert 0 <= region.center_xy[0] < width and 0 <= region.center_xy[1] < height
    assert set(STAGES) <= set(result.timings) and all(t >= 0 for t in result.timings.values())
    assert result.timings["image_encoder"] > 0 and result.timings["classifier"] > 0


def test_analyze_segments_held_out_phantoms_with_dice_above_0_9_and_gives_sane_probabilities(
    demo_bundle: ModelBundle,
) -> None:
    for seed in HELD_OUT_SEEDS:
        phantom = generate_phantom(PHANTOM_SIZE, seed=seed)
        result = models.analyze(phantom.image, phantom.pixel_spacing_mm, "loose", bundle=demo_bundle)
        assert result.segmentation.ok, result.segmentation.failure_reason
        assert dice_score(result.segmentation.left, phantom.left_lung) >= 0.9
        assert dice_score(result.segmentation.right, phantom.right_lung) >= 0.9
        _check_sane(result, phantom.image)
        assert result.policy == "loose" and result.classifier.policy == "loose"
        assert result.segmenter.role == "segmenter" and result.classifier.role == "classifier"
        assert not result.clinical_use
        store = ModelStore(None)
        assert result.segmenter.device_uid == store.active_segmenter().manifest.device_uid
        assert result.thresholds == store.active_classifier("loose").manifest.thresholds


def test_analyze_without_a_bundle_uses_the_bundled_demo_models() -> None:
    phantom = generate_phantom(256, seed=HELD_OUT_SEEDS[0])
    result = models.analyze(phantom.image, None, "tight")
    assert result.segmentation.ok
    assert result.classifier.name == ModelStore(None).active_classifier("tight").manifest.name


def test_analyze_policies_embeds_the_image_once_for_every_policy(demo_bundle: ModelBundle) -> None:
    phantom = generate_phantom(PHANTOM_SIZE, seed=HELD_OUT_SEEDS[1])
    calls = _count_encoder_calls(demo_bundle)
    results = models.analyze_policies(phantom.image, phantom.pixel_spacing_mm, ["tight", "original", "loose", "tight"], bundle=demo_bundle)
    assert calls[0] == 1
    assert [r.policy for r in results] == ["tight", "original", "loose"]
    assert all(r.segmentation is results[0].segmentation for r in results)
    assert len({r.classifier.device_uid for r in results}) == 3  # one classifier per policy
    for result in results:
        _check_sane(result, phantom.image)


def test_a_failed_segmentation_is_recorded_and_masked_policies_are_not_classified(demo_bundle: ModelBundle) -> None:
    # A radiograph with inverted grey levels (a MONOCHROME1 image passed on uninverted): the
    # "lungs" are brighter than their surroundings and the plausibility check must reject them.
    phantom = generate_phantom(256, seed=HELD_OUT_SEEDS[0])
    inverted = (1.0 - phantom.image).astype(np.float32)
    results = models.analyze_policies(inverted, phantom.pixel_spacing_mm, ["loose", "original", "tight"], bundle=demo_bundle)
    segmentation = results[0].segmentation
    assert not segmentation.ok and segmentation.failure_reason
    assert not segmentation.left.any() and not segmentation.right.any()
    loose, original, tight = results
    for skipped in (loose, tight):
        assert classifier_skipped(skipped)
        assert skipped.probabilities == {} and skipped.decisions == {} and skipped.regions == {}
        assert math.isnan(skipped.no_finding)
        assert skipped.timings["classifier"] == 0.0
    assert not classifier_skipped(original)  # 'original' needs no masks
    _check_sane(original, inverted)


@pytest.mark.parametrize(
    "image, policy, message",
    [
        (np.zeros((2, 64, 64), np.float32), "loose", "shape"),
        (np.zeros((64, 64), np.uint16), "loose", "float image"),
        (np.full((64, 64), 3.0, np.float32), "loose", r"\[0, 1\]"),
        (np.zeros((64, 64), np.float32), "sideways", "unknown mask policy"),
    ],
)
def test_analyze_refuses_bad_input_with_the_rule(demo_bundle: ModelBundle, image, policy, message) -> None:
    with pytest.raises(ValueError, match=message):
        models.analyze(image, None, policy, bundle=demo_bundle)


@pytest.mark.slow
def test_a_medsam_vit_b_checkpoint_of_the_official_layout_imports_and_runs_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    checkpoint = tmp_path / MEDSAM_WEIGHTS_FILENAME
    torch.save(build_segmenter("sam_vit_b").state_dict(), checkpoint)  # random init, official keys
    store = ModelStore(tmp_path / "store")
    version = import_medsam(store, checkpoint, version="test-1")
    assert version.weights_path.name == MEDSAM_WEIGHTS_FILENAME
    assert sha256_file(version.weights_path) == sha256_file(checkpoint) == version.manifest.sha256
    store.promote("segmenter", version.ref)

    bundle = load_models(store.root, "cpu", policies=["original"])  # classifiers: the demo store's
    assert bundle.segmenter.input_size == 1024
    calls = _count_encoder_calls(bundle)
    phantom = generate_phantom(256, seed=HELD_OUT_SEEDS[0])
    results = models.analyze_policies(phantom.image, phantom.pixel_spacing_mm, ["original", "loose"], bundle=bundle)
    assert calls[0] == 1
    original, loose = results
    assert original.segmenter.architecture == "sam_vit_b"
    assert original.segmenter.device_uid == version.manifest.device_uid
    assert original.segmentation.left.shape == phantom.image.shape
    assert original.timings["image_encoder"] > 0
    _check_sane(original, phantom.image)
    # random weights: whatever the masks are, a rejected segmentation skips the masked policy
    assert classifier_skipped(loose) == (not loose.segmentation.ok)


def test_probabilities_and_regions_come_from_one_classifier_pass_and_equal_the_two_pass_results(
    demo_bundle: ModelBundle,
) -> None:
    phantom = generate_phantom(PHANTOM_SIZE, seed=HELD_OUT_SEEDS[0])
    policies = ["original", "loose", "tight"]
    passes: dict[str, int] = {}
    handles = []
    for policy in policies:
        classifier, _ = demo_bundle.classifier_for(policy)

        def hook(module, args, output, policy=policy):  # noqa: ANN001 - torch hook signature
            passes[policy] = passes.get(policy, 0) + 1

        handles.append(classifier.net.features.register_forward_hook(hook))
    try:
        results = models.analyze_policies(phantom.image, phantom.pixel_spacing_mm, policies, bundle=demo_bundle)
    finally:
        for handle in handles:
            handle.remove()
    assert passes == {policy: 1 for policy in policies}
    located = 0
    for result in results:
        classifier, _ = demo_bundle.classifier_for(result.policy)
        seg = result.segmentation
        prepared = apply_policy(phantom.image, seg.left, seg.right, result.policy, phantom.pixel_spacing_mm)
        # the two-pass way: probabilities from predict(), then regions from a second forward pass
        expected = dict(zip(classifier.labels, classifier.predict([prepared])[0]))
        assert result.probabilities == {label: float(expected[label]) for label in FINDINGS}
        positive = [label for label in FINDINGS if result.decisions[label]]
        second_pass = classifier.finding_regions(prepared, positive) if positive else {}
        assert set(result.regions) == set(second_pass)
        for label, region in result.regions.items():
            assert region.center_xy == pytest.approx(second_pass[label].center_xy, abs=1e-3)
            assert region.semi_axes_xy == pytest.approx(second_pass[label].semi_axes_xy, abs=1e-3)
        located += len(positive)
    assert located > 0, "no finding above threshold: the regions were not compared"
