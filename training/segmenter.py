"""Fine-tuning of the SAM-architecture lung segmenter, the MedSAM recipe, and the demo segmenter.

The recipe is the one the official MedSAM code fine-tunes with:

- the prompt encoder is frozen; the image encoder and mask decoder train;
- loss = Dice (on sigmoid probabilities, squared denominator) + binary cross-entropy, on the
  decoder's logits upsampled bilinearly to the input size ``S``; plus, as in LiteMedSAM, the
  mean squared error between the decoder's predicted IoU and the IoU its mask actually reached
  (so that the quality measure and the plausibility floor mean something);
- AdamW, learning rate 1e-4, weight decay 0.01;
- box prompts: each lung's tight bounding box with every side moved outward by a random 0-20 px
  in 1024 px space (scaled by ``S / 1024`` for smaller inputs).

Our addition for prompt-free use: with probability ``coarse_box_probability`` a lung is prompted
with the coarse default box of its image half (randomly shrunk/grown a little), which is how
:meth:`models.segmenter.LungSegmenter.segment` starts on an unseen radiograph.

Training data is any :data:`SampleSource`: a callable that draws one ``(image, left_mask,
right_mask)`` example from a numpy ``Generator`` (phantoms generated on the fly, or a random pick
from an image-and-mask folder via :func:`source_from_sequence`). Each step draws its examples from
``default_rng([seed, step])``, so that a resumed run sees exactly the data an uninterrupted one
would. Checkpoints (model, optimiser, step) are written every ``checkpoint_every`` steps and
resumed from automatically; mixed precision (bfloat16 autocast) is used on CUDA.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from skimage import transform as sk_transform
from tqdm import tqdm

from models.segmenter import LungSegmenter, build_segmenter, get_architecture
from models.segmenter.boxes import default_boxes, mask_bounding_box
from models.segmenter.predictor import SIDES
from models.segmenter.transforms import preprocess_image
from training.evaluation import dice
from training.seeding import seed_everything

logger = logging.getLogger(__name__)

#: One training example: ``(image (H, W) float [0, 1], left (H, W) bool, right (H, W) bool)``.
Example = tuple[np.ndarray, np.ndarray, np.ndarray]

#: Draws one example; must use only the generator it is given (reproducibility, resume).
SampleSource = Callable[[np.random.Generator], Example]

#: MedSAM's box jitter: each side moved outward by 0..20 px at 1024 px.
MEDSAM_BOX_JITTER_PX = 20.0
MEDSAM_REFERENCE_SIZE = 1024

CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_NAME = "weights.pt"
REPORT_NAME = "training.json"

#: Phantom size used for the demo segmenter's training and held-out evaluation.
DEMO_PHANTOM_SIZE = 256


@dataclass
class SegmenterTrainingConfig:
    """Settings of one segmenter training run (recorded in the checkpoint and the report)."""

    architecture: str = "sam_tiny"
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    cosine_decay: bool = False
    box_jitter_px: float = MEDSAM_BOX_JITTER_PX  # in 1024 px space
    coarse_box_probability: float = 0.3
    iou_loss_weight: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None


def source_from_sequence(examples: Sequence[Example]) -> SampleSource:
    """A :data:`SampleSource` that picks a random item of an indexable dataset of examples."""
    if len(examples) == 0:
        raise ValueError("the training dataset is empty; point it at a folder with images and masks")

    def draw(rng: np.random.Generator) -> Example:
        return examples[int(rng.integers(len(examples)))]

    return draw


def mask_folder_source(root: Path) -> SampleSource:
    """A :data:`SampleSource` over an image-and-mask folder (JSRT, Montgomery, Shenzhen layouts).

    Reads with :class:`training.datasets.folders.LungMaskFolder` (left/right assigned by position,
    PA display orientation); each draw picks a random image.
    """
    from training.datasets.folders import LungMaskFolder

    folder = LungMaskFolder(Path(root))
    if len(folder) == 0:
        raise ValueError(f"{root} holds no image with lung masks; see training.datasets.folders for the layouts")

    def draw(rng: np.random.Generator) -> Example:
        return folder.read(int(rng.integers(len(folder))))

    return draw


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == (size, size):
        return mask
    resized = sk_transform.resize(mask.astype(np.float32), (size, size), order=1, anti_aliasing=True)
    return resized > 0.5


def _jittered_box(mask: np.ndarray, jitter: int, rng: np.random.Generator) -> np.ndarray:
    """Tight box of a ``(S, S)`` mask with each side moved outward by 0..jitter px, clipped."""
    size = mask.shape[0]
    tight = mask_bounding_box(mask)
    if tight is None:
        raise ValueError("a training example has an empty lung mask; every example needs both lungs")
    x0, y0, x1, y1 = tight
    shifts = rng.integers(0, jitter + 1, size=4) if jitter > 0 else np.zeros(4)
    return np.array(
        [max(0.0, x0 - shifts[0]), max(0.0, y0 - shifts[1]), min(size, x1 + shifts[2]), min(size, y1 + shifts[3])],
        dtype=np.float32,
    )


def _coarse_box(side: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The coarse default box of one lung at ``S x S``, each side moved by up to 2% of ``S``."""
    box = np.array(default_boxes((size, size))[side], dtype=np.float32)
    box += rng.uniform(-0.02, 0.02, size=4).astype(np.float32) * size
    return np.clip(box, 0, size)


