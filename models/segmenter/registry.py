"""Builder registry for SAM-architecture lung segmenters (segment-anything's ``build_sam.py`` habit).

A name such as ``"sam_vit_b"`` maps to one :class:`SamArchitecture`; :func:`build_segmenter`
builds that network on the CPU and, given a checkpoint, loads its state dict **strictly, keys
unchanged**. The official MedSAM checkpoint ``medsam_vit_b.pth`` is a plain state dict of
``segment_anything.sam_model_registry["vit_b"]`` and loads into ``"sam_vit_b"`` as it is.

The small variants (``"sam_tiny"``, ``"sam_small"``) are the same SAM architecture built from
segment-anything's own :class:`ImageEncoderViT`, :class:`PromptEncoder`, :class:`MaskDecoder` and
:class:`TwoWayTransformer` classes, with a narrower ViT and a smaller input, for CPU use and the
demo. Every variant keeps SAM's geometry: a ViT with 16-pixel patches, an image embedding of
``image_size / 16`` squared, and decoder logits at ``image_size / 4`` squared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from models.checkpoint import load_checkpoint_strict

logger = logging.getLogger(__name__)

#: SAM's patch size; the image embedding is ``image_size / PATCH_SIZE`` on a side.
PATCH_SIZE = 16

@dataclass(frozen=True)
class SamArchitecture:
    """Hyper-parameters of one SAM-architecture segmenter.

    Attributes
    ----------
    name:
        Registry name, e.g. ``"sam_vit_b"``.
    image_size:
        Side ``S`` of the square model input in pixels (images are resized straight to ``S x S``).
    encoder_embed_dim, encoder_depth, encoder_num_heads:
        Width, depth and heads of the ViT image encoder.
    encoder_global_attn_indexes:
        ViT blocks with global attention; the others use windowed attention of ``window_size``.
    window_size:
        Attention window of the non-global blocks (0: every block attends globally).
    prompt_embed_dim:
        Channels of the image embedding, prompt tokens and mask decoder.
    decoder_mlp_dim, decoder_num_heads:
        MLP width and heads of the decoder's two-way transformer.
    official_key:
        When set, the network is built by ``segment_anything.sam_model_registry[official_key]``
        itself, so that official checkpoints load with their keys unchanged.
    """

    name: str
    image_size: int
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    official_key: str | None = None

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (``image_size / 16``)."""
        return self.image_size // PATCH_SIZE


#: Every segmenter architecture the node can build, by name.
SEGMENTER_ARCHITECTURES: dict[str, SamArchitecture] = {
    # The official SAM ViT-B that MedSAM fine-tuned (93.7 M parameters, 1024 px).
    "sam_vit_b": SamArchitecture(
        name="sam_vit_b",
        image_size=1024,
        encoder_embed_dim=768,
        encoder_depth=12,
        encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
        window_size=14,
        official_key="vit_b",
    ),
    # CPU/demo variant: 192-wide, 4-deep ViT at 256 px (about 10 ms per image on 2 CPU threads).
    "sam_tiny": SamArchitecture(
        name="sam_tiny",
        image_size=256,
        encoder_embed_dim=192,
        encoder_depth=4,
        encoder_num_heads=3,
        encoder_global_attn_indexes=(1, 3),
        window_size=8,
        prompt_embed_dim=128,
        decoder_mlp_dim=512,
        decoder_num_heads=4,
    ),
    # A wider CPU variant at 512 px for fine-tuning on real data without a GPU.
    "sam_small": SamArchitecture(
        name="sam_small",
        image_size=512,
        encoder_embed_dim=384,
        encoder_depth=6,
        encoder_num_heads=6,
        encoder_global_attn_indexes=(2, 5),
        window_size=14,
    ),
}


def get_architecture(name: str) -> SamArchitecture:
    """Look up a registered architecture by name; an unknown name lists the known ones."""
    try:
        return SEGMENTER_ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(SEGMENTER_ARCHITECTURES))
        raise ValueError(f"unknown segmenter architecture {name!r}; choose one of: {known}") from None


def _build_from_parts(arch: SamArchitecture) -> Sam:
    """Build a SAM from segment-anything's own modules, as ``build_sam._build_sam`` does."""
    embed = arch.embedding_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(embed, embed),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.prompt_embed_dim,
        ),
    )


def build_segmenter(architecture: str, checkpoint: Path | None = None) -> Sam:
    """Build a registered SAM-architecture segmenter on the CPU, optionally with weights.

    Parameters
    ----------
    architecture:
        A key of :data:`SEGMENTER_ARCHITECTURES`, e.g. ``"sam_vit_b"`` or ``"sam_tiny"``.
    checkpoint:
        A plain state dict file (``torch.save(model.state_dict(), path)``), read on the CPU and
        loaded strictly with keys unchanged (:func:`models.checkpoint.load_checkpoint_strict`);
        ``None`` keeps the random initialisation.

    Returns
    -------
    segment_anything.modeling.Sam
        On the CPU, in eval mode. Inference bypasses ``Sam.preprocess`` (MedSAM feeds the image
        encoder a ``[0, 1]`` tensor, no ImageNet mean/std): see :mod:`models.segmenter.transforms`.

    Raises
    ------
    ValueError
        An unknown architecture name (the message lists the known ones).
    FileNotFoundError
        ``checkpoint`` does not exist.
    models.checkpoint.CheckpointError
        The file is not a plain state dict, or its keys or tensor shapes differ from the network's;
        the message names the file and the missing, unexpected or mis-shaped keys.
    """
    arch = get_architecture(architecture)
    if arch.official_key is not None:
        sam = sam_model_registry[arch.official_key](checkpoint=None)
    else:
        sam = _build_from_parts(arch)
    if checkpoint is not None:
        load_checkpoint_strict(sam, Path(checkpoint), target=f"architecture {arch.name!r}", kind="segmenter")
        logger.info("loaded segmenter %s from %s", arch.name, checkpoint)
    sam.eval()
    return sam
