"""The builder registry: official ViT-B checkpoints load strictly, foreign ones are refused by key."""

from __future__ import annotations


import pytest
import torch
from segment_anything import sam_model_registry

from models.checkpoint import CheckpointError
from models.segmenter import SEGMENTER_ARCHITECTURES, build_segmenter, get_architecture


@pytest.fixture(scope="module")
def official_vit_b_state() -> dict[str, torch.Tensor]:
    """A state dict in the official ``medsam_vit_b.pth`` layout, from a random initialisation.

    Built by segment-anything's own registry (not by our builder), as MedSAM saves it.
    """
    torch.manual_seed(1234)
    return sam_model_registry["vit_b"](checkpoint=None).state_dict()


@pytest.mark.slow
def test_official_vit_b_layout_checkpoint_loads_strictly_with_keys_unchanged(official_vit_b_state, tmp_path):
    path = tmp_path / "medsam_vit_b.pth"
    torch.save(official_vit_b_state, path)

    sam = build_segmenter("sam_vit_b", path)

    loaded = sam.state_dict()
    assert set(loaded) == set(official_vit_b_state)
    for key in ("image_encoder.patch_embed.proj.weight", "image_encoder.blocks.11.attn.rel_pos_h",
                "mask_decoder.iou_prediction_head.layers.2.bias", "prompt_encoder.point_embeddings.0.weight"):
        assert torch.equal(loaded[key], official_vit_b_state[key]), key
    parameters = sum(p.numel() for p in sam.parameters())
    assert 93.5e6 < parameters < 93.9e6  # MedSAM's sam_model_registry["vit_b"] has 93.7 M
    assert sam.image_encoder.img_size == 1024
    assert not sam.training


@pytest.mark.slow
def test_checkpoint_with_a_renamed_key_is_refused_naming_the_keys_and_the_file(official_vit_b_state, tmp_path):
    renamed = dict(official_vit_b_state)
    renamed["image_encoder.neck.0.weight_renamed"] = renamed.pop("image_encoder.neck.0.weight")
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)

    with pytest.raises(CheckpointError) as error:
        build_segmenter("sam_vit_b", path)

    message = str(error.value)
    assert str(path) in message
    assert "missing keys (1): image_encoder.neck.0.weight" in message
    assert "unexpected keys (1): image_encoder.neck.0.weight_renamed" in message


def test_checkpoint_of_another_architecture_is_refused_with_shape_mismatches(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(build_segmenter("sam_tiny").state_dict(), path)

    with pytest.raises(CheckpointError, match="does not fit architecture 'sam_small'") as error:
        build_segmenter("sam_small", path)
    assert "shape mismatches" in str(error.value)


def test_training_checkpoint_instead_of_a_plain_state_dict_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": build_segmenter("sam_tiny").state_dict(), "step": 3}, path)

    with pytest.raises(CheckpointError, match="not a plain state dict"):
        build_segmenter("sam_tiny", path)


def test_damaged_weights_file_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(build_segmenter("sam_tiny").state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match="could not be read"):
        build_segmenter("sam_tiny", path)


def test_missing_checkpoint_file_and_unknown_architecture_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_segmenter("sam_tiny", tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="choose one of: sam_small, sam_tiny, sam_vit_b"):
        get_architecture("vit_huge")


def test_official_architecture_entry_matches_vit_b():
    arch = SEGMENTER_ARCHITECTURES["sam_vit_b"]
    assert (arch.official_key, arch.image_size, arch.encoder_embed_dim, arch.encoder_depth) == ("vit_b", 1024, 768, 12)
    assert arch.embedding_size == 64


@pytest.mark.parametrize("name", ["sam_tiny", "sam_small"])
def test_small_architectures_keep_sam_geometry(name):
    arch = SEGMENTER_ARCHITECTURES[name]
    sam = build_segmenter(name)
    with torch.inference_mode():
        embedding = sam.image_encoder(torch.rand(1, 3, arch.image_size, arch.image_size))
    assert tuple(embedding.shape) == (1, arch.prompt_embed_dim, arch.embedding_size, arch.embedding_size)
    # the decoder's low-resolution logits (and mask prompts) are 4x the embedding: image_size / 4
    assert sam.prompt_encoder.mask_input_size == (arch.image_size // 4, arch.image_size // 4)
