"""Training the five-finding classifier, per mask policy and backbone.

The way an image reaches the network is the inference path itself: lung masks from a *mask
source* (ground truth, or the segmenter), :func:`models.policies.apply_policy` at the source
resolution and spacing, then :func:`models.classifier.network.resize_images`; normalisation is
inside :class:`~models.classifier.network.ChestNet`. So a model sees in training exactly what it
will see in the node.

Loop: fixed seeds, AdamW, BCE-with-logits loss, cosine learning rate with warm-up, mixed precision
(float16 autocast + GradScaler) on CUDA, a tqdm bar, validation every epoch (AUROC per label),
a checkpoint after every epoch (model, optimiser, scheduler, scaler, epoch, step, history, best
weights) from which :func:`train_classifier` resumes, and per-label operating thresholds chosen
on the validation set (Youden's J) with the best-validation weights.

:func:`train_demo_classifier` builds the bundled demo classifier of one policy from phantoms
(:mod:`training.phantoms`), with the phantoms' ground-truth lung masks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from models.classifier.network import ChestClassifier, ChestNet, ClassifierConfig, pick_device, resize_images
from models.classifier.scoring import select_thresholds
from models.labels import FINDINGS
from models.policies import apply_policy, describe_policy, parse_policy
from training.evaluation import classification_metrics
from training.seeding import seed_everything

logger = logging.getLogger(__name__)

#: Name of the resumable checkpoint inside a checkpoint folder.
CHECKPOINT_NAME = "checkpoint.pt"

# Demo classifier recipe (see train_demo_classifier). Seeds of the three phantom sets are offset
# so that they never overlap; tests draw their held-out phantoms from DEMO_TEST_SEED_BASE upwards.
DEMO_ARCHITECTURE = "cxr_tiny"
DEMO_IMAGE_SIZE = 160
DEMO_INPUT_SIZE = 160
DEMO_TRAIN_COUNT = 2400
DEMO_VAL_COUNT = 400
DEMO_TEST_COUNT = 400
DEMO_EPOCHS = 14
DEMO_BATCH_SIZE = 64
DEMO_LEARNING_RATE = 3e-3
DEMO_TRAIN_SEED_BASE = 10_000
DEMO_VAL_SEED_BASE = 20_000
DEMO_TEST_SEED_BASE = 30_000
DEMO_METADATA_NAME = "classifier.json"


# ----------------------------------------------------------------------------------------------
# samples and mask sources


@dataclass
class Sample:
    """One training image with what the policies need.

    ``image`` (H, W) float32 in [0, 1]; ``labels`` (K,) float32 0/1 in FINDINGS order;
    ``left_lung``/``right_lung`` (H, W) bool or None (then a mask source must provide them);
    ``pixel_spacing_mm`` (row, column) or None.
    """

    image: np.ndarray
    labels: np.ndarray
    left_lung: np.ndarray | None = None
    right_lung: np.ndarray | None = None
    pixel_spacing_mm: tuple[float, float] | None = None


class MaskSource(Protocol):
    """Gives the (left, right) lung masks, (H, W) bool, of a sample."""

    def __call__(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]: ...


def ground_truth_masks(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """The sample's own lung masks (phantoms, segmentation datasets)."""
    if sample.left_lung is None or sample.right_lung is None:
        raise ValueError("this sample has no ground-truth lung masks; use segmenter_masks(...) as the mask source")
    return sample.left_lung, sample.right_lung


