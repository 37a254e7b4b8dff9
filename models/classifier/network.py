"""The chest classifier: a backbone, global average pooling, five sigmoid outputs.

:class:`ChestNet` is the ``nn.Module`` (its state dict is the weights file);
:class:`ClassifierConfig` is everything needed to rebuild and use it (architecture, input size,
normalisation, labels, the mask policy it was trained under, operating thresholds);
:class:`ChestClassifier` puts the two together for batched inference on CPU or CUDA.

Input convention everywhere: grey images in [0, 1] (float32). Resizing and normalisation live
in this module and are used identically by training (:mod:`training.classifier`) and inference:
resize straight to ``input_size x input_size`` (bilinear, anti-aliased, aspect not kept), then
``(x - mean) / std`` inside :meth:`ChestNet.forward` (the constants are buffers of the network).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.checkpoint import load_state_dict_strict, read_state_dict
from models.classifier.backbones import DEFAULT_BACKBONE, build_backbone
from models.labels import FINDINGS
from models.policies import MaskPolicy, apply_policy, parse_policy
from models.result import FindingRegion

logger = logging.getLogger(__name__)

#: Default model input side in pixels (ImageNet-sized backbones).
DEFAULT_INPUT_SIZE = 224
#: Default normalisation of [0, 1] grey images: (x - mean) / std.
DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.25
#: Default inference batch size.
DEFAULT_BATCH_SIZE = 32
#: Default decision threshold for a label that has none chosen on validation data.
DEFAULT_THRESHOLD = 0.5


@dataclass
class ClassifierConfig:
    """Everything besides the weights that defines a classifier.

    Serialised as JSON next to the weights (``classifier.json``); the model store copies it
    into its manifest.
    """

    architecture: str = DEFAULT_BACKBONE
    input_size: int = DEFAULT_INPUT_SIZE
    mean: float = DEFAULT_MEAN
    std: float = DEFAULT_STD
    labels: list[str] = field(default_factory=lambda: list(FINDINGS))
    policy: str = MaskPolicy.ORIGINAL.value
    thresholds: dict[str, float] = field(default_factory=lambda: {k: DEFAULT_THRESHOLD for k in FINDINGS})

    def __post_init__(self) -> None:
        self.policy = parse_policy(self.policy).value
        if int(self.input_size) < 32:
            raise ValueError(f"input_size must be at least 32 pixels; got {self.input_size}")
        self.input_size = int(self.input_size)
        if not float(self.std) > 0:
            raise ValueError(f"normalisation std must be positive; got {self.std}")
        if list(self.labels) != list(FINDINGS):
            raise ValueError(f"classifier labels must be {list(FINDINGS)} in that order; got {list(self.labels)}")
        missing = [k for k in self.labels if k not in self.thresholds]
        if missing:
            raise ValueError(f"thresholds missing for labels {missing}; give one per label in {list(self.labels)}")
        self.thresholds = {k: float(self.thresholds[k]) for k in self.labels}

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "ClassifierConfig":
        """Build from a dict, ignoring keys that are not configuration (metrics, fingerprints)."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)  # type: ignore[arg-type]


class ChestNet(nn.Module):
    """Backbone -> global average pooling -> linear (one logit per finding).

    ``forward`` takes ``(B, 1, S, S)`` images in [0, 1] and returns ``(B, K)`` logits; the
    normalisation ``(x - mean) / std`` happens inside, from buffers saved with the weights.
    """

    def __init__(
        self,
        architecture: str = DEFAULT_BACKBONE,
        num_outputs: int = len(FINDINGS),
        mean: float = DEFAULT_MEAN,
        std: float = DEFAULT_STD,
    ) -> None:
        super().__init__()
        backbone = build_backbone(architecture)
        self.architecture = architecture
        self.features = backbone.features
        self.head = nn.Linear(backbone.channels, num_outputs)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` in [0, 1] -> last convolutional features ``(B, C, h, w)``."""
        return self.features((x - self.mean) / self.std)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, K)`` and the last feature map ``(B, C, h, w)`` of one forward pass.

        The logits are exactly :meth:`forward`'s; the features give the class activation maps
        (:meth:`class_activation_maps`) without running the backbone a second time.
        """
        feats = self.feature_maps(x)
        return self.head(feats.mean(dim=(2, 3))), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` in [0, 1] -> logits ``(B, K)``."""
        return self.forward_with_features(x)[0]

    def class_activation_maps(self, feats: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``(B, K, h, w)`` of features ``(B, C, h, w)``.

        ``cam[b, k] = sum_c w[k, c] * f[b, c]``: the head's weights applied at every position of
        the last feature map (Zhou et al., CVPR 2016); its spatial mean plus the bias is the logit.
        """
        return torch.einsum("kc,bchw->bkhw", self.head.weight.to(feats.dtype), feats)


