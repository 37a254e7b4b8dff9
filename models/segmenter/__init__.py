"""MedSAM lung segmenter: builder registry, MedSAM pre/post-processing, automatic boxes, checks.

Typical use::

    from models.segmenter import LungSegmenter, build_segmenter

    sam = build_segmenter("sam_vit_b", Path("medsam_vit_b.pth"))  # strict, keys unchanged
    result = LungSegmenter(sam, device="cpu").segment(image)  # (H, W) float32 in [0, 1]

A checkpoint that does not fit its architecture raises :class:`models.checkpoint.CheckpointError`.
"""

from models.segmenter.predictor import LungSegmenter
from models.segmenter.registry import (
    SEGMENTER_ARCHITECTURES,
    SamArchitecture,
    build_segmenter,
    get_architecture,
)

__all__ = [
    "SEGMENTER_ARCHITECTURES",
    "LungSegmenter",
    "SamArchitecture",
    "build_segmenter",
    "get_architecture",
]
