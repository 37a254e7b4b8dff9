"""Evaluate model-store versions end to end, as the node runs them (``cxr-node evaluate``).

Every image goes through :func:`models.analyze` with the chosen segmenter and classifier: the
segmenter's own masks feed the classifier's mask policy, exactly as in production. The report
(:mod:`training.evaluation`) holds per-label AUROC with bootstrap intervals, macro AUROC, No
Finding AUROC, lung Dice per side (phantoms, which know their lungs), how many images were not
classified (failed segmentation under a masked policy) and the time per stage; ROC curves are
drawn as PNGs (all labels in ``roc.png``, one ``roc_<label>.png`` per label).

Data:

- ``phantoms``: ``count`` phantoms from :func:`training.phantoms.generate_phantom` with seeds
  ``EVAL_PHANTOM_SEED_BASE + seed * count + i``, far from every training recipe's seeds;
- ``nih``: the official test list of an NIH ChestX-ray14 layout (PA and AP views), optionally the
  first ``count`` images.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from models.analysis import STAGES, analyze, classifier_skipped
from models.labels import FINDINGS
from models.loading import ModelBundle, load_classifier, load_segmenter, resolve_device
from models.store import ROLE_CLASSIFIER, ROLE_SEGMENTER, ModelStore
from training.evaluation import classification_report, plot_roc_curves, segmentation_report, write_report

logger = logging.getLogger(__name__)

#: First seed of the evaluation phantoms (training recipes draw from 0.., 10k, 20k, 30k, 96k).
EVAL_PHANTOM_SEED_BASE = 98_000
REPORT_NAME = "report.json"


def _phantom_cases(count: int, image_size: int, seed: int) -> Iterator[dict[str, Any]]:
    from training.phantoms import generate_phantom

    for i in range(count):
        phantom = generate_phantom(image_size, seed=EVAL_PHANTOM_SEED_BASE + seed * count + i)
        yield {
            "image": phantom.image,
            "spacing": phantom.pixel_spacing_mm,
            "labels": np.array([phantom.labels[k] for k in FINDINGS], dtype=np.int8),
            "left": phantom.left_lung,
            "right": phantom.right_lung,
        }


def _nih_cases(root: Path, count: int | None, image_size: int | None) -> Iterator[dict[str, Any]]:
    from training.datasets import NIHChestXray14

    dataset = NIHChestXray14(root, "test", image_size=image_size, view_positions=("PA", "AP"))
    n = len(dataset) if count is None else min(count, len(dataset))
    for i in range(n):
        item = dataset[i]
        spacing = item["pixel_spacing_mm"].numpy()
        yield {
            "image": item["image"].numpy(),
            "spacing": None if not np.all(np.isfinite(spacing)) else (float(spacing[0]), float(spacing[1])),
            "labels": item["labels"].numpy().astype(np.int8),
        }


def evaluate_versions(
    store: ModelStore,
    classifier_ref: str,
    out: Path,
    *,
    segmenter_ref: str | None = None,
    data: str = "phantoms",
    nih_root: Path | None = None,
    count: int | None = 200,
    image_size: int = 256,
    seed: int = 0,
    n_bootstrap: int = 1000,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a classifier version (with a segmenter version) and write the report and ROC PNGs.

    Parameters
    ----------
    store : where the versions live.
    classifier_ref : ``name:version`` (or unambiguous version/name) of the classifier; its mask
        policy is the one evaluated.
    out : folder for ``report.json``, ``roc.png`` and ``roc_<label>.png``.
    segmenter_ref : default the active segmenter.
    data : ``phantoms`` or ``nih`` (then ``nih_root``).
    count : number of images (phantoms: required; nih: ``None`` for the whole test list).
    image_size : phantom side, or the side NIH images are read at.

    Returns
    -------
    The report (also written to ``out/report.json``).
    """
    out = Path(out)
    classifier_version = store.get(classifier_ref, ROLE_CLASSIFIER)
    segmenter_version = store.get(segmenter_ref, ROLE_SEGMENTER) if segmenter_ref else store.active_segmenter()
    policy = str(classifier_version.manifest.policy)
    resolved = resolve_device(device)
    bundle = ModelBundle(
        store=store,
        device=resolved,
        segmenter=load_segmenter(segmenter_version, resolved),
        segmenter_version=segmenter_version,
        classifiers={policy: load_classifier(classifier_version, resolved)},
        classifier_versions={policy: classifier_version},
    )
    if data == "phantoms":
        if not count:
            raise ValueError("phantom evaluation needs a positive --count")
        cases: Iterator[dict[str, Any]] = _phantom_cases(int(count), image_size, seed)
        total = int(count)
        data_description: dict[str, Any] = {"kind": "phantoms", "count": total, "image_size": image_size,
                                            "seeds": [EVAL_PHANTOM_SEED_BASE + seed * total, EVAL_PHANTOM_SEED_BASE + seed * total + total - 1]}
    elif data == "nih":
        if nih_root is None:
            raise ValueError("NIH evaluation needs --nih-root (the ChestX-ray14 folder)")
        cases = _nih_cases(Path(nih_root), count, image_size)
        total = None
        data_description = {"kind": "nih", "root": str(nih_root), "split": "test", "views": ["PA", "AP"], "image_size": image_size}
    else:
        raise ValueError(f"data must be phantoms or nih; got {data!r}")

    y_true, y_score, dice_cases, stage_times = [], [], [], {s: [] for s in STAGES}
    skipped: list[dict[str, Any]] = []
    started = time.perf_counter()
    for i, case in enumerate(tqdm(cases, total=total, desc=f"evaluate {classifier_version.ref}", disable=not progress)):
        result = analyze(case["image"], case["spacing"], policy, bundle=bundle)
        for stage in STAGES:
            stage_times[stage].append(result.timings.get(stage, 0.0))
        if "left" in case:
            dice_cases.append((result.segmentation.left, result.segmentation.right, case["left"], case["right"]))
        if classifier_skipped(result):
            skipped.append({"index": i, "reason": result.segmentation.failure_reason})
            continue
        y_true.append(case["labels"])
        y_score.append([result.probabilities[k] for k in FINDINGS])
    if not y_true:
        raise ValueError("no image was classified (every segmentation failed); nothing to evaluate")
    yt, ys = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    report: dict[str, Any] = {
        "classifier": classifier_version.summary(),
        "segmenter": segmenter_version.summary(),
        "policy": policy,
        "data": data_description,
        "device": str(resolved),
        "classification": classification_report(yt, ys, n_bootstrap=n_bootstrap, seed=seed),
        "not_classified": {"count": len(skipped), "images": skipped},
        "median_seconds_per_stage": {s: statistics.median(v) for s, v in stage_times.items() if v},
        "seconds": round(time.perf_counter() - started, 1),
    }
    if dice_cases:
        report["segmentation"] = segmentation_report(dice_cases, threshold=0.9)
    out.mkdir(parents=True, exist_ok=True)
    write_report(report, out / REPORT_NAME)
    title = f"{classifier_version.ref} ({policy}), {data_description['kind']}"
    plot_roc_curves(yt, ys, out / "roc.png", report=report["classification"], title=title)
    for k, label in enumerate(FINDINGS):
        plot_roc_curves(yt[:, [k]], ys[:, [k]], out / f"roc_{label}.png", labels=[label],
                        report=report["classification"], title=f"{label}: {title}")
    logger.info("evaluation of %s written to %s", classifier_version.ref, out)
    return report
