"""Classifier networks: every backbone builds with five outputs; loading, preprocessing, batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError
from models.classifier import BACKBONES, ChestClassifier, ChestNet, ClassifierConfig, build_backbone, resize_images
from models.labels import FINDINGS
from tests.support.torch_threads import one_torch_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("architecture", ["resnet50", "densenet121", "efficientnet_b0", "resnet18", "cxr_tiny"])
def test_every_backbone_gives_five_probabilities_for_a_batch_of_two(architecture):
    torch.manual_seed(0)
    classifier = ChestClassifier.build(ClassifierConfig(architecture=architecture, input_size=64), device="cpu")
    images = [np.random.default_rng(i).random((80, 70), dtype=np.float32) for i in range(2)]
    probs = classifier.predict(images)
    assert probs.shape == (2, len(FINDINGS)) and probs.dtype == np.float32
    # Sigmoid outputs of an untrained network may saturate to exactly 0 or 1 in float32.
    assert np.all(np.isfinite(probs) & (probs >= 0) & (probs <= 1))
    first_conv = next(m for m in classifier.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1


def test_default_backbone_is_resnet50_at_224():
    config = ClassifierConfig()
    assert (config.architecture, config.input_size) == ("resnet50", 224)
    assert set(BACKBONES) >= {"resnet50", "densenet121", "efficientnet_b0"}


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="choose one of: resnet50"):
        build_backbone("vgg11")


def test_class_activation_maps_average_to_the_logits():
    net = ChestNet("cxr_tiny").eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        logits, feats = net.forward_with_features(x)
        cams = net.class_activation_maps(feats)
        assert torch.equal(logits, net(x))
        torch.testing.assert_close(cams.mean(dim=(2, 3)) + net.head.bias, logits, rtol=1e-4, atol=1e-5)
    assert cams.shape == (2, len(FINDINGS), 8, 8)


def test_probabilities_with_maps_equal_the_plain_forward_pass_and_the_two_pass_maps():
    torch.manual_seed(0)
    classifier = ChestClassifier.build(ClassifierConfig(architecture="cxr_tiny", input_size=64), device="cpu")
    images = [np.random.default_rng(i).random((90, 70), dtype=np.float32) for i in range(3)]
    probs, cams = classifier.predict_with_maps(images, batch_size=2)
    np.testing.assert_array_equal(probs, classifier.predict(images, batch_size=2))
    assert cams.shape == (3, len(FINDINGS), 8, 8) and cams.dtype == np.float32
    for image, maps in zip(images, cams):
        # what the maps were before: a second pass of the backbone over the image alone
        with torch.no_grad():
            feats = classifier.net.feature_maps(resize_images([image], 64))
            separate = torch.einsum("kc,bchw->bkhw", classifier.net.head.weight, feats)[0].numpy()
        np.testing.assert_allclose(maps, separate, rtol=1e-5, atol=1e-6)


def test_list_and_tensor_inputs_give_the_same_probabilities_in_any_batch_size():
    classifier = ChestClassifier.build(ClassifierConfig(architecture="cxr_tiny", input_size=64), device="cpu")
    images = [np.random.default_rng(i).random((96, 96), dtype=np.float32) for i in range(5)]
    from_list = classifier.predict(images, batch_size=2)
    from_tensor = classifier.predict(torch.from_numpy(np.stack(images))[:, None], batch_size=5)
    np.testing.assert_allclose(from_list, from_tensor, atol=1e-6)


def test_resize_refuses_colour_or_nan_images():
    with pytest.raises(ValueError, match=r"single \(H, W\) plane"):
        resize_images([np.zeros((10, 10, 3), np.float32)], 32)
    with pytest.raises(ValueError, match="NaN"):
        resize_images([np.full((10, 10), np.nan, np.float32)], 32)


def test_save_and_load_round_trip_and_refuse_a_mismatched_checkpoint(tmp_path):
    config = ClassifierConfig(architecture="cxr_tiny", input_size=64, policy="loose")
    classifier = ChestClassifier.build(config, device="cpu")
    weights, config_path = classifier.save(tmp_path / "m", {"note": "test"})
    assert json.loads(config_path.read_text())["policy"] == "loose"
    loaded = ChestClassifier.load(tmp_path / "m" / ChestClassifier.WEIGHTS_NAME, tmp_path / "m" / ChestClassifier.CONFIG_NAME, device="cpu")
    image = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict([image]), classifier.predict([image]), atol=1e-6)
    other = ChestClassifier.build(ClassifierConfig(architecture="resnet18", input_size=64), device="cpu")
    other.save(tmp_path / "r18")
    with pytest.raises(CheckpointError, match=r"r18/weights.pt does not fit a 'cxr_tiny' classifier: missing keys") as error:
        ChestClassifier.load(tmp_path / "r18" / "weights.pt", config, device="cpu")
    assert "unexpected keys" in str(error.value)


def test_config_refuses_wrong_labels_and_unknown_policy():
    with pytest.raises(ValueError, match="labels must be"):
        ClassifierConfig(labels=["Mass"])
    with pytest.raises(ValueError, match="unknown mask policy"):
        ClassifierConfig(policy="medium")
