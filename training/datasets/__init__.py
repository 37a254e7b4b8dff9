"""Dataset readers: NIH ChestX-ray14, lung-mask folders (JSRT/Montgomery/Shenzhen), phantom folders.

Every reader is a ``torch.utils.data.Dataset`` whose items are dicts of tensors with the same
keys as :class:`training.phantoms.PhantomDataset`: ``"image"`` ``(H, W)`` float32 in [0, 1],
``"labels"`` ``(len(FINDINGS),)`` float32 (classification sets), ``"left_lung"`` and
``"right_lung"`` ``(H, W)`` bool (segmentation sets), ``"pixel_spacing_mm"`` ``(2,)`` float32
(row, column; NaN where unknown), ``"index"``.
"""

from training.datasets.folders import LungMaskFolder, PhantomFolder, assign_sides, split_lungs
from training.datasets.nih import NIHChestXray14, NIHRecord, nih_splits, read_label_file, split_by_patient

__all__ = [
    "LungMaskFolder",
    "NIHChestXray14",
    "NIHRecord",
    "PhantomFolder",
    "assign_sides",
    "nih_splits",
    "read_label_file",
    "split_by_patient",
    "split_lungs",
]
