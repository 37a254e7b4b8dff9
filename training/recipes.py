"""Training recipes: train a model, measure it, register it in a model store, optionally promote it.

What ``cxr-node train segmenter``, ``cxr-node train classifier`` and ``cxr-node evaluate`` do, as
plain functions of a frozen parameter object, so that a command line and a task on the
``training`` queue run the same code:

- :func:`train_segmenter` (:class:`SegmenterSpec`): the MedSAM recipe
  (:func:`training.segmenter.train_segmenter`) on phantoms generated on the fly, Dice per lung on
  held-out phantoms with automatic boxes, registered as a segmenter version;
- :func:`train_classifier` (:class:`ClassifierSpec`): one mask policy, on phantoms with their
  ground-truth lungs (:func:`training.classifier.train_demo_classifier`) or on NIH ChestX-ray14
  with the store's active segmenter providing the lungs, registered as a classifier version;
- :func:`evaluate_models` (:class:`EvaluationSpec`): a classifier version with a segmenter version
  end to end (:func:`training.model_evaluation.evaluate_versions`).

Every spec checks its parameters when it is built (``ValueError`` stating the rule, in the terms
of the ``cxr-node`` options, which carry the same names), before anything is trained. The
recipes take paths, never node settings.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from models.policies import parse_policy
from models.store import ROLE_CLASSIFIER, ROLE_SEGMENTER, ModelStore, ModelVersion

logger = logging.getLogger(__name__)

#: Data a segmenter can be trained on here.
SEGMENTER_DATA = ("phantoms",)
#: Data a classifier can be trained on (and evaluated on).
CLASSIFIER_DATA = ("phantoms", "nih")
#: Views of NIH ChestX-ray14 the classifier recipes read (frontal radiographs only).
NIH_VIEWS = ("PA", "AP")
#: The rule a classifier spec on NIH data must follow.
NIH_ROOT_REQUIRED = "--data nih needs --nih-root DIR (the ChestX-ray14 folder with Data_Entry_2017.csv)"

SEGMENTER_INTENDED_USE = "Lung segmentation trained on synthetic phantoms. Research use; NOT FOR CLINICAL USE."
PHANTOM_CLASSIFIER_INTENDED_USE = (
    "Five-finding classification trained on synthetic phantoms. Research use; NOT FOR CLINICAL USE."
)
NIH_CLASSIFIER_INTENDED_USE = (
    "Five-finding classification trained on NIH ChestX-ray14. Research use; NOT FOR CLINICAL USE."
)


def default_version_name() -> str:
    """A version name from the current UTC time, ``YYYY.MM.DD-HHMMSS``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y.%m.%d-%H%M%S")


def _work_folder(store_root: Path, work_dir: Path | None, name: str, version: str) -> Path:
    """Where a run keeps its checkpoints: ``work_dir``, else ``<store root>/_work/<name>-<version>``."""
    return work_dir if work_dir is not None else Path(store_root) / "_work" / f"{name}-{version}"


def _require_positive(**counts: int) -> None:
    """Refuse a count under 1, naming it as its option (``batch_size`` as ``--batch-size``)."""
    for field_name, value in counts.items():
        if value < 1:
            raise ValueError(f"--{field_name.replace('_', '-')} must be at least 1; got {value}")


@dataclass(frozen=True)
class TrainedRun:
    """What a training recipe registered.

    Attributes
    ----------
    version : the new model-store version.
    metrics : what the recipe measured on held-out data (segmenter: ``mean_dice_left``,
        ``mean_dice_right``, ... of :func:`training.segmenter.evaluate_segmenter`; classifier:
        the version's flattened manifest metrics, e.g. ``test.macro_auroc``).
    work_dir : the folder holding the run's checkpoints (a rerun with the same folder resumes).
    promoted : whether the version was made the active one of its role (and policy).
    """

    version: ModelVersion
    metrics: Mapping[str, Any]
    work_dir: Path
    promoted: bool


