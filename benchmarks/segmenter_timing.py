"""Per-image time of the lung segmenter's stages on the CPU (or a GPU).

Stages, for one radiograph: ``preprocess`` (MedSAM resize + min-max), ``image_encoder`` (once per
image), ``mask_decoder`` (one decode of both lung boxes: prompt encoder, mask decoder,
post-processing to the source size) and ``segment`` (the whole automatic call: preprocessing,
one embedding, the coarse decode, up to three refinements, the plausibility check).

Models: the demo segmenter (``sam_tiny``; trained weights when ``--demo-weights`` is given,
otherwise random weights, which time the same) and a random-initialised official MedSAM ViT-B
(``sam_vit_b`` at 1024 px; weights do not change the time).

Usage::

    .venv/bin/python benchmarks/segmenter_timing.py [--threads 2] [--size 2048] [--repeats 5]
        [--models sam_tiny,sam_vit_b] [--device cpu] [--json out.json]

Prints one line per model and stage (median seconds over the repeats, after one warm-up run)
and optionally writes the figures as JSON. Used by the inference benchmark (``inference.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.segmenter import LungSegmenter, build_segmenter  # noqa: E402
from models.segmenter.boxes import default_boxes  # noqa: E402
from models.segmenter.predictor import SIDES  # noqa: E402


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def time_segmenter(segmenter: LungSegmenter, image: np.ndarray, repeats: int) -> dict[str, float]:
    """Median seconds per stage for one ``(H, W)`` image; one warm-up run first.

    Returns
    -------
    dict
        ``preprocess``, ``image_encoder``, ``mask_decoder`` (one decode of two boxes) and
        ``segment`` (full automatic segmentation), each the median over ``repeats``.
    """
    device = segmenter.device
    shape = image.shape
    boxes = np.array([default_boxes(shape)[side] for side in SIDES])
    samples: dict[str, list[float]] = {"preprocess": [], "image_encoder": [], "mask_decoder": [], "segment": []}
    for run in range(repeats + 1):
        start = _clock(device)
        tensor = segmenter.preprocess(image)
        after_pre = _clock(device)
        embedding = segmenter.embed(tensor)
        after_enc = _clock(device)
        segmenter.decode(embedding, boxes, shape)
        after_dec = _clock(device)
        segmenter.segment(image)
        end = _clock(device)
        if run == 0:
            continue  # warm-up
        samples["preprocess"].append(after_pre - start)
        samples["image_encoder"].append(after_enc - after_pre)
        samples["mask_decoder"].append(after_dec - after_enc)
        samples["segment"].append(end - after_dec)
    return {stage: statistics.median(values) for stage, values in samples.items()}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=2048, help="side of the synthetic radiograph in pixels")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="sam_tiny,sam_vit_b")
    parser.add_argument("--demo-weights", type=Path, default=None, help="weights.pt of the demo segmenter")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    from training.phantoms import generate_phantom

    image = generate_phantom(args.size, seed=4242).image
    results: dict[str, dict[str, float]] = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        weights = args.demo_weights if name == "sam_tiny" else None
        segmenter = LungSegmenter(build_segmenter(name, weights), device=args.device)
        results[name] = time_segmenter(segmenter, image, args.repeats)
        for stage, seconds in results[name].items():
            print(f"{name:10s} {stage:14s} {seconds * 1000:10.1f} ms  ({args.size}x{args.size}, "
                  f"{args.threads} threads, {args.device})")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "threads": args.threads, "device": args.device,
                                         "seconds": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
