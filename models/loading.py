"""Loading model versions from the store into ready-to-run objects, once per process.

:func:`load_models` returns a :class:`ModelBundle`: the active segmenter and the active classifier
of each mask policy, checked (manifest schema, sha256, strict state-dict keys) and moved to the
device. The node loads one bundle per worker process and reuses it for every image;
:func:`models.analyze` loads a default bundle (embedded demo models) on first use.

:func:`import_medsam` registers an official ``medsam_vit_b.pth`` as a segmenter version.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from models.checkpoint import CheckpointError
from models.classifier import ChestClassifier, ClassifierConfig
from models.labels import LUNG_SIDES
from models.policies import MaskPolicy, parse_policy
from models.segmenter import LungSegmenter, build_segmenter, get_architecture
from models.store import (
    DEMO_STORE_DIR,
    ROLE_CLASSIFIER,
    ROLE_SEGMENTER,
    ManifestError,
    ModelIntegrityError,
    ModelNotFoundError,
    ModelStore,
    ModelVersion,
    sha256_file,
    write_version,
)

logger = logging.getLogger(__name__)

#: Normalisation names written in manifests (see :data:`models.store.NORMALISATIONS`).
SEGMENTER_NORMALISATION = "minmax"  # MedSAM: min-max to [0, 1], no mean/std
CLASSIFIER_NORMALISATION = "meanstd"  # ChestNet: [0, 1], then (x - mean) / std from parameters

#: File name of an imported official MedSAM checkpoint inside its version folder.
MEDSAM_WEIGHTS_FILENAME = "medsam_vit_b.pth"
MEDSAM_ARCHITECTURE = "sam_vit_b"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as torch reads it.

    Raises ``ValueError`` for an unknown device name or CUDA asked for where there is none.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown torch device {device!r}; use auto, cpu, cuda or cuda:N") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device here; use auto or cpu")
    return resolved


def load_segmenter(version: ModelVersion, device: str | torch.device = "cpu") -> LungSegmenter:
    """Build and load a segmenter version (sha256 checked, keys strict) on ``device``.

    Raises
    ------
    ManifestError
        Unknown architecture, or an input size that differs from the architecture's.
    ModelIntegrityError
        Damaged weights, or weights that do not fit the architecture (naming the keys and file).
    """
    m = version.manifest
    if m.role != ROLE_SEGMENTER:
        raise ValueError(f"{version.ref} is a {m.role}, not a segmenter")
    try:
        arch = get_architecture(m.architecture)
    except ValueError as error:
        raise ManifestError(f"{version.folder}: {error}") from error
    if m.input_size != (arch.image_size, arch.image_size):
        raise ManifestError(
            f"{version.folder}: manifest input size {m.input_size} differs from architecture "
            f"{arch.name}'s {arch.image_size} x {arch.image_size}; rebuild or re-import the version"
        )
    version.verify()
    try:
        sam = build_segmenter(m.architecture, version.weights_path)
    except CheckpointError as error:
        raise ModelIntegrityError(f"{error} (model {version.ref}); rebuild or re-import it") from error
    return LungSegmenter(sam, device=resolve_device(device))


def classifier_config(version: ModelVersion) -> ClassifierConfig:
    """The :class:`ClassifierConfig` a classifier version's manifest describes."""
    m = version.manifest
    height, width = m.input_size
    if height != width:
        raise ManifestError(f"{version.folder}: classifier input must be square; got {height} x {width}")
    if m.input["normalisation"] != CLASSIFIER_NORMALISATION or set(m.parameters) != {"mean", "std"}:
        raise ManifestError(
            f"{version.folder}: a classifier manifest has normalisation {CLASSIFIER_NORMALISATION!r} with "
            f"parameters mean and std; got {m.input['normalisation']!r} and {sorted(m.parameters)}"
        )
    try:
        return ClassifierConfig(
            architecture=m.architecture,
            input_size=height,
            mean=float(m.parameters["mean"]),
            std=float(m.parameters["std"]),
            labels=list(m.labels),
            policy=str(m.policy),
            thresholds=dict(m.thresholds),
        )
    except ValueError as error:
        raise ManifestError(f"{version.folder}: {error}") from error


