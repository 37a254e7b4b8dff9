"""The committed demo classifiers: held-out AUROC under each policy, and where CAM regions land.

The classifiers are the active ones of the bundled demo store (as the node loads them: sha256
checked, half-precision weights). Inference only, on phantoms drawn from seeds disjoint from the
demo training, validation and test sets (training.classifier.DEMO_*_SEED_BASE + 0), with the
phantoms' ground-truth lung masks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from models.classifier import ChestClassifier, no_finding_score
from models.labels import FINDINGS
from models.loading import load_classifier
from models.store import ModelStore
from training.phantoms import PhantomDataset, generate_phantom
from tests.support.torch_threads import one_torch_thread  # noqa: F401 (fixture)

POLICIES = ("original", "loose", "tight")
HELD_OUT_SEED = 90_000  # demo sets use 10_000, 20_000 and 30_000 (+ seed 0)
HELD_OUT_COUNT = 240
REGION_SEED = 95_000


def load_demo(policy: str) -> ChestClassifier:
    """The bundled demo store's active classifier of ``policy`` (sha256-checked)."""
    return load_classifier(ModelStore(None).active_classifier(policy), "cpu")


def image_size(policy: str) -> int:
    description = ModelStore(None).active_classifier(policy).manifest.training_data["description"]
    return int(json.loads(description)["image_size"])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def held_out():
    sizes = {image_size(p) for p in POLICIES}
    assert len(sizes) == 1, f"demo classifiers trained at different phantom sizes: {sizes}"
    ds = PhantomDataset(HELD_OUT_COUNT, sizes.pop(), seed=HELD_OUT_SEED)
    return [ds.phantom(i) for i in range(len(ds))]


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_demo_classifier_reaches_macro_auroc_090_on_held_out_phantoms(policy, held_out):
    classifier = load_demo(policy)
    assert classifier.policy == policy
    images = [classifier.prepare(ph.image, ph.left_lung, ph.right_lung, ph.pixel_spacing_mm) for ph in held_out]
    probs = classifier.predict(images)
    labels = np.stack([ph.label_vector() for ph in held_out])
    aurocs = {name: roc_auc_score(labels[:, k], probs[:, k]) for k, name in enumerate(FINDINGS)}
    macro = float(np.mean(list(aurocs.values())))
    assert macro >= 0.90, f"{policy}: macro AUROC {macro:.3f}, per label {aurocs}"
    normal = labels.sum(axis=1) == 0
    assert roc_auc_score(normal, no_finding_score(probs)) >= 0.85


def test_mass_region_lands_on_the_mass():
    classifier = load_demo("original")
    size = image_size("original")
    hits = []
    for i in range(6):
        ph = generate_phantom(size, seed=REGION_SEED + i, findings=["Mass"])
        (mass,) = [lesion for lesion in ph.lesions if lesion.kind == "Mass"]
        region = classifier.finding_regions(ph.image, ["Mass"])["Mass"]
        distance = float(np.hypot(region.center_xy[0] - mass.center_xy[0], region.center_xy[1] - mass.center_xy[1]))
        hits.append(distance <= 2 * mass.radius_px)
    assert sum(hits) >= 5, f"Mass region centre within 2 radii of the lesion on {sum(hits)} of 6 phantoms"


def test_regions_are_in_source_pixels_whatever_the_image_size():
    classifier = load_demo("original")
    size = image_size("original")
    small = generate_phantom(size, seed=REGION_SEED, findings=["Mass"])
    large = generate_phantom(2 * size, seed=REGION_SEED, findings=["Mass"])
    r_small = classifier.finding_regions(small.image, ["Mass"])["Mass"]
    r_large = classifier.finding_regions(large.image, ["Mass"])["Mass"]
    assert r_large.center_xy[0] == pytest.approx(2 * r_small.center_xy[0] + 0.5, abs=0.1 * size)
    assert r_large.center_xy[1] == pytest.approx(2 * r_small.center_xy[1] + 0.5, abs=0.1 * size)
    assert r_large.semi_axes_xy[0] == pytest.approx(2 * r_small.semi_axes_xy[0], rel=0.25)
