"""Inference benchmark: time per image and per stage of :func:`models.analyze`.

Two model sets, in one run, on phantom radiographs (``training.phantoms``):

- ``demo``: the bundled demo models (the baseline), exactly as the node runs them by default;
- ``medsam_resnet50``: MedSAM ViT-B (official ``sam_vit_b`` layout, 1024 px) with a ResNet50
  classifier, both with random weights (timing does not depend on the values), written to a
  temporary model store and loaded through it like any imported version.

On the CPU each set runs ``analyze`` one image at a time (a warm-up, then ``--repeats`` timed
runs; the median per stage is printed). Stages: ``preprocess`` (MedSAM resize and scaling),
``image_encoder``, ``mask_decoder`` (prompt encoder + decoder over the box-refinement rounds,
post-processing, plausibility check), ``policy``, ``classifier``, ``regions`` (class activation
maps for findings above threshold; random weights put some above, trained ones rarely).

Where torch sees a CUDA device (or with ``--batched-cpu`` to exercise the same code path on the
CPU), the batched path runs at batch sizes 1, 8 and 32: preprocessing per image, one image-encoder
call per batch, the per-image decoder rounds, policy, one classifier call per batch; it prints the
time per image per stage and images per second.

Run::

    .venv/bin/python benchmarks/inference.py                 # CPU, both sets
    .venv/bin/python benchmarks/inference.py --sets demo --repeats 10
    .venv/bin/python benchmarks/inference.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.analysis import STAGES, analyze, classifier_skipped  # noqa: E402
from models.classifier import ChestClassifier, ClassifierConfig, regions_from_maps  # noqa: E402
from models.labels import FINDINGS, LUNG_SIDES  # noqa: E402
from models.loading import CLASSIFIER_NORMALISATION, ModelBundle, load_models  # noqa: E402
from models.policies import apply_policy  # noqa: E402
from models.segmenter import build_segmenter  # noqa: E402
from models.segmenter.boxes import BOX_CONVERGENCE_IOU, MAX_REFINEMENTS, box_iou, default_boxes, refine_box  # noqa: E402
from models.segmenter.predictor import SIDES  # noqa: E402
from models.store import DEMO_STORE_DIR, ModelStore, write_version  # noqa: E402
from training.phantoms import generate_phantom  # noqa: E402

POLICY = "loose"


def random_medsam_resnet50_store(root: Path, classifier_size: int) -> Path:
    """A store with random-weight MedSAM ViT-B and ResNet50 (policy ``loose``), both active."""
    torch.manual_seed(0)
    sam = build_segmenter("sam_vit_b")
    common = dict(intended_use="Benchmark only (random weights).", training_data_description="none (random weights)",
                  training_data_fingerprint="0" * 64)
    write_version(root, role="segmenter", name="medsam_vit_b_random", version="bench", architecture="sam_vit_b",
                  weights=sam.state_dict(), weights_file="medsam_vit_b.pth", input_size=(1024, 1024), channels=3,
                  normalisation="minmax", labels=LUNG_SIDES, **common)
    del sam
    config = ClassifierConfig(architecture="resnet50", input_size=classifier_size, policy=POLICY)
    net = ChestClassifier.build(config, device="cpu").net
    write_version(root, role="classifier", name="resnet50_random", version="bench", architecture="resnet50",
                  weights=net.state_dict(), input_size=(classifier_size, classifier_size), channels=1,
                  normalisation=CLASSIFIER_NORMALISATION, parameters={"mean": config.mean, "std": config.std},
                  labels=FINDINGS, policy=POLICY, thresholds=config.thresholds, **common)
    store = ModelStore(root, fallback=None)
    store.promote("segmenter", "medsam_vit_b_random:bench")
    store.promote("classifier", "resnet50_random:bench")
    return root


def time_single(bundle: ModelBundle, phantoms: list, repeats: int) -> dict[str, float]:
    """Median seconds per stage (and total) over ``repeats`` single-image ``analyze`` calls, after a warm-up.

    With random segmenter weights the plausibility check rejects the masks and ``analyze`` skips
    the masked policy; the ``policy``, ``classifier`` and ``regions`` stages are then timed on the
    phantom's true lung masks with the same functions (apply_policy, predict_with_maps, regions_from_maps).
    """
    classifier, _ = bundle.classifier_for(POLICY)
    analyze(phantoms[0].image, phantoms[0].pixel_spacing_mm, POLICY, bundle=bundle)  # warm-up
    runs: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
    for i in range(repeats):
        phantom = phantoms[i % len(phantoms)]
        start = time.perf_counter()
        result = analyze(phantom.image, phantom.pixel_spacing_mm, POLICY, bundle=bundle)
        timings = dict(result.timings)
        if classifier_skipped(result):
            t0 = time.perf_counter()
            prepared = apply_policy(phantom.image, phantom.left_lung, phantom.right_lung, POLICY, phantom.pixel_spacing_mm)
            t1 = time.perf_counter()
            batch, cams = classifier.predict_with_maps([prepared])  # one forward pass, as models.analyze does
            probs = batch[0]
            t2 = time.perf_counter()
            positive = [k for k, p in zip(classifier.labels, probs) if p >= classifier.config.thresholds[k]]
            if positive:
                regions_from_maps(cams[0], classifier.labels, classifier.config.input_size, prepared.shape, positive)
            t3 = time.perf_counter()
            timings.update(policy=t1 - t0, classifier=t2 - t1, regions=t3 - t2)
        runs["total"].append(time.perf_counter() - start)
        for stage in STAGES:
            runs[stage].append(timings.get(stage, 0.0))
    return {stage: statistics.median(values) for stage, values in runs.items()}


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


@torch.inference_mode()
def time_batched(bundle: ModelBundle, phantoms: list, batch_size: int, batches: int) -> dict[str, float]:
    """Seconds per image per stage, and images/s, for the batched path (after one warm-up batch).

    Masks that come out empty (random weights) are replaced by the phantom's true masks for the
    policy stage, so that every stage does its real work.
    """
    segmenter = bundle.segmenter
    classifier, _ = bundle.classifier_for(POLICY)
    device = segmenter.device
    totals = {stage: 0.0 for stage in ("preprocess", "image_encoder", "mask_decoder", "policy", "classifier")}
    n_images = 0
    wall_start = 0.0
    for b in range(batches + 1):
        if b == 1:  # batch 0 is the warm-up
            totals = {stage: 0.0 for stage in totals}
            n_images = 0
            wall_start = _sync(device)
        chosen = [phantoms[(b * batch_size + i) % len(phantoms)] for i in range(batch_size)]
        batch = [p.image for p in chosen]
        t0 = _sync(device)
        tensor = torch.cat([segmenter.preprocess(image) for image in batch])
        t1 = _sync(device)
        embeddings = segmenter.sam.image_encoder(tensor)
        t2 = _sync(device)
        masks = []
        for i, image in enumerate(batch):
            shape = image.shape
            boxes = default_boxes(shape)
            decoded = _decode(segmenter, embeddings[i : i + 1], boxes, shape)
            for _ in range(MAX_REFINEMENTS):
                proposed = {s: refine_box(decoded[s], boxes[s]) for s in SIDES}
                converged = all(box_iou(proposed[s], boxes[s]) >= BOX_CONVERGENCE_IOU for s in SIDES)
                boxes = proposed
                decoded = _decode(segmenter, embeddings[i : i + 1], boxes, shape)
                if converged:
                    break
            masks.append(decoded)
        t3 = _sync(device)
        prepared = []
        for phantom, m in zip(chosen, masks):
            left, right = (m["left"], m["right"]) if m["left"].any() and m["right"].any() else (phantom.left_lung, phantom.right_lung)
            prepared.append(apply_policy(phantom.image, left, right, POLICY, phantom.pixel_spacing_mm))
        t4 = _sync(device)
        classifier.predict(prepared, batch_size=batch_size)
        t5 = _sync(device)
        for stage, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            totals[stage] += seconds
        n_images += batch_size
    wall = _sync(device) - wall_start
    out = {stage: seconds / n_images for stage, seconds in totals.items()}
    out["total"] = wall / n_images
    out["images_per_s"] = n_images / wall
    return out


def _decode(segmenter, embedding, boxes, shape) -> dict[str, np.ndarray]:
    stacked = np.array([boxes[s] for s in SIDES], dtype=np.float64)
    masks, _ = segmenter.decode(embedding, stacked, shape)
    return {s: masks[i] for i, s in enumerate(SIDES)}


def print_table(title: str, rows: dict[str, dict[str, float]], baseline: str | None, extra: str | None = None) -> None:
    """One row per model set, one column per stage, milliseconds; ratio to the baseline's total."""
    columns = ["preprocess", "image_encoder", "mask_decoder", "policy", "classifier", "regions", "total"]
    print(f"\n{title}")
    header = f"{'models':<28}" + "".join(f"{c:>15}" for c in columns) + f"{'x baseline':>12}"
    if extra:
        header += f"{extra:>14}"
    print(header)
    for name, row in rows.items():
        line = f"{name:<28}" + "".join(f"{1000 * row[c]:>13.1f}ms" if c in row else f"{'-':>15}" for c in columns)
        ratio = row["total"] / rows[baseline]["total"] if baseline in rows and baseline else float("nan")
        line += f"{ratio:>12.1f}"
        if extra:
            line += f"{row.get(extra, float('nan')):>14.1f}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="demo,medsam_resnet50", help="comma separated: demo, medsam_resnet50")
    parser.add_argument("--image-size", type=int, default=2048, help="phantom side in pixels (a DX is about 2048)")
    parser.add_argument("--classifier-size", type=int, default=512, help="ResNet50 input side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed single-image runs per set (after a warm-up)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="GPU batch sizes")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per batch size (after a warm-up batch)")
    parser.add_argument("--batched-cpu", action="store_true", help="also run the batched path on the CPU")
    parser.add_argument("--demo-root", type=Path, default=DEMO_STORE_DIR, help="store root of the baseline set (default: the bundled demo store)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    phantoms = [generate_phantom(args.image_size, seed=1000 + i) for i in range(4)]
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; "
          f"phantoms {args.image_size} x {args.image_size}, policy {POLICY}")

    figures: dict[str, object] = {"threads": torch.get_num_threads(), "image_size": args.image_size, "cpu": {}, "batched": {}}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        roots: dict[str, Path] = {}
        for name in sets:
            if name == "demo":
                roots[name] = args.demo_root
            elif name == "medsam_resnet50":
                roots[name] = random_medsam_resnet50_store(Path(tmp) / "store", args.classifier_size)
            else:
                parser.error(f"unknown set {name!r}")
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            cpu_rows: dict[str, dict[str, float]] = {}
            batched_rows: dict[str, dict[str, float]] = {}
            for name in sets:
                bundle = load_models(roots[name], device, policies=[POLICY], fallback=None)
                label = f"{name} ({bundle.segmenter_version.manifest.architecture}+{bundle.classifier_for(POLICY)[1].manifest.architecture})"
                cpu_rows[label] = time_single(bundle, phantoms, args.repeats)
                if device == "cuda" or args.batched_cpu:
                    for size in (int(s) for s in args.batch_sizes.split(",")):
                        batched_rows[f"{label} b={size}"] = time_batched(bundle, phantoms, size, args.batches)
                del bundle
            baseline = next(iter(cpu_rows)) if sets[0] == "demo" else None
            print_table(f"{device.upper()}: one image at a time (analyze), median of {args.repeats}", cpu_rows, baseline)
            figures["cpu" if device == "cpu" else "cuda_single"] = cpu_rows
            if batched_rows:
                print_table(f"{device.upper()}: batched path, per image", batched_rows, None, extra="images_per_s")
                figures["batched"][device] = batched_rows
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