def resize_images(
    images: Sequence[np.ndarray] | np.ndarray | torch.Tensor, input_size: int
) -> torch.Tensor:
    """Images in [0, 1] -> ``(B, 1, S, S)`` float32 tensor, S = ``input_size``.

    Parameters
    ----------
    images : list of (H, W) float arrays, an (H, W) array, a (B, H, W) array, or a
        (B, 1, H, W) tensor/array. Values in [0, 1]; sizes may differ between list items.
    input_size : int

    Resizing is straight (aspect ratio not kept), bilinear with anti-aliasing, so that the
    model grid maps linearly onto the source pixels (see :mod:`models.classifier.regions`).
    """
    if isinstance(images, torch.Tensor) or (isinstance(images, np.ndarray) and images.ndim in (3, 4)):
        batch = torch.as_tensor(images, dtype=torch.float32)
        if batch.ndim == 3:
            batch = batch[:, None]
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"image batches must be (B, 1, H, W) or (B, H, W); got {tuple(batch.shape)}")
        planes = [batch]
    else:
        if isinstance(images, np.ndarray):  # a single (H, W) image
            images = [images]
        planes = []
        for i, image in enumerate(images):
            arr = np.asarray(image, dtype=np.float32)
            if arr.ndim != 2:
                raise ValueError(f"image {i} must be a single (H, W) plane; got shape {arr.shape}")
            planes.append(torch.from_numpy(np.ascontiguousarray(arr))[None, None])
        if not planes:
            raise ValueError("no images given")
    out = []
    for plane in planes:
        if not torch.isfinite(plane).all():
            raise ValueError("images contain NaN or infinite values; give grey images scaled to [0, 1]")
        if plane.shape[-2:] != (input_size, input_size):
            plane = F.interpolate(plane, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
        out.append(plane)
    return torch.cat(out).float()


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, or CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ChestClassifier:
    """Batched inference with a :class:`ChestNet` and its :class:`ClassifierConfig`.

    Parameters
    ----------
    net : ChestNet
    config : ClassifierConfig
    device : str or torch.device, optional
        Default: CUDA when available, else CPU. On CUDA, inference runs under
        ``torch.autocast`` (float16).
    """

    WEIGHTS_NAME = "weights.pt"
    CONFIG_NAME = "classifier.json"

    def __init__(self, net: ChestNet, config: ClassifierConfig, device: str | torch.device | None = None) -> None:
        if net.architecture != config.architecture:
            raise ValueError(f"network is {net.architecture!r} but the config says {config.architecture!r}")
        self.config = config
        self.device = pick_device(device)
        self.net = net.to(self.device).eval()

    # construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, config: ClassifierConfig | None = None, device: str | torch.device | None = None) -> "ChestClassifier":
        """A classifier with random weights for ``config`` (default: ResNet50, 224 px)."""
        config = config or ClassifierConfig()
        net = ChestNet(config.architecture, len(config.labels), config.mean, config.std)
        return cls(net, config, device)

    @classmethod
    def load(
        cls,
        weights_path: str | Path,
        config: ClassifierConfig | dict[str, object] | str | Path,
        device: str | torch.device | None = None,
    ) -> "ChestClassifier":
        """Load weights (a ``ChestNet`` state dict file) strictly, on the CPU first.

        ``config`` is a :class:`ClassifierConfig`, its dict, or the path of its JSON file.

        Raises
        ------
        FileNotFoundError
            When ``weights_path`` does not exist.
        ValueError
            :class:`models.checkpoint.CheckpointError` when the weights do not fit the
            architecture (names the file and the missing and unexpected keys), or when their
            normalisation differs from the config's.
        """
        if isinstance(config, (str, Path)):
            config = json.loads(Path(config).read_text())
        if isinstance(config, dict):
            config = ClassifierConfig.from_dict(config)
        state = read_state_dict(Path(weights_path), kind="classifier")
        return cls.from_state_dict(state, config, source=Path(weights_path), device=device)

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, torch.Tensor],
        config: ClassifierConfig,
        *,
        source: Path,
        device: str | torch.device | None = None,
    ) -> "ChestClassifier":
        """A classifier of ``config`` with ``state`` (read on the CPU) loaded strictly.

        ``source`` is the file ``state`` was read from, named in errors. The normalisation
        buffers saved with the weights must equal the config's ``mean`` and ``std``.

        Raises
        ------
        ValueError
            :class:`models.checkpoint.CheckpointError` for missing, unexpected or mis-shaped
            keys; a plain ``ValueError`` for a normalisation that differs from the config's.
        """
        net = ChestNet(config.architecture, len(config.labels), config.mean, config.std)
        load_state_dict_strict(
            net, state, source=source, target=f"a {config.architecture!r} classifier", kind="classifier"
        )
        for key in ("mean", "std"):
            saved = float(state[key])
            if abs(saved - float(getattr(config, key))) > 1e-6:
                raise ValueError(f"{source}: normalisation {key}={saved} differs from the config's {getattr(config, key)}")
        return cls(net, config, device)

    def save(self, directory: str | Path, extra: dict[str, object] | None = None) -> tuple[Path, Path]:
        """Write ``weights.pt`` (state dict) and ``classifier.json`` (config plus ``extra``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = directory / self.WEIGHTS_NAME
        state = {k: v.detach().to("cpu") for k, v in self.net.state_dict().items()}
        torch.save(state, weights)
        config_path = directory / self.CONFIG_NAME
        payload = {**self.config.to_dict(), **(extra or {})}
        config_path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        return weights, config_path

    # inference -----------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        """Output order of :meth:`predict`."""
        return list(self.config.labels)

    @property
    def policy(self) -> str:
        """The mask policy this classifier was trained under."""
        return self.config.policy

    def prepare(
        self,
        image: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        pixel_spacing_mm: tuple[float, float] | None,
    ) -> np.ndarray:
        """Apply this classifier's mask policy (:func:`models.policies.apply_policy`).

        ``image`` (H, W) float32 in [0, 1]; ``left``/``right`` (H, W) bool. Returns (H, W) float32.
        """
        return apply_policy(image, left, right, self.config.policy, pixel_spacing_mm)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda")

    def _forward(self, batch: torch.Tensor, batch_size: int, maps: bool) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Probabilities ``(B, K)`` and, when ``maps``, CAM chunks ``(b, K, h, w)`` of one forward pass."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        probs, cams = [], []
        for start in range(0, batch.shape[0], batch_size):
            chunk = batch[start : start + batch_size].to(self.device, non_blocking=True)
            with self._autocast():
                logits, feats = self.net.forward_with_features(chunk)
                if maps:
                    cams.append(self.net.class_activation_maps(feats).float().cpu())
            probs.append(torch.sigmoid(logits.float()).cpu())
        return torch.cat(probs).numpy().astype(np.float32), cams

    @torch.inference_mode()
    def predict(
        self,
        images: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> np.ndarray:
        """Finding probabilities.

        Parameters
        ----------
        images : list of (H, W) float32 in [0, 1] (already masked by the policy, see
            :meth:`prepare`), or a (B, 1, H, W) tensor in [0, 1].
        batch_size : int

        Returns
        -------
        (B, K) float32 probabilities, columns in :attr:`labels` order.
        """
        probs, _ = self._forward(resize_images(images, self.config.input_size), batch_size, maps=False)
        return probs

    @torch.inference_mode()
    def predict_with_maps(
        self,
        images: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Finding probabilities and class activation maps from ONE forward pass.

        Parameters
        ----------
        images, batch_size : as for :meth:`predict`.

        Returns
        -------
        probs : (B, K) float32
            Equal to :meth:`predict`'s.
        cams : (B, K, h, w) float32
            Class activation maps on the model's feature grid (``h = w = input_size / 32`` for the
            ResNets), which covers the whole source image; turn them into regions with
            :func:`models.classifier.regions.regions_from_maps`.
        """
        probs, cams = self._forward(resize_images(images, self.config.input_size), batch_size, maps=True)
        return probs, torch.cat(cams).numpy().astype(np.float32)

    def finding_regions(
        self, image: np.ndarray, findings: Sequence[str] | None = None, fraction: float | None = None
    ) -> dict[str, FindingRegion]:
        """Ellipses in source pixels around each finding's evidence (see :mod:`.regions`)."""
        from models.classifier.regions import DEFAULT_REGION_FRACTION, finding_regions

        return finding_regions(self, image, findings, DEFAULT_REGION_FRACTION if fraction is None else fraction)