def load_classifier(version: ModelVersion, device: str | torch.device = "cpu") -> ChestClassifier:
    """Build and load a classifier version (sha256 checked, keys strict) on ``device``.

    Raises
    ------
    ManifestError
        The manifest does not describe a classifier this package can build.
    ModelIntegrityError
        Damaged weights, or weights that do not fit the architecture (naming the keys and file).
    """
    if version.manifest.role != ROLE_CLASSIFIER:
        raise ValueError(f"{version.ref} is a {version.manifest.role}, not a classifier")
    config = classifier_config(version)
    state = version.load_state_dict()  # sha256 checked, read on the CPU
    try:
        return ChestClassifier.from_state_dict(state, config, source=version.weights_path, device=resolve_device(device))
    except ValueError as error:
        raise ModelIntegrityError(f"{error} (model {version.ref}); rebuild or re-import it") from error


class _StageClock:
    """Times the image encoder inside :meth:`LungSegmenter.segment` with forward hooks.

    The segmenter runs preprocessing, then the image encoder once, then prompt encoder and mask
    decoder (several rounds of box refinement, post-processing, plausibility check). The hooks
    mark the encoder's start and end, per thread, which splits one ``segment`` call into
    ``preprocess`` (start to encoder start), ``image_encoder`` and ``mask_decoder`` (encoder end to
    return). On CUDA the hooks synchronise so that the split is real.
    """

    def __init__(self, segmenter: LungSegmenter) -> None:
        self._local = threading.local()
        self._cuda = segmenter.device.type == "cuda"
        encoder = segmenter.sam.image_encoder
        encoder.register_forward_pre_hook(self._before)
        encoder.register_forward_hook(self._after)

    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _before(self, module: Any, args: Any) -> None:
        self._local.encoder_start = self._now()

    def _after(self, module: Any, args: Any, output: Any) -> None:
        self._local.encoder_end = self._now()
        self._local.encoder_calls = getattr(self._local, "encoder_calls", 0) + 1

    def run(self, segmenter: LungSegmenter, image: Any) -> tuple[Any, dict[str, float], int]:
        """``segmenter.segment(image)``, its stage timings in seconds and the number of encoder calls."""
        self._local.encoder_calls = 0
        self._local.encoder_start = self._local.encoder_end = None
        start = self._now()
        segmentation = segmenter.segment(image)
        end = self._now()
        enc_start, enc_end = self._local.encoder_start, self._local.encoder_end
        if enc_start is None or enc_end is None:  # pragma: no cover - a segmenter that never encodes
            return segmentation, {"preprocess": 0.0, "image_encoder": 0.0, "mask_decoder": end - start}, 0
        timings = {"preprocess": enc_start - start, "image_encoder": enc_end - enc_start, "mask_decoder": end - enc_end}
        return segmentation, timings, int(self._local.encoder_calls)


@dataclass
class ModelBundle:
    """The active models, loaded once and reused for every image.

    Attributes
    ----------
    store : where the versions came from.
    device : the torch device every model runs on.
    segmenter, segmenter_version : the lung segmenter and its store version.
    classifiers, classifier_versions : per mask policy, the classifier and its store version.
        Policies not loaded up front are loaded on first use (thread-safe).
    """

    store: ModelStore
    device: torch.device
    segmenter: LungSegmenter
    segmenter_version: ModelVersion
    classifiers: dict[str, ChestClassifier] = field(default_factory=dict)
    classifier_versions: dict[str, ModelVersion] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._clock = _StageClock(self.segmenter)
        #: Image-encoder calls made through :meth:`segment` so far (one per analysed image).
        self.encoder_calls = 0

    def classifier_for(self, policy: MaskPolicy | str) -> tuple[ChestClassifier, ModelVersion]:
        """The active classifier of ``policy`` and its version (loaded on first use)."""
        name = parse_policy(policy).value
        with self._lock:
            if name not in self.classifiers:
                version = self.store.active_classifier(name)
                self.classifiers[name] = load_classifier(version, self.device)
                self.classifier_versions[name] = version
            return self.classifiers[name], self.classifier_versions[name]

    def segment(self, image: Any) -> tuple[Any, dict[str, float]]:
        """Segment both lungs: ``(LungSegmentation, {"preprocess", "image_encoder", "mask_decoder"} seconds)``."""
        segmentation, timings, calls = self._clock.run(self.segmenter, image)
        with self._lock:
            self.encoder_calls += calls
        return segmentation, timings

    def describe(self) -> dict[str, Any]:
        """Refs and device, for logs and ``status``."""
        return {
            "device": str(self.device),
            "segmenter": self.segmenter_version.ref,
            "classifiers": {policy: v.ref for policy, v in sorted(self.classifier_versions.items())},
        }