@dataclass(frozen=True)
class SegmenterSpec:
    """Parameters of :func:`train_segmenter`; the fields mirror the ``cxr-node train segmenter`` options.

    Attributes
    ----------
    store_root : the writable model-store root the version is written into.
    architecture : a segmenter registry name (``sam_tiny``, ``sam_small``, ``sam_vit_b``).
    data : ``phantoms`` (generated on the fly).
    init : plain state dict to fine-tune from (e.g. ``medsam_vit_b.pth``); ``None``: from scratch.
    steps, batch_size, seed, device : the training run (see
        :class:`training.segmenter.SegmenterTrainingConfig`).
    held_out : held-out phantoms the Dice in the manifest is measured on.
    work_dir : checkpoint folder (resumable); ``None``: ``<store_root>/_work/<name>-<version>``.
    name : model name; ``None``: ``segmenter_<architecture>``.
    version : version name; ``None``: the UTC time when the run starts.
    promote : make the new version the active segmenter.
    """

    store_root: Path
    architecture: str = "sam_tiny"
    data: str = "phantoms"
    init: Path | None = None
    steps: int = 1000
    batch_size: int = 8
    seed: int = 0
    device: str = "cpu"
    held_out: int = 20
    work_dir: Path | None = None
    name: str | None = None
    version: str | None = None
    promote: bool = False

    def __post_init__(self) -> None:
        from models.segmenter import get_architecture

        if self.data not in SEGMENTER_DATA:
            raise ValueError(f"--data {self.data!r} is not supported for segmenters here; use phantoms")
        get_architecture(self.architecture)  # an unknown name raises, listing the known ones
        _require_positive(steps=self.steps, batch_size=self.batch_size, held_out=self.held_out)


@dataclass(frozen=True)
class ClassifierSpec:
    """Parameters of :func:`train_classifier`; the fields mirror the ``cxr-node train classifier`` options.

    Attributes
    ----------
    store_root : the writable model-store root the version is written into (for ``nih`` under a
        masked policy, also where the active segmenter is looked up, then the demo store).
    policy : ``original``, ``loose`` or ``tight`` (stored normalised).
    backbone : classifier backbone (``resnet50``, ``densenet121``, ``efficientnet_b0``,
        ``resnet18``, ``cxr_tiny``).
    data : ``phantoms`` or ``nih`` (then ``nih_root``).
    nih_root : the NIH ChestX-ray14 folder (``Data_Entry_2017.csv``, images, split lists).
    epochs, batch_size, input_size, seed, device : the training run (see
        :class:`training.classifier.TrainConfig`); ``device`` ``None``: CUDA when available.
    image_size : side the images are read at (phantoms: generated at).
    count : training phantoms (phantoms only; validation and test get a sixth each, at least 10).
    work_dir, name, version, promote : as in :class:`SegmenterSpec`; the default name is
        ``classifier_<backbone>_<policy>``.
    """

    store_root: Path
    policy: str
    backbone: str = "resnet50"
    data: str = "phantoms"
    nih_root: Path | None = None
    epochs: int = 10
    batch_size: int = 32
    input_size: int = 224
    image_size: int = 256
    count: int = 2400
    seed: int = 0
    device: str | None = None
    work_dir: Path | None = None
    name: str | None = None
    version: str | None = None
    promote: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", parse_policy(self.policy).value)
        if self.data == "nih" and self.nih_root is None:
            raise ValueError(NIH_ROOT_REQUIRED)
        if self.data not in CLASSIFIER_DATA:
            raise ValueError(f"--data must be phantoms or nih; got {self.data!r}")
        _require_positive(epochs=self.epochs, batch_size=self.batch_size)


@dataclass(frozen=True)
class EvaluationSpec:
    """Parameters of :func:`evaluate_models`; the fields mirror the ``cxr-node evaluate`` options.

    Attributes
    ----------
    store_root : the writable model-store root (then the bundled demo store).
    classifier : classifier version (``name:version``, or an unambiguous version or name); its
        mask policy is the one evaluated.
    out : folder for ``report.json`` and the ROC PNGs.
    segmenter : segmenter version; ``None``: the active one.
    data : ``phantoms`` or ``nih`` (then ``nih_root``, the official test list).
    count : images (phantoms; for nih the first ``count`` of the test list, ``None`` all).
    image_size : phantom side, or the side NIH images are read at.
    bootstrap : bootstrap resamples for the AUROC intervals.
    seed, device : seed of the phantoms and resamples; ``cpu``, ``cuda`` or ``auto``.
    progress : show a progress bar on stderr.
    """

    store_root: Path
    classifier: str
    out: Path
    segmenter: str | None = None
    data: str = "phantoms"
    nih_root: Path | None = None
    count: int | None = 200
    image_size: int = 256
    bootstrap: int = 1000
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