def segmenter_masks(segment: Callable[[np.ndarray, tuple[float, float] | None], Any]) -> MaskSource:
    """A mask source from a segmenter callable ``(image, pixel_spacing_mm) -> LungSegmentation``.

    A failed segmentation (``ok`` False) raises ValueError naming the reason; such images are
    skipped by :class:`PolicyDataset` only if the caller filters them beforehand.
    """

    def source(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        seg = segment(sample.image, sample.pixel_spacing_mm)
        if not getattr(seg, "ok", True):
            raise ValueError(f"lung segmentation failed: {getattr(seg, 'failure_reason', 'unknown reason')}")
        return seg.left, seg.right

    return source


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def to_sample(item: Any) -> Sample:
    """Normalise a dataset item into a :class:`Sample`.

    Accepts a :class:`Sample`, a :class:`training.phantoms.Phantom`-like object (``image``,
    ``left_lung``, ``right_lung``, ``labels`` dict, ``pixel_spacing_mm``), or a dict with keys
    ``image``, ``labels`` (vector in FINDINGS order or dict finding -> bool) and optionally
    ``left_lung``, ``right_lung``, ``pixel_spacing_mm`` (tensors or arrays).
    """
    if isinstance(item, Sample):
        return item
    get = item.get if isinstance(item, dict) else (lambda key, default=None: getattr(item, key, default))
    image = get("image")
    labels = get("labels")
    if image is None or labels is None:
        raise ValueError("a training item needs 'image' and 'labels'")
    if isinstance(labels, dict):
        labels = [float(bool(labels[name])) for name in FINDINGS]
    spacing = get("pixel_spacing_mm")
    if spacing is not None:
        spacing_arr = _as_numpy(spacing).astype(float).reshape(-1)
        spacing = None if spacing_arr.size != 2 or not np.all(spacing_arr > 0) else (float(spacing_arr[0]), float(spacing_arr[1]))
    left, right = get("left_lung"), get("right_lung")
    return Sample(
        image=_as_numpy(image).astype(np.float32, copy=False),
        labels=_as_numpy(labels).astype(np.float32).reshape(-1),
        left_lung=None if left is None else _as_numpy(left).astype(bool),
        right_lung=None if right is None else _as_numpy(right).astype(bool),
        pixel_spacing_mm=spacing,
    )


class PolicyDataset(Dataset):
    """A dataset as the classifier sees it under one policy.

    ``dataset[i]`` -> ``(x, y)``: ``x`` (1, S, S) float32 in [0, 1] (policy applied at source
    resolution, then resized), ``y`` (K,) float32.

    Parameters
    ----------
    base : a sequence of items accepted by :func:`to_sample` (phantoms, NIH records, ...)
    policy : ``original``, ``loose`` or ``tight``
    input_size : model input side S
    mask_source : :class:`MaskSource`; default the items' ground-truth masks. Not called for
        ``original``.
    """

    def __init__(self, base: Sequence[Any], policy: str, input_size: int, mask_source: MaskSource = ground_truth_masks):
        self.base = base
        self.policy = parse_policy(policy).value
        self.input_size = int(input_size)
        self.mask_source = mask_source

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = to_sample(self.base[index])
        if self.policy == "original":
            image = sample.image.astype(np.float32, copy=True)
        else:
            left, right = self.mask_source(sample)
            image = apply_policy(sample.image, left, right, self.policy, sample.pixel_spacing_mm)
        x = resize_images([image], self.input_size)[0]
        return x, torch.from_numpy(sample.labels.astype(np.float32))


def materialize(dataset: Dataset, *, progress: bool = True, desc: str = "preparing") -> TensorDataset:
    """Evaluate a (small) dataset once into memory: ``TensorDataset(X (N,1,S,S), Y (N,K))``."""
    xs, ys = [], []
    for i in tqdm(range(len(dataset)), desc=desc, disable=not progress, leave=False):
        x, y = dataset[i]
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError("the dataset is empty")
    return TensorDataset(torch.stack(xs), torch.stack(ys))


# ----------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainConfig:
    """Hyper-parameters of one classifier training run."""

    architecture: str = "resnet50"
    policy: str = "original"
    input_size: int = 224
    mean: float = 0.5
    std: float = 0.25
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    seed: int = 0
    num_workers: int = 0
    augment: bool = True
    max_shift_fraction: float = 0.04  # random translation, part of the input size
    device: str | None = None  # None: CUDA when available
    amp: bool = True  # float16 autocast + GradScaler, only on CUDA

    def __post_init__(self) -> None:
        self.policy = parse_policy(self.policy).value
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1; got {self.epochs} and {self.batch_size}")


@dataclass
class TrainResult:
    """What a training run produced."""

    classifier: ChestClassifier  # best-validation weights, thresholds chosen on validation
    val_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    steps: int
    epochs_run: int  # epochs run by this call (0 when resuming a finished run)
    seconds: float


def _augment(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random translation (zero fill) and a mild contrast/brightness change, per image."""
    b = x.shape[0]
    if max_shift > 0:
        shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator)
        out = torch.zeros_like(x)
        size = x.shape[-1]
        for i, (dy, dx) in enumerate(shifts.tolist()):
            ys, yd = (slice(0, size - dy), slice(dy, size)) if dy >= 0 else (slice(-dy, size), slice(0, size + dy))
            xs, xd = (slice(0, size - dx), slice(dx, size)) if dx >= 0 else (slice(-dx, size), slice(0, size + dx))
            out[i, :, yd, xd] = x[i, :, ys, xs]
        x = out
    gain = 1.0 + 0.1 * (torch.rand((b, 1, 1, 1), generator=generator) - 0.5)
    bias = 0.05 * (torch.rand((b, 1, 1, 1), generator=generator) - 0.5)
    return (x * gain + bias).clamp_(0.0, 1.0)


@torch.inference_mode()
def predict_dataset(
    net: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 128, num_workers: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(N, K)`` and labels ``(N, K)`` of a dataset of ``(x, y)`` pairs."""
    net.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    scores, labels = [], []
    for x, y in loader:
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits = net(x.to(device))
        scores.append(torch.sigmoid(logits.float()).cpu())
        labels.append(y)
    return torch.cat(scores).numpy(), torch.cat(labels).numpy()


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_classifier(
    train_data: Dataset,
    val_data: Dataset,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train a :class:`ChestNet` on ``(x, y)`` datasets (see :class:`PolicyDataset`).

    Parameters
    ----------
    train_data, val_data : datasets of ``(x (1, S, S) float32 in [0, 1], y (K,) float32)``,
        the policy already applied (:class:`PolicyDataset`, possibly :func:`materialize`-d).
    config : TrainConfig
    checkpoint_dir : folder for ``checkpoint.pt``, written after every epoch; ``None``: none.
    resume : continue from an existing checkpoint in ``checkpoint_dir`` (its epoch and step
        count, optimiser and scheduler state); ``config.epochs`` is the total to reach.
    progress : show tqdm bars.

    Returns
    -------
    TrainResult with the best-validation weights and thresholds (Youden's J on validation).
    """
    started = time.perf_counter()
    device = pick_device(config.device)
    use_amp = bool(config.amp and device.type == "cuda")
    seed_everything(config.seed)

    net = ChestNet(config.architecture, len(FINDINGS), config.mean, config.std).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, max(1, int(config.warmup_fraction * total_steps)))
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = nn.BCEWithLogitsLoss()

    start_epoch, step, history = 0, 0, []
    best_state: dict[str, torch.Tensor] | None = None
    best_score = -math.inf
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if ckpt_path is not None and resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        saved_cfg = ckpt["config"]
        for key in ("architecture", "policy", "input_size"):
            if saved_cfg[key] != getattr(config, key):
                raise ValueError(
                    f"{ckpt_path} was trained with {key}={saved_cfg[key]!r}, not {getattr(config, key)!r}; "
                    "use another checkpoint folder or resume=False"
                )
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step, history = int(ckpt["epoch"]), int(ckpt["step"]), list(ckpt["history"])
        best_state, best_score = ckpt["best_state"], float(ckpt["best_score"])
        torch.set_rng_state(ckpt["torch_rng"])
        logger.info("resuming classifier training from %s at epoch %d, step %d", ckpt_path, start_epoch, step)

    aug_gen = torch.Generator().manual_seed(config.seed + 1)
    max_shift = int(round(config.max_shift_fraction * config.input_size)) if config.augment else 0
    epochs_run = 0
    for epoch in range(start_epoch, config.epochs):
        net.train()
        shuffle_gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        aug_gen.manual_seed(config.seed * 1000 + epoch + 7)
        loader = DataLoader(
            train_data, batch_size=config.batch_size, shuffle=True, generator=shuffle_gen,
            num_workers=config.num_workers, drop_last=False,
        )
        running, seen = 0.0, 0
        bar = tqdm(loader, desc=f"{config.policy} epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for x, y in bar:
            if config.augment:
                x = _augment(x, aug_gen, max_shift)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            running += loss.detach().item() * len(x)
            seen += len(x)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        scores, labels = predict_dataset(net, val_data, device, num_workers=config.num_workers)
        metrics = classification_metrics(labels, scores)
        score = metrics["macro_auroc"] if metrics["macro_auroc"] is not None else -float(running / max(seen, 1))
        history.append(
            {"epoch": epoch + 1, "step": step, "train_loss": running / max(seen, 1),
             "val_macro_auroc": metrics["macro_auroc"], "val_auroc": metrics["auroc"]}
        )
        logger.info("epoch %d/%d: loss %.4f, val macro AUROC %s", epoch + 1, config.epochs, running / max(seen, 1), metrics["macro_auroc"])
        if score > best_score:
            best_score = score
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        epochs_run += 1
        if ckpt_path is not None:
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save(
                {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict(), "epoch": epoch + 1, "step": step, "history": history,
                 "best_state": best_state, "best_score": best_score, "config": asdict(config),
                 "torch_rng": torch.get_rng_state()},
                tmp,
            )
            tmp.replace(ckpt_path)

    if best_state is None:  # resumed a run that had already finished without validation data
        best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    scores, labels = predict_dataset(net, val_data, device, num_workers=config.num_workers)
    val_metrics = classification_metrics(labels, scores)
    thresholds = select_thresholds(labels, scores)
    cls_config = ClassifierConfig(
        architecture=config.architecture, input_size=config.input_size, mean=config.mean, std=config.std,
        labels=list(FINDINGS), policy=config.policy, thresholds=thresholds,
    )
    classifier = ChestClassifier(net.cpu(), cls_config, device="cpu")
    return TrainResult(classifier, val_metrics, history, step, epochs_run, time.perf_counter() - started)


def evaluate_classifier(classifier: ChestClassifier, dataset: Dataset) -> dict[str, Any]:
    """Metrics (:func:`classification_metrics`) of a classifier on a ``(x, y)`` dataset."""
    scores, labels = predict_dataset(classifier.net, dataset, classifier.device)
    return classification_metrics(labels, scores)


# ----------------------------------------------------------------------------------------------
# demo classifiers from phantoms


def phantom_fingerprint(parts: dict[str, Any]) -> str:
    """sha256 of a canonical JSON description of a phantom training set."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def demo_phantom_sets(seed: int, image_size: int, counts: tuple[int, int, int]) -> dict[str, Any]:
    """The three disjoint phantom sets (train, val, test) of the demo recipe."""
    from training.phantoms import PhantomDataset

    bases = (DEMO_TRAIN_SEED_BASE, DEMO_VAL_SEED_BASE, DEMO_TEST_SEED_BASE)
    return {
        name: PhantomDataset(n, image_size, seed=base + seed)
        for name, n, base in zip(("train", "val", "test"), counts, bases)
    }


class _PhantomItems(Sequence):
    """A PhantomDataset seen as a sequence of Phantom objects (for :func:`to_sample`)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        return self.dataset.phantom(index)


def train_demo_classifier(
    output_dir: str | Path,
    policy: str,
    *,
    seed: int = 0,
    architecture: str = DEMO_ARCHITECTURE,
    image_size: int = DEMO_IMAGE_SIZE,
    input_size: int = DEMO_INPUT_SIZE,
    n_train: int = DEMO_TRAIN_COUNT,
    n_val: int = DEMO_VAL_COUNT,
    n_test: int = DEMO_TEST_COUNT,
    epochs: int = DEMO_EPOCHS,
    batch_size: int = DEMO_BATCH_SIZE,
    learning_rate: float = DEMO_LEARNING_RATE,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    device: str | None = None,
) -> Path:
    """Train the demo classifier of one policy on phantoms; write ``weights.pt`` + ``classifier.json``.

    Recipe: ``n_train``/``n_val``/``n_test`` phantoms of ``image_size`` pixels from
    :class:`training.phantoms.PhantomDataset` with seeds ``10000+seed``, ``20000+seed`` and
    ``30000+seed`` (disjoint streams), the phantoms' GROUND-TRUTH lung masks (not the
    segmenter's: the demo classifier must not inherit the demo segmenter's errors), the policy
    applied by :func:`models.policies.apply_policy`, the small ``cxr_tiny`` backbone at 128 px.
    Thresholds are chosen on the validation set; metrics are measured on the held-out test set.

    Returns
    -------
    Path : ``output_dir`` (holding ``weights.pt`` and ``classifier.json``).

    ``classifier.json`` holds the :class:`ClassifierConfig` fields plus ``metrics`` (held-out
    per-label AUROC, macro AUROC, No Finding AUROC), ``validation_metrics``, ``training``
    (recipe, seconds, steps), ``policy_parameters`` and ``training_data`` (description and its
    sha256 ``fingerprint``).
    """
    policy = parse_policy(policy).value
    output_dir = Path(output_dir)
    torch_threads = torch.get_num_threads()
    sets = demo_phantom_sets(seed, image_size, (n_train, n_val, n_test))
    prepared = {
        name: materialize(PolicyDataset(_PhantomItems(ds), policy, input_size), progress=progress, desc=f"{policy} {name} phantoms")
        for name, ds in sets.items()
    }
    config = TrainConfig(
        architecture=architecture, policy=policy, input_size=input_size, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, weight_decay=1e-4, seed=seed, device=device,
    )
    result = train_classifier(prepared["train"], prepared["val"], config, checkpoint_dir, progress=progress)
    test_metrics = evaluate_classifier(result.classifier, prepared["test"])
    logger.info("demo classifier %s: held-out macro AUROC %.3f", policy, test_metrics["macro_auroc"])

    from training import phantoms

    data = {
        "generator": "training.phantoms.generate_phantom",
        "generator_version": getattr(phantoms, "GENERATOR_VERSION", "1"),
        "image_size": image_size,
        "finding_probability": sets["train"].finding_probability,
        "sets": {name: {"count": len(ds), "seed": ds.seed} for name, ds in sets.items()},
        "lung_masks": "ground truth (phantom)",
    }
    extra = {
        "metrics": {"test": test_metrics},
        "validation_metrics": result.val_metrics,
        "policy_parameters": describe_policy(policy),
        "training": {
            **{k: v for k, v in asdict(config).items() if k not in ("device",)},
            "steps": result.steps,
            "seconds": round(result.seconds, 1),
            "torch_threads": torch_threads,
            "history": result.history,
        },
        "training_data": {**data, "fingerprint": phantom_fingerprint(data)},
        "clinical_use": False,
        "note": "Demo model trained on synthetic phantoms. Not for clinical use.",
    }
    result.classifier.save(output_dir, extra)
    return output_dir


def load_demo_metadata(directory: str | Path) -> dict[str, Any]:
    """The JSON written next to a demo classifier's weights."""
    return json.loads((Path(directory) / DEMO_METADATA_NAME).read_text())
