"""The lung segmenter: one image embedding, two box prompts, automatic boxes, plausibility check.

:class:`LungSegmenter` wraps a SAM-architecture network (MedSAM ViT-B or a small variant from
:mod:`models.segmenter.registry`) and segments the left and right lung of one radiograph:

1. :meth:`LungSegmenter.preprocess` - MedSAM preprocessing (:mod:`models.segmenter.transforms`).
2. :meth:`LungSegmenter.embed` - the image encoder, once per image (the costly step).
3. :meth:`LungSegmenter.decode` - prompt encoder + mask decoder for a batch of boxes on that one
   embedding (cheap), post-processed to masks at the source size.
4. Automatic boxes (:mod:`models.segmenter.boxes`): a coarse decode from one default box per
   image half, then up to three refinements from each mask's own bounding box, all on the same
   embedding. Left and right lung are decoded together as a batch of two boxes.
5. :func:`models.segmenter.plausibility.check_lung_masks` - an implausible pair is returned with
   ``ok=False``, the failed check in ``failure_reason``, and empty masks.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from segment_anything.modeling import Sam

from models.result import LungSegmentation
from models.segmenter.boxes import BOX_CONVERGENCE_IOU, MAX_REFINEMENTS, Box, box_iou, default_boxes, refine_box
from models.segmenter.plausibility import check_lung_masks
from models.segmenter.transforms import check_grey_image, postprocess_logits, preprocess_image, scale_boxes

logger = logging.getLogger(__name__)

#: Order in which the two lungs are stacked in a decode batch.
SIDES = ("left", "right")


class LungSegmenter:
    """Segment both lungs of a chest radiograph with a SAM-architecture model.

    Parameters
    ----------
    sam:
        A :class:`segment_anything.modeling.Sam` (e.g. from :func:`build_segmenter`).
    device:
        Torch device to run on, e.g. ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, sam: Sam, *, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.sam = sam.to(self.device).eval()
        self.input_size = int(sam.image_encoder.img_size)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """MedSAM preprocessing.

        Parameters
        ----------
        image:
            ``(H, W)`` grey radiograph (float32 in ``[0, 1]`` in the node).

        Returns
        -------
        torch.Tensor
            ``(1, 3, S, S)`` float32 in ``[0, 1]`` on the segmenter's device.
        """
        return torch.from_numpy(preprocess_image(image, self.input_size))[None].to(self.device)

    @torch.inference_mode()
    def embed(self, tensor: torch.Tensor) -> torch.Tensor:
        """Image embedding of a preprocessed ``(1, 3, S, S)`` tensor: ``(1, C, S/16, S/16)``.

        Calls ``sam.image_encoder`` directly, as MedSAM does (no ``Sam.preprocess``, so no
        ImageNet mean/std).
        """
        expected = (1, 3, self.input_size, self.input_size)
        if tuple(tensor.shape) != expected:
            raise ValueError(f"embed takes a preprocessed tensor of shape {expected}; got {tuple(tensor.shape)}")
        return self.sam.image_encoder(tensor)

    @torch.inference_mode()
    def decode(
        self, embedding: torch.Tensor, boxes_xyxy: np.ndarray, image_shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode masks for several boxes from one image embedding.

        Parameters
        ----------
        embedding:
            ``(1, C, S/16, S/16)`` from :meth:`embed`.
        boxes_xyxy:
            ``(B, 4)`` boxes ``(x0, y0, x1, y1)`` in source-image pixels.
        image_shape:
            ``(H, W)`` of the source image.

        Returns
        -------
        masks, predicted_iou
            ``(B, H, W)`` bool masks and ``(B,)`` float32 predicted IoU.
        """
        boxes = torch.from_numpy(scale_boxes(boxes_xyxy, image_shape, self.input_size)).to(self.device)
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        low_res_logits, iou = self.sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        masks = postprocess_logits(low_res_logits, image_shape)
        return masks, iou[:, 0].float().cpu().numpy()

    def segment_with_boxes(
        self, image: np.ndarray, boxes: dict[str, Box], *, refine: bool = False
    ) -> LungSegmentation:
        """Segment both lungs from given boxes (optionally refined), then check plausibility.

        Parameters
        ----------
        image:
            ``(H, W)`` grey radiograph, display orientation.
        boxes:
            ``{"left": xyxy, "right": xyxy}`` in source pixels.
        refine:
            Refine the boxes from the masks' own bounding boxes (see :mod:`models.segmenter.boxes`).
        """
        grey = check_grey_image(image)
        shape = (int(grey.shape[0]), int(grey.shape[1]))
        embedding = self.embed(self.preprocess(grey))
        current = {side: tuple(float(v) for v in boxes[side]) for side in SIDES}
        masks, iou = self._decode_sides(embedding, current, shape)
        rounds = MAX_REFINEMENTS if refine else 0
        for _ in range(rounds):
            proposed = {side: refine_box(masks[side], current[side]) for side in SIDES}
            converged = all(box_iou(proposed[s], current[s]) >= BOX_CONVERGENCE_IOU for s in SIDES)
            current = proposed
            masks, iou = self._decode_sides(embedding, current, shape)
            if converged:
                break
        return self._finish(grey, masks, iou, current)

    def segment(self, image: np.ndarray) -> LungSegmentation:
        """Segment both lungs of an unseen radiograph with automatically found boxes.

        Parameters
        ----------
        image:
            ``(H, W)`` float32 in ``[0, 1]``, display orientation (PA: the patient's left lung on
            the image's right-hand side).

        Returns
        -------
        models.result.LungSegmentation
            ``left``/``right`` ``(H, W)`` bool masks, predicted IoU per lung, the final boxes
            (``xyxy`` in source pixels), and ``ok``/``failure_reason`` from the plausibility check.
            A failed segmentation carries empty masks.
        """
        shape = np.shape(image)
        if len(shape) != 2:
            raise ValueError(f"the segmenter takes one grey image of shape (H, W); got shape {shape}")
        return self.segment_with_boxes(image, default_boxes((shape[0], shape[1])), refine=True)

    def _decode_sides(
        self, embedding: torch.Tensor, boxes: dict[str, Box], shape: tuple[int, int]
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        stacked = np.array([boxes[side] for side in SIDES], dtype=np.float64)
        masks, iou = self.decode(embedding, stacked, shape)
        return (
            {side: masks[i] for i, side in enumerate(SIDES)},
            {side: float(iou[i]) for i, side in enumerate(SIDES)},
        )

    @staticmethod
    def _finish(
        image: np.ndarray, masks: dict[str, np.ndarray], iou: dict[str, float], boxes: dict[str, Box]
    ) -> LungSegmentation:
        verdict = check_lung_masks(masks["left"], masks["right"], iou, image=image)
        if not verdict.ok:
            logger.warning("lung segmentation rejected by the %s check: %s", verdict.check, verdict.reason)
            empty = np.zeros_like(masks["left"], dtype=bool)
            return LungSegmentation(
                left=empty,
                right=empty.copy(),
                quality=iou,
                boxes=boxes,
                ok=False,
                failure_reason=f"{verdict.check}: {verdict.reason}",
            )
        return LungSegmentation(left=masks["left"], right=masks["right"], quality=iou, boxes=boxes)