def train_segmenter(spec: SegmenterSpec) -> TrainedRun:
    """Train a segmenter with the MedSAM recipe, measure it, and register it in the store.

    The run checkpoints into :attr:`TrainedRun.work_dir` and resumes from there; the version's
    metrics are the held-out Dice per lung (``held_out.*``) on phantoms from
    :data:`training.segmenter.HELD_OUT_SEED_BASE` on, which training never draws.

    Raises
    ------
    ValueError, ModelStoreError
        From the training loop (e.g. a checkpoint of another architecture in the work folder) or
        the store (e.g. the version exists already).
    """
    from models.segmenter import LungSegmenter, build_segmenter, get_architecture
    from training.export import export_segmenter
    from training.segmenter import (
        HELD_OUT_SEED_BASE,
        SegmenterTrainingConfig,
        evaluate_segmenter,
        held_out_phantoms,
        phantom_source,
    )
    from training.segmenter import train_segmenter as run_training_loop

    arch = get_architecture(spec.architecture)
    name = spec.name or f"segmenter_{spec.architecture}"
    version = spec.version or default_version_name()
    work = _work_folder(spec.store_root, spec.work_dir, name, version)
    config = SegmenterTrainingConfig(architecture=spec.architecture, steps=spec.steps, batch_size=spec.batch_size,
                                     seed=spec.seed, device=spec.device)
    weights = run_training_loop(phantom_source(), work, config, initial_weights=spec.init)
    examples = held_out_phantoms(spec.held_out, size=arch.image_size)
    metrics = evaluate_segmenter(LungSegmenter(build_segmenter(spec.architecture, weights), device=spec.device), examples)
    registered = export_segmenter(
        spec.store_root, weights, architecture=spec.architecture, name=name, version=version,
        metrics={"held_out": metrics},
        training_data={"generator": "training.phantoms.generate_phantom", "size": arch.image_size, "seed": spec.seed,
                       "steps": spec.steps, "batch_size": spec.batch_size,
                       "held_out_seeds": [HELD_OUT_SEED_BASE, HELD_OUT_SEED_BASE + spec.held_out - 1]},
        intended_use=SEGMENTER_INTENDED_USE,
    )
    if spec.promote:
        ModelStore(spec.store_root).promote(ROLE_SEGMENTER, registered.ref)
    logger.info("registered %s: held-out Dice left %.3f, right %.3f",
                registered.ref, metrics["mean_dice_left"], metrics["mean_dice_right"])
    return TrainedRun(registered, metrics, work, spec.promote)