def load_models(
    model_dir: Path | None,
    device: str = "auto",
    *,
    policies: Sequence[str] | None = None,
    fallback: Path | None = DEMO_STORE_DIR,
) -> ModelBundle:
    """Load the active segmenter and classifiers from the store.

    Parameters
    ----------
    model_dir : the writable store root (``settings.model_dir`` or ``<data_dir>/models``); ``None``
        for the bundled demo store alone. Active versions there override the demo store's.
    device : ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    policies : classifiers to load now; default every policy with an active classifier. Others
        load on first use.
    fallback : the read-only store searched after ``model_dir`` (the bundled demo store).

    Raises
    ------
    ModelNotFoundError, ManifestError, ModelIntegrityError
        No active version, a bad manifest, damaged weights — each naming the file and the fix.
    """
    store = ModelStore(model_dir, fallback=fallback)
    resolved = resolve_device(device)
    seg_version = store.active_segmenter()
    bundle = ModelBundle(store=store, device=resolved, segmenter=load_segmenter(seg_version, resolved), segmenter_version=seg_version)
    wanted = list(policies) if policies is not None else sorted(store.active()[ROLE_CLASSIFIER])
    for policy in wanted:
        bundle.classifier_for(policy)
    logger.info("models loaded: %s", bundle.describe())
    return bundle


def import_medsam(
    store: ModelStore,
    checkpoint: Path,
    *,
    name: str = "medsam_vit_b",
    version: str | None = None,
    clinical_use: bool = False,
    created_at: str | None = None,
) -> ModelVersion:
    """Register an official ``medsam_vit_b.pth`` as a segmenter version of ``store``'s writable root.

    The checkpoint is first loaded strictly into ``sam_vit_b`` (keys unchanged), then copied byte
    for byte as ``medsam_vit_b.pth`` with a manifest and a model card. ``version`` defaults to
    ``<UTC date>-<first 8 hex digits of its sha256>``.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} does not exist; give the path of medsam_vit_b.pth")
    try:
        build_segmenter(MEDSAM_ARCHITECTURE, checkpoint)  # strict load: refuses foreign files early
    except CheckpointError as error:
        raise ModelIntegrityError(str(error)) from error
    sha = sha256_file(checkpoint)
    version = version or f"{dt.datetime.now(dt.timezone.utc):%Y.%m.%d}-{sha[:8]}"
    root = store.root
    if root is None:
        raise ModelNotFoundError("the store has no writable root to import into; set CXR_NODE_MODEL_DIR or CXR_NODE_DATA_DIR")
    size = get_architecture(MEDSAM_ARCHITECTURE).image_size
    return write_version(
        root,
        role=ROLE_SEGMENTER,
        name=name,
        version=version,
        architecture=MEDSAM_ARCHITECTURE,
        weights=checkpoint,
        weights_file=MEDSAM_WEIGHTS_FILENAME,
        input_size=(size, size),
        channels=3,
        normalisation=SEGMENTER_NORMALISATION,
        labels=LUNG_SIDES,
        intended_use=(
            "Lung segmentation (left and right lung) on frontal chest radiographs with MedSAM ViT-B and "
            "automatic box prompts. Research use; not validated for clinical use by this node."
        ),
        training_data_description=(
            f"MedSAM (Ma et al., Nature Communications 2024), official checkpoint {checkpoint.name}, "
            "fine-tuned by its authors from SAM ViT-B on about 1.5 million medical image-mask pairs."
        ),
        training_data_fingerprint=sha,
        clinical_use=clinical_use,
        created_at=created_at,
    )