def make_batch(
    source: SampleSource, rng: np.random.Generator, config: SegmenterTrainingConfig, input_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw and prepare one training batch.

    Returns
    -------
    images, masks, boxes
        ``(N, 3, S, S)`` float32 in ``[0, 1]`` (MedSAM preprocessing), ``(N, 2, S, S)`` float32
        ground truth (channel 0 left, 1 right), ``(N, 2, 1, 4)`` float32 boxes ``xyxy`` in input
        pixels.
    """
    jitter = int(round(config.box_jitter_px * input_size / MEDSAM_REFERENCE_SIZE))
    images, masks, boxes = [], [], []
    for _ in range(config.batch_size):
        image, left, right = source(rng)
        images.append(preprocess_image(image, input_size))
        pair = {"left": _resize_mask(left, input_size), "right": _resize_mask(right, input_size)}
        masks.append(np.stack([pair[s] for s in SIDES]).astype(np.float32))
        sample_boxes = []
        for side in SIDES:
            if rng.random() < config.coarse_box_probability:
                sample_boxes.append(_coarse_box(side, input_size, rng))
            else:
                sample_boxes.append(_jittered_box(pair[side], jitter, rng))
        boxes.append(np.stack(sample_boxes)[:, None, :])
    return (
        torch.from_numpy(np.stack(images)),
        torch.from_numpy(np.stack(masks)),
        torch.from_numpy(np.stack(boxes)),
    )


def forward_batch(sam: Sam, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the network on a training batch.

    Parameters
    ----------
    images:
        ``(N, 3, S, S)`` preprocessed images.
    boxes:
        ``(N, P, 1, 4)`` box prompts per image, input pixels.

    Returns
    -------
    logits, iou
        ``(N, P, S/4, S/4)`` low-resolution mask logits and ``(N, P)`` predicted IoU.
    """
    embeddings = sam.image_encoder(images)
    image_pe = sam.prompt_encoder.get_dense_pe()
    all_logits, all_iou = [], []
    for index in range(images.shape[0]):
        with torch.no_grad():  # the prompt encoder is frozen (MedSAM)
            sparse, dense = sam.prompt_encoder(points=None, boxes=boxes[index], masks=None)
        logits, iou = sam.mask_decoder(
            image_embeddings=embeddings[index : index + 1],
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        all_logits.append(logits[:, 0])
        all_iou.append(iou[:, 0])
    return torch.stack(all_logits), torch.stack(all_iou)


def segmentation_loss(
    logits: torch.Tensor, iou_pred: torch.Tensor, truth: torch.Tensor, iou_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dice + BCE on logits upsampled to the truth's size, plus the IoU-head MSE.

    Parameters
    ----------
    logits:
        ``(N, P, s, s)`` low-resolution logits.
    iou_pred:
        ``(N, P)`` predicted IoU.
    truth:
        ``(N, P, S, S)`` float ground truth in ``{0, 1}``.
    """
    logits = F.interpolate(logits.float(), size=truth.shape[-2:], mode="bilinear", align_corners=False)
    probabilities = torch.sigmoid(logits)
    dims = (-2, -1)
    intersection = (probabilities * truth).sum(dims)
    denominator = (probabilities**2).sum(dims) + (truth**2).sum(dims)
    dice = (1.0 - (2.0 * intersection + 1e-5) / (denominator + 1e-5)).mean()
    bce = F.binary_cross_entropy_with_logits(logits, truth)
    with torch.no_grad():
        hard = probabilities > 0.5
        inter = (hard & (truth > 0.5)).sum(dims).float()
        union = (hard | (truth > 0.5)).sum(dims).float()
        iou_true = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    iou_mse = F.mse_loss(iou_pred.float(), iou_true)
    loss = dice + bce + iou_weight * iou_mse
    return loss, {"dice_loss": float(dice.detach()), "bce": float(bce.detach()), "iou_mse": float(iou_mse.detach())}


def _learning_rate(config: SegmenterTrainingConfig, step: int) -> float:
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.cosine_decay:
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return config.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return config.lr


def train_segmenter(
    source: SampleSource,
    output_dir: Path,
    config: SegmenterTrainingConfig,
    *,
    initial_weights: Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Train (or fine-tune) a segmenter with the MedSAM recipe; return the weights file.

    Parameters
    ----------
    source:
        Draws training examples, see :data:`SampleSource`.
    output_dir:
        Receives ``checkpoint.pt`` (resumable state), ``weights.pt`` (plain state dict,
        loadable by :func:`models.segmenter.build_segmenter`) and ``training.json``.
    config:
        Run settings; ``config.architecture`` names a registry entry.
    initial_weights:
        Plain state dict to fine-tune from (e.g. ``medsam_vit_b.pth``); ``None`` trains from
        the random initialisation.
    resume:
        Continue from ``output_dir/checkpoint.pt`` when it exists.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if config.steps < 1 or config.batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive; got {config.steps} and {config.batch_size}")
    arch = get_architecture(config.architecture)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device = torch.device(config.device)
    sam = build_segmenter(arch.name, initial_weights).to(device)
    sam.train()
    for parameter in sam.prompt_encoder.parameters():
        parameter.requires_grad = False
    trainable = [p for p in sam.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)

    start_step = 0
    checkpoint_path = output_dir / CHECKPOINT_NAME
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state["config"]["architecture"] != arch.name:
            raise ValueError(
                f"{checkpoint_path} was written for {state['config']['architecture']!r}, not {arch.name!r}; "
                "use another output folder or delete the checkpoint"
            )
        sam.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start_step = int(state["step"])
        logger.info("resuming segmenter training at step %d from %s", start_step, checkpoint_path)

    use_amp = device.type == "cuda"
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, disable=not progress,
               desc=f"segmenter {arch.name}", unit="step")
    for step in bar:
        rng = np.random.default_rng([config.seed, step])
        images, truth, boxes = make_batch(source, rng, config, arch.image_size)
        images, truth, boxes = images.to(device), truth.to(device), boxes.to(device)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits, iou = forward_batch(sam, images, boxes)
        loss, parts = segmentation_loss(logits, iou, truth, config.iou_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record = {"step": step + 1, "loss": float(loss.detach()), **parts}
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", dice=f"{parts['dice_loss']:.3f}")
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            _save_checkpoint(checkpoint_path, sam, optimizer, done, config)

    sam.eval()
    weights_path = output_dir / WEIGHTS_NAME
    torch.save(sam.state_dict(), weights_path)
    report = {
        "architecture": arch.name,
        "input_size": arch.image_size,
        "config": asdict(config),
        "seconds": round(time.perf_counter() - started, 1),
        "last_losses": history[-20:],
    }
    (output_dir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    return weights_path


def _save_checkpoint(path: Path, sam: Sam, optimizer: torch.optim.Optimizer, step: int,
                     config: SegmenterTrainingConfig) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(
        {
            "model": sam.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "config": asdict(config),
            "torch_rng": torch.get_rng_state(),
        },
        temporary,
    )
    temporary.replace(path)


def evaluate_segmenter(segmenter: LungSegmenter, examples: Sequence[Example]) -> dict[str, float]:
    """Dice per lung with automatic boxes (no ground-truth boxes) on held-out examples.

    Returns
    -------
    dict
        ``mean_dice_left``, ``mean_dice_right``, ``min_dice_left``, ``min_dice_right``, ``failures``
        (segmentations the plausibility check rejected; they score Dice 0), ``count``.
    """
    dices: dict[str, list[float]] = {"left": [], "right": []}
    failures = 0
    for image, left, right in examples:
        result = segmenter.segment(image)
        failures += int(not result.ok)
        dices["left"].append(dice(result.left, left))
        dices["right"].append(dice(result.right, right))
    return {
        "mean_dice_left": float(np.mean(dices["left"])),
        "mean_dice_right": float(np.mean(dices["right"])),
        "min_dice_left": float(np.min(dices["left"])),
        "min_dice_right": float(np.min(dices["right"])),
        "failures": failures,
        "count": len(examples),
    }


# ----------------------------------------------------------------------------------------------
# the demo segmenter: the small SAM trained from scratch on phantoms

#: Architecture, schedule and data of the demo segmenter (about 2,400 phantoms seen once each).
DEMO_ARCHITECTURE = "sam_tiny"
DEMO_STEPS = 300
DEMO_BATCH_SIZE = 8
#: From scratch a higher rate than the fine-tuning 1e-4 is needed to converge in 300 steps.
DEMO_LR = 1e-3
DEMO_WARMUP_STEPS = 20
#: Phantom sizes drawn for training (and their probabilities): the model sees images that were
#: downsampled to its 256 px input as well as native ones.
DEMO_PHANTOM_SIZES = (256, 320, 512)
DEMO_PHANTOM_SIZE_PROBABILITIES = (0.5, 0.25, 0.25)
#: Held-out phantoms: integer seeds from here on; training draws from ``default_rng([seed, step])``
#: streams, so no held-out phantom is ever a training example.
HELD_OUT_SEED_BASE = 900_000
DEMO_HELD_OUT_COUNT = 30
DEMO_SUMMARY_NAME = "segmenter.json"


def phantom_source(
    sizes: Sequence[int] = DEMO_PHANTOM_SIZES,
    probabilities: Sequence[float] = DEMO_PHANTOM_SIZE_PROBABILITIES,
    finding_probability: float = 0.3,
) -> SampleSource:
    """A :data:`SampleSource` of fresh phantoms (``training.phantoms``), generated on the fly."""
    from training.phantoms import generate_phantom

    def draw(rng: np.random.Generator) -> Example:
        size = int(rng.choice(np.asarray(sizes), p=np.asarray(probabilities)))
        phantom = generate_phantom(size, seed=rng, finding_probability=finding_probability)
        return phantom.image, phantom.left_lung, phantom.right_lung

    return draw


def held_out_phantoms(count: int = DEMO_HELD_OUT_COUNT, size: int = DEMO_PHANTOM_SIZE) -> list[Example]:
    """Phantoms the demo segmenter never trains on (integer seeds from :data:`HELD_OUT_SEED_BASE`)."""
    from training.phantoms import generate_phantom

    examples = []
    for index in range(count):
        phantom = generate_phantom(size, seed=HELD_OUT_SEED_BASE + index)
        examples.append((phantom.image, phantom.left_lung, phantom.right_lung))
    return examples


def train_demo_segmenter(
    output_dir: Path,
    *,
    seed: int = 0,
    steps: int = DEMO_STEPS,
    batch_size: int = DEMO_BATCH_SIZE,
    threads: int | None = 2,
    evaluate: bool = True,
    progress: bool = True,
    keep_checkpoints: bool = False,
) -> Path:
    """Train the demo segmenter (small SAM, from scratch, on phantoms) and write its weights.

    Writes ``output_dir/weights.pt`` (a plain float16 state dict of :data:`DEMO_ARCHITECTURE`,
    about 6 MB; :func:`models.segmenter.build_segmenter` loads it into float32) and
    ``output_dir/segmenter.json`` (architecture, input size, seed, steps, held-out Dice with
    automatic boxes). Checkpoints go to ``output_dir/_training`` and an interrupted run resumes
    from there; they are removed at the end unless ``keep_checkpoints``.

    Takes a few minutes on 2 CPU cores. ``threads=2`` is fastest on an idle 2-core machine; on a
    machine busy with other CPU-heavy work pass ``threads=1`` (seen here: a 2-thread run under a
    load average of 12 was about four times slower than a 1-thread one). The weights depend on
    the thread count (floating-point summation order); ``segmenter.json`` records it.
    Returns the weights path.
    """
    import shutil

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    work_dir = output_dir / "_training"
    config = SegmenterTrainingConfig(
        architecture=DEMO_ARCHITECTURE,
        steps=steps,
        batch_size=batch_size,
        lr=DEMO_LR,
        warmup_steps=DEMO_WARMUP_STEPS,
        cosine_decay=True,
        seed=seed,
        threads=threads,
        checkpoint_every=50,
    )
    started = time.perf_counter()
    trained = train_segmenter(phantom_source(), work_dir, config, resume=True, progress=progress)
    seconds = time.perf_counter() - started
    state = torch.load(trained, map_location="cpu", weights_only=True)
    weights_path = output_dir / WEIGHTS_NAME
    torch.save({key: value.half() if value.is_floating_point() else value for key, value in state.items()},
               weights_path)
    arch = get_architecture(DEMO_ARCHITECTURE)
    summary: dict[str, object] = {
        "architecture": arch.name,
        "input_size": arch.image_size,
        "weights_dtype": "float16",
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": DEMO_LR,
        "training_data": {
            "generator": "training.phantoms.generate_phantom",
            "sizes": list(DEMO_PHANTOM_SIZES),
            "size_probabilities": list(DEMO_PHANTOM_SIZE_PROBABILITIES),
            "examples": steps * batch_size,
        },
        "threads": threads,
        "training_seconds": round(seconds, 1),
        "clinical_use": False,
    }
    if evaluate:
        segmenter = LungSegmenter(build_segmenter(arch.name, weights_path))
        metrics = evaluate_segmenter(segmenter, held_out_phantoms())
        summary["held_out"] = {
            "seeds": f"{HELD_OUT_SEED_BASE}..{HELD_OUT_SEED_BASE + DEMO_HELD_OUT_COUNT - 1}",
            "size": DEMO_PHANTOM_SIZE,
            "boxes": "automatic (coarse half-image boxes refined from the masks)",
            **metrics,
        }
        logger.info("demo segmenter held-out Dice: left %.3f, right %.3f",
                    metrics["mean_dice_left"], metrics["mean_dice_right"])
    (output_dir / DEMO_SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    if not keep_checkpoints:
        shutil.rmtree(work_dir, ignore_errors=True)
    return weights_path