def train_classifier(spec: ClassifierSpec) -> TrainedRun:
    """Train a classifier under one mask policy, measure it on its test set, register it in the store.

    ``phantoms``: the demo recipe with the phantoms' ground-truth lungs, ``count`` training
    phantoms. ``nih``: NIH ChestX-ray14 (official test list; train/val split by patient), PA and AP
    views; NIH has no lung masks, so under ``loose``/``tight`` the store's active segmenter
    provides them (an image whose segmentation fails stops the run with the reason).

    Raises
    ------
    ValueError, FileNotFoundError, ModelStoreError
        From the dataset (e.g. no NIH label file), the training loop or the store.
    """
    from training.export import export_classifier

    name = spec.name or f"classifier_{spec.backbone}_{spec.policy}"
    version = spec.version or default_version_name()
    work = _work_folder(spec.store_root, spec.work_dir, name, version)
    if spec.data == "nih":
        folder = _train_classifier_on_nih(spec, work)
        intended = NIH_CLASSIFIER_INTENDED_USE
    else:
        from training.classifier import train_demo_classifier

        folder = train_demo_classifier(
            work / "model", spec.policy, seed=spec.seed, architecture=spec.backbone, image_size=spec.image_size,
            input_size=spec.input_size, n_train=spec.count, n_val=max(spec.count // 6, 10),
            n_test=max(spec.count // 6, 10), epochs=spec.epochs, batch_size=spec.batch_size,
            checkpoint_dir=work / "checkpoints", device=spec.device,
        )
        intended = PHANTOM_CLASSIFIER_INTENDED_USE
    registered = export_classifier(spec.store_root, folder, name=name, version=version, intended_use=intended)
    if spec.promote:
        ModelStore(spec.store_root).promote(ROLE_CLASSIFIER, registered.ref, policy=spec.policy)
    logger.info("registered %s (policy %s)", registered.ref, spec.policy)
    return TrainedRun(registered, dict(registered.manifest.metrics), work, spec.promote)


def _train_classifier_on_nih(spec: ClassifierSpec, work: Path) -> Path:
    """Train on NIH ChestX-ray14 into ``work/model`` (weights, ``classifier.json``); return that folder."""
    from models.loading import load_segmenter
    from training.classifier import PolicyDataset, TrainConfig, evaluate_classifier, segmenter_masks
    from training.classifier import train_classifier as run_training_loop
    from training.datasets import NIHChestXray14
    from training.datasets.nih import find_label_file

    nih_root = spec.nih_root
    if nih_root is None:
        raise ValueError(NIH_ROOT_REQUIRED)
    kwargs: dict[str, Any] = {}
    segmenter_ref = None
    if spec.policy != "original":
        segmenter_version = ModelStore(spec.store_root).active_segmenter()
        segmenter = load_segmenter(segmenter_version, spec.device or "cpu")
        segmenter_ref = segmenter_version.ref
        kwargs["mask_source"] = segmenter_masks(lambda image, spacing: segmenter.segment(image))
    splits = {
        split: PolicyDataset(NIHChestXray14(nih_root, split, image_size=spec.image_size, seed=spec.seed,
                                            view_positions=NIH_VIEWS),
                             spec.policy, spec.input_size, **kwargs)
        for split in ("train", "val", "test")
    }
    config = TrainConfig(architecture=spec.backbone, policy=spec.policy, input_size=spec.input_size,
                         epochs=spec.epochs, batch_size=spec.batch_size, seed=spec.seed, device=spec.device)
    result = run_training_loop(splits["train"], splits["val"], config, work / "checkpoints")
    test_metrics = evaluate_classifier(result.classifier, splits["test"])
    label_file = find_label_file(Path(nih_root))
    training_data = {
        "dataset": "NIH ChestX-ray14",
        "label_file": label_file.name,
        "label_file_sha256": hashlib.sha256(label_file.read_bytes()).hexdigest(),
        "counts": {split: len(ds) for split, ds in splits.items()},
        "split": f"official test list; train/val by patient, seed {spec.seed}",
        "views": list(NIH_VIEWS),
        "image_size": spec.image_size,
        "lung_masks": segmenter_ref or "none (original policy)",
    }
    folder = work / "model"
    result.classifier.save(folder, {"metrics": {"test": test_metrics}, "validation_metrics": result.val_metrics,
                                    "training_data": training_data})
    return folder


def evaluate_models(spec: EvaluationSpec) -> dict[str, Any]:
    """Evaluate a classifier version with a segmenter version end to end; write the report and ROC PNGs.

    Returns
    -------
    dict
        The report of :func:`training.model_evaluation.evaluate_versions`, also written to
        ``spec.out / "report.json"``.
    """
    from training.model_evaluation import evaluate_versions

    return evaluate_versions(
        ModelStore(spec.store_root), spec.classifier, spec.out, segmenter_ref=spec.segmenter, data=spec.data,
        nih_root=spec.nih_root, count=spec.count, image_size=spec.image_size, seed=spec.seed,
        n_bootstrap=spec.bootstrap, device=spec.device, progress=spec.progress,
    )
