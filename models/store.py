"""The model store: versioned model folders, their manifests, integrity checks and active versions.

Layout of a store root::

    <root>/active.json                                   which versions are active (optional)
    <root>/<role>/<name>/<version>/manifest.json          what the version is (see ModelManifest)
    <root>/<role>/<name>/<version>/weights.pt             its weights (or the official file name,
                                                          e.g. medsam_vit_b.pth)
    <root>/<role>/<name>/<version>/MODEL_CARD.md          a short model card for people

``role`` is ``segmenter`` or ``classifier``. A version is named ``name:version`` (its *ref*).

Two roots are searched: the writable root for trained and imported models (the node passes
``settings.model_dir`` or ``<data_dir>/models``), then the bundled, read-only demo store
(:data:`DEMO_STORE_DIR`), the embedded default. ``active.json`` in the writable root overrides
the demo store's, entry by entry; a role or policy it does not name falls back to the demo store.

Integrity is checked when a version is loaded: the manifest must have exactly the documented keys
with valid values, and the weights file must have the sha256 the manifest records. A mismatch is
refused with :class:`ModelIntegrityError` naming the file and what to do (rebuild or re-import).

This module takes paths, never node settings, and imports neither pydicom nor :mod:`node`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from models.policies import parse_policy
from models.result import ModelVersionInfo

logger = logging.getLogger(__name__)

#: The bundled demo models (read-only; rebuilt by ``cxr-node models build-demo``).
DEMO_STORE_DIR = Path(__file__).resolve().parent / "demo_store"

MANIFEST_FILENAME = "manifest.json"
MODEL_CARD_FILENAME = "MODEL_CARD.md"
WEIGHTS_FILENAME = "weights.pt"
ACTIVE_FILENAME = "active.json"
MANIFEST_SCHEMA_VERSION = 1

ROLE_SEGMENTER = "segmenter"
ROLE_CLASSIFIER = "classifier"
ROLES: tuple[str, ...] = (ROLE_SEGMENTER, ROLE_CLASSIFIER)

#: Input normalisations a manifest may name.
#: ``minmax``: grey image min-max scaled to [0, 1] (MedSAM); ``meanstd``: [0, 1], then
#: ``(x - mean) / std`` with ``mean`` and ``std`` from the manifest's parameters (the classifier);
#: ``imagenet``: [0, 1] then ImageNet mean/std per channel.
NORMALISATIONS: tuple[str, ...] = ("minmax", "meanstd", "imagenet")

#: Every manifest has exactly these keys (schema 1).
MANIFEST_KEYS: frozenset[str] = frozenset(
    {
        "schema_version",
        "role",
        "name",
        "version",
        "architecture",
        "parameters",
        "weights_file",
        "sha256",
        "input",
        "labels",
        "policy",
        "thresholds",
        "metrics",
        "training_data",
        "created_at",
        "device_uid",
        "clinical_use",
        "intended_use",
    }
)
INPUT_KEYS: frozenset[str] = frozenset({"size", "channels", "normalisation"})
TRAINING_DATA_KEYS: frozenset[str] = frozenset({"fingerprint", "description"})

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_UID_MAX_LENGTH = 64  # PS3.5 9.1
_HASH_CHUNK = 1 << 20
_FOLDER_MODE = 0o755
_FILE_MODE = 0o644


class ModelStoreError(Exception):
    """Base class of the model store's errors."""


class ManifestError(ModelStoreError, ValueError):
    """A manifest that does not follow the schema (wrong keys, bad values)."""


class ModelIntegrityError(ModelStoreError):
    """Weights that do not match their manifest (missing file, sha256, state-dict keys)."""


class ModelNotFoundError(ModelStoreError, LookupError):
    """No version matches a reference, or none is active for a role/policy."""


# --------------------------------------------------------------------------------------------
# small helpers


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_valid_uid(uid: str) -> bool:
    """True if ``uid`` is a syntactically valid DICOM UID (PS3.5 9.1: digits and dots, 64 chars)."""
    return len(uid) <= _UID_MAX_LENGTH and bool(_UID_RE.match(uid))


def derive_device_uid(role: str, name: str, version: str, sha256: str) -> str:
    """The Device UID of a model version, deterministic and unique to it.

    A UUID (RFC 4122 version 5, derived from role, name, version and the weights' sha256) written
    as a DICOM UID under the ``2.25`` root (PS3.5 B.2). A new version or new weights give a new UID.
    """
    identity = f"cxr-node-model/{role}/{name}/{version}/{sha256}"
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, identity).int}"


def data_fingerprint(description: Any) -> str:
    """sha256 of a canonical JSON rendering of a training-data description (seeds, file lists...)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: temporary file, fsync, rename, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------
# manifest


@dataclass(frozen=True)
class ModelManifest:
    """The manifest of one model version (``manifest.json``, schema 1).

    Attributes
    ----------
    role : ``"segmenter"`` or ``"classifier"``.
    name, version : the version's identity; ``name:version`` is its ref. Letters, digits, ``._-``.
    architecture : builder name, e.g. ``"sam_vit_b"``, ``"sam_tiny"``, ``"resnet50"``.
    parameters : extra keyword arguments of the builder (may be empty).
    weights_file : file name of the weights inside the version folder.
    sha256 : hex sha256 of the weights file.
    input : ``{"size": [H, W], "channels": C, "normalisation": one of NORMALISATIONS}`` — the
        network input in pixels after resizing.
    labels : output labels in output order (classifier: the five findings; segmenter: lung sides).
    policy : the mask policy a classifier was trained under; ``None`` for segmenters.
    thresholds : per-label operating thresholds in [0, 1] (classifiers; empty for segmenters).
    metrics : measured quality on held-out data, e.g. ``{"macro_auroc": 0.95}`` or ``{"dice_left": 0.93}``.
    training_data : ``{"fingerprint": sha256 hex, "description": text}``.
    created_at : ISO 8601 UTC time of creation.
    device_uid : DICOM UID unique to this version (IHE AIR Device UID).
    clinical_use : ``False`` for demo and research models.
    intended_use : one paragraph for people.
    """

    schema_version: int
    role: str
    name: str
    version: str
    architecture: str
    parameters: dict[str, Any]
    weights_file: str
    sha256: str
    input: dict[str, Any]
    labels: tuple[str, ...]
    policy: str | None
    thresholds: dict[str, float]
    metrics: dict[str, float]
    training_data: dict[str, str]
    created_at: str
    device_uid: str
    clinical_use: bool
    intended_use: str

    @property
    def ref(self) -> str:
        """``name:version``."""
        return f"{self.name}:{self.version}"

    @property
    def input_size(self) -> tuple[int, int]:
        """Network input ``(H, W)`` in pixels."""
        height, width = self.input["size"]
        return int(height), int(width)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "manifest") -> "ModelManifest":
        """Validate ``data`` against schema 1 and build the manifest; raise :class:`ManifestError`."""
        if not isinstance(data, Mapping):
            raise ManifestError(f"{source}: a manifest is a JSON object; got {type(data).__name__}")
        keys = set(data)
        missing, extra = sorted(MANIFEST_KEYS - keys), sorted(keys - MANIFEST_KEYS)
        if missing or extra:
            raise ManifestError(
                f"{source}: manifest keys do not match schema {MANIFEST_SCHEMA_VERSION} "
                f"(missing: {missing or 'none'}; unexpected: {extra or 'none'}); "
                "rebuild the version (cxr-node models build-demo / train) or re-import it"
            )

        def fail(rule: str) -> ManifestError:
            return ManifestError(f"{source}: {rule}; rebuild or re-import this model version")

        if data["schema_version"] != MANIFEST_SCHEMA_VERSION:
            raise fail(f"schema_version must be {MANIFEST_SCHEMA_VERSION}; got {data['schema_version']!r}")
        if data["role"] not in ROLES:
            raise fail(f"role must be one of {', '.join(ROLES)}; got {data['role']!r}")
        for key in ("name", "version"):
            if not isinstance(data[key], str) or not _NAME_RE.match(data[key]):
                raise fail(f"{key} must be 1-64 letters, digits, '.', '_' or '-'; got {data[key]!r}")
        for key in ("architecture", "weights_file", "created_at", "intended_use"):
            if not isinstance(data[key], str) or not data[key].strip():
                raise fail(f"{key} must be a non-empty string")
        if "/" in data["weights_file"] or data["weights_file"] in (".", "..", MANIFEST_FILENAME):
            raise fail(f"weights_file must be a plain file name in the version folder; got {data['weights_file']!r}")
        if not isinstance(data["sha256"], str) or not _SHA256_RE.match(data["sha256"]):
            raise fail("sha256 must be 64 lowercase hex digits")
        if not isinstance(data["device_uid"], str) or not is_valid_uid(data["device_uid"]):
            raise fail(f"device_uid must be a valid DICOM UID (digits and dots, <= 64 chars); got {data['device_uid']!r}")
        if not isinstance(data["clinical_use"], bool):
            raise fail("clinical_use must be true or false")
        if not isinstance(data["parameters"], Mapping):
            raise fail("parameters must be an object")
        spec = data["input"]
        if not isinstance(spec, Mapping) or set(spec) != INPUT_KEYS:
            raise fail(f"input must have exactly the keys {sorted(INPUT_KEYS)}")
        size = spec["size"]
        if (
            not isinstance(size, (list, tuple))
            or len(size) != 2
            or not all(isinstance(v, int) and v > 0 for v in size)
        ):
            raise fail(f"input.size must be [H, W] positive integers; got {size!r}")
        if spec["channels"] not in (1, 3):
            raise fail(f"input.channels must be 1 or 3; got {spec['channels']!r}")
        if spec["normalisation"] not in NORMALISATIONS:
            raise fail(f"input.normalisation must be one of {', '.join(NORMALISATIONS)}; got {spec['normalisation']!r}")
        labels = data["labels"]
        if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(v, str) for v in labels):
            raise fail("labels must be a non-empty list of strings")
        thresholds = data["thresholds"]
        if not isinstance(thresholds, Mapping) or not all(
            isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0 for v in thresholds.values()
        ):
            raise fail("thresholds must map labels to numbers in [0, 1]")
        metrics = data["metrics"]
        if not isinstance(metrics, Mapping) or not all(isinstance(v, (int, float)) for v in metrics.values()):
            raise fail("metrics must map names to numbers")
        training = data["training_data"]
        if not isinstance(training, Mapping) or set(training) != TRAINING_DATA_KEYS:
            raise fail(f"training_data must have exactly the keys {sorted(TRAINING_DATA_KEYS)}")
        if data["role"] == ROLE_CLASSIFIER:
            if not isinstance(data["policy"], str) or not data["policy"]:
                raise fail("a classifier names the mask policy it was trained under (policy)")
            try:
                parse_policy(data["policy"])
            except ValueError as error:
                raise fail(str(error)) from error
            if set(thresholds) != set(labels):
                raise fail(f"a classifier has one threshold per label; labels {list(labels)}, thresholds {sorted(thresholds)}")
        elif data["policy"] is not None:
            raise fail("policy must be null for a segmenter")
        try:
            dt.datetime.fromisoformat(data["created_at"])
        except ValueError as error:
            raise fail(f"created_at must be ISO 8601; got {data['created_at']!r}") from error
        return cls(
            schema_version=int(data["schema_version"]),
            role=data["role"],
            name=data["name"],
            version=data["version"],
            architecture=data["architecture"],
            parameters=dict(data["parameters"]),
            weights_file=data["weights_file"],
            sha256=data["sha256"],
            input={"size": [int(size[0]), int(size[1])], "channels": int(spec["channels"]), "normalisation": spec["normalisation"]},
            labels=tuple(labels),
            policy=data["policy"],
            thresholds={k: float(v) for k, v in thresholds.items()},
            metrics={k: float(v) for k, v in metrics.items()},
            training_data={k: str(v) for k, v in training.items()},
            created_at=data["created_at"],
            device_uid=data["device_uid"],
            clinical_use=data["clinical_use"],
            intended_use=data["intended_use"],
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``manifest.json``."""
        return {
            "schema_version": self.schema_version,
            "role": self.role,
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "parameters": dict(self.parameters),
            "weights_file": self.weights_file,
            "sha256": self.sha256,
            "input": dict(self.input),
            "labels": list(self.labels),
            "policy": self.policy,
            "thresholds": dict(self.thresholds),
            "metrics": dict(self.metrics),
            "training_data": dict(self.training_data),
            "created_at": self.created_at,
            "device_uid": self.device_uid,
            "clinical_use": self.clinical_use,
            "intended_use": self.intended_use,
        }


def read_manifest(folder: Path) -> ModelManifest:
    """Read and validate ``folder/manifest.json``; raise :class:`ManifestError` naming the file."""
    path = Path(folder) / MANIFEST_FILENAME
    if not path.is_file():
        raise ManifestError(f"{path} is missing; a model version folder needs a manifest — rebuild or re-import it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path} is not valid JSON ({error}); rebuild or re-import this model version") from error
    return ModelManifest.from_dict(data, source=str(path))


# --------------------------------------------------------------------------------------------
# a version on disk


@dataclass(frozen=True)
class ModelVersion:
    """One model version folder in a store root."""

    manifest: ModelManifest
    folder: Path
    read_only: bool = False

    @property
    def ref(self) -> str:
        """``name:version``."""
        return self.manifest.ref

    @property
    def role(self) -> str:
        return self.manifest.role

    @property
    def weights_path(self) -> Path:
        return self.folder / self.manifest.weights_file

    def verify(self) -> None:
        """Check the weights file exists and has the manifest's sha256; raise :class:`ModelIntegrityError`."""
        path = self.weights_path
        if not path.is_file():
            raise ModelIntegrityError(
                f"{path} is missing (model {self.ref}); rebuild the version (cxr-node models build-demo) "
                "or re-import it (cxr-node models import-medsam)"
            )
        actual = sha256_file(path)
        if actual != self.manifest.sha256:
            raise ModelIntegrityError(
                f"{path} is damaged or was replaced: its sha256 is {actual}, the manifest of {self.ref} "
                f"records {self.manifest.sha256}; rebuild the version (cxr-node models build-demo) or re-import it"
            )

    def load_state_dict(self) -> dict[str, Any]:
        """Verify, then load the weights on the CPU (``torch.load(weights_only=True)``).

        Official checkpoints that wrap the state dict (``{"model": ...}``, ``{"state_dict": ...}``) are
        unwrapped. Raises :class:`ModelIntegrityError` if the file is not a torch state dict.
        """
        import torch

        self.verify()
        try:
            state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a bad archive
            raise ModelIntegrityError(
                f"{self.weights_path} could not be read as torch weights ({error}); rebuild or re-import {self.ref}"
            ) from error
        for key in ("model", "state_dict"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        if not isinstance(state, dict):
            raise ModelIntegrityError(f"{self.weights_path} holds a {type(state).__name__}, not a state dict; rebuild or re-import {self.ref}")
        return state

    def info(self) -> ModelVersionInfo:
        """The identity written into outputs and the database."""
        m = self.manifest
        return ModelVersionInfo(
            role=m.role,
            name=m.name,
            version=m.version,
            architecture=m.architecture,
            device_uid=m.device_uid,
            sha256=m.sha256,
            clinical_use=m.clinical_use,
            policy=m.policy,
        )

    def summary(self) -> dict[str, Any]:
        """Manifest plus where the version lives (for ``models list/show --json``)."""
        return {"ref": self.ref, "folder": str(self.folder), "read_only": self.read_only, **self.manifest.to_dict()}


def load_strict(module: Any, state: Mapping[str, Any], version: ModelVersion) -> None:
    """``module.load_state_dict(state, strict=True)``, turning a key mismatch into a clear error.

    Raises :class:`ModelIntegrityError` naming the weights file and the first missing/unexpected keys.
    """
    result_missing: list[str] = []
    result_unexpected: list[str] = []
    expected = set(module.state_dict().keys())
    result_missing = sorted(expected - set(state))
    result_unexpected = sorted(set(state) - expected)
    if result_missing or result_unexpected:
        raise ModelIntegrityError(
            f"{version.weights_path} does not fit architecture {version.manifest.architecture!r} of {version.ref}: "
            f"missing keys {result_missing[:5]}{' ...' if len(result_missing) > 5 else ''} "
            f"({len(result_missing)}), unexpected keys {result_unexpected[:5]}"
            f"{' ...' if len(result_unexpected) > 5 else ''} ({len(result_unexpected)}); rebuild or re-import it"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:  # shape mismatches
        raise ModelIntegrityError(
            f"{version.weights_path} does not fit architecture {version.manifest.architecture!r} of {version.ref}: "
            f"{error}; rebuild or re-import it"
        ) from error


# --------------------------------------------------------------------------------------------
# writing versions


def render_model_card(manifest: ModelManifest) -> str:
    """The ``MODEL_CARD.md`` text of a version (deterministic, from the manifest alone)."""
    m = manifest
    lines = [f"# Model card: {m.name} {m.version}", ""]
    if not m.clinical_use:
        lines += [
            "> **NOT FOR CLINICAL USE.** This model is a demonstration/research model. Its outputs must not",
            "> inform diagnosis or treatment. Results it produces carry this statement.",
            "",
        ]
    lines += [
        f"- Role: {m.role}",
        f"- Architecture: `{m.architecture}`" + (f" ({json.dumps(m.parameters, sort_keys=True)})" if m.parameters else ""),
        f"- Input: {m.input['size'][0]} x {m.input['size'][1]} px, {m.input['channels']} channel(s), "
        f"normalisation `{m.input['normalisation']}`",
        f"- Labels: {', '.join(m.labels)}",
    ]
    if m.policy is not None:
        lines.append(f"- Trained under mask policy: `{m.policy}`")
    lines += [
        f"- Weights: `{m.weights_file}`, sha256 `{m.sha256}`",
        f"- Device UID: `{m.device_uid}`",
        f"- Created: {m.created_at}",
        f"- Clinical use: {'yes' if m.clinical_use else 'no'}",
        "",
        "## Intended use",
        "",
        m.intended_use,
        "",
        "## Training data",
        "",
        m.training_data["description"],
        "",
        f"Fingerprint: `{m.training_data['fingerprint']}`",
        "",
    ]
    if m.thresholds:
        lines += ["## Operating thresholds", "", "| label | threshold |", "| --- | --- |"]
        lines += [f"| {label} | {m.thresholds[label]:.4f} |" for label in m.labels if label in m.thresholds]
        lines.append("")
    if m.metrics:
        lines += ["## Metrics (held-out data)", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {value:.4f} |" for name, value in sorted(m.metrics.items())]
        lines.append("")
    return "\n".join(lines)


def write_version(
    root: Path,
    *,
    role: str,
    name: str,
    version: str,
    architecture: str,
    weights: Path | Mapping[str, Any],
    input_size: tuple[int, int],
    channels: int,
    normalisation: str,
    labels: Sequence[str],
    intended_use: str,
    training_data_description: str,
    training_data_fingerprint: str,
    policy: str | None = None,
    thresholds: Mapping[str, float] | None = None,
    metrics: Mapping[str, float] | None = None,
    parameters: Mapping[str, Any] | None = None,
    weights_file: str = WEIGHTS_FILENAME,
    clinical_use: bool = False,
    created_at: str | None = None,
    overwrite: bool = False,
    float_dtype: Any = None,
) -> ModelVersion:
    """Write a new version folder ``root/role/name/version`` (weights, manifest, card).

    ``weights`` is either a state dict (saved with ``torch.save``) or a path to an existing weights
    file (copied byte for byte, e.g. an official checkpoint). ``float_dtype`` (e.g.
    ``torch.float16``) stores a state dict's floating-point tensors in that type to halve the file
    (the demo models); loading casts them back to the network's float32. The sha256 and Device
    UID are computed here; ``created_at`` defaults to now (UTC). The folder is assembled next to its final place and
    renamed into it, so a crash never leaves a half-written version.
    """
    import torch

    final = Path(root) / role / name / version
    if final.exists() and not overwrite:
        raise ModelStoreError(f"{final} exists; model versions are immutable — choose a new version name")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=final.parent))
    staging.chmod(_FOLDER_MODE)  # mkdtemp makes 0700; a store is read by other users (containers)
    try:
        target = staging / weights_file
        if isinstance(weights, (str, os.PathLike)):
            shutil.copyfile(weights, target)
        elif float_dtype is not None:
            torch.save(
                {k: (v.to(float_dtype) if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0 else v) for k, v in weights.items()},
                target,
            )
        else:
            torch.save(weights, target)
        sha = sha256_file(target)
        manifest_dict = {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "role": role,
            "name": name,
            "version": version,
            "architecture": architecture,
            "parameters": dict(parameters or {}),
            "weights_file": weights_file,
            "sha256": sha,
            "input": {"size": [int(input_size[0]), int(input_size[1])], "channels": int(channels), "normalisation": normalisation},
            "labels": list(labels),
            "policy": policy,
            "thresholds": {k: float(v) for k, v in (thresholds or {}).items()},
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
            "training_data": {"fingerprint": training_data_fingerprint, "description": training_data_description},
            "created_at": created_at or dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "device_uid": derive_device_uid(role, name, version, sha),
            "clinical_use": bool(clinical_use),
            "intended_use": intended_use,
        }
        manifest = ModelManifest.from_dict(manifest_dict, source=f"new version {name}:{version}")
        (staging / MANIFEST_FILENAME).write_text(_json_dump(manifest.to_dict()), encoding="utf-8")
        (staging / MODEL_CARD_FILENAME).write_text(render_model_card(manifest), encoding="utf-8")
        for path in staging.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote model version %s (%s) at %s", manifest.ref, role, final)
    return ModelVersion(manifest, final)


# --------------------------------------------------------------------------------------------
# the store


class ModelStore:
    """Model versions in a writable root and the bundled demo store, and which are active.

    Parameters
    ----------
    root : the writable store root (``settings.model_dir`` or ``<data_dir>/models``); ``None`` for
        the demo store alone (read-only).
    fallback : the read-only root searched after ``root``; :data:`DEMO_STORE_DIR` by default,
        ``None`` for none.
    """

    def __init__(self, root: Path | None, *, fallback: Path | None = DEMO_STORE_DIR) -> None:
        self.root = Path(root) if root is not None else None
        self.fallback = Path(fallback) if fallback is not None else None

    def __repr__(self) -> str:
        return f"ModelStore(root={self.root}, fallback={self.fallback})"

    # --- reading ------------------------------------------------------------------------------
    def _roots(self) -> list[tuple[Path, bool]]:
        roots: list[tuple[Path, bool]] = []
        if self.root is not None:
            roots.append((self.root, False))
        if self.fallback is not None and (self.root is None or self.fallback.resolve() != self.root.resolve()):
            roots.append((self.fallback, True))
        return roots

    def list_versions(self, role: str | None = None) -> list[ModelVersion]:
        """Every version in the store (writable root first; a ref there shadows the demo store's).

        Manifests are validated; a folder with a bad manifest raises :class:`ManifestError`. Sorted by
        role, name, then creation time.
        """
        if role is not None and role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
        found: dict[tuple[str, str], ModelVersion] = {}
        for root, read_only in self._roots():
            for role_name in (role,) if role else ROLES:
                role_dir = root / role_name
                if not role_dir.is_dir():
                    continue
                for manifest_path in sorted(role_dir.glob(f"*/*/{MANIFEST_FILENAME}")):
                    folder = manifest_path.parent
                    if folder.name.startswith("."):
                        continue  # a version being written
                    manifest = read_manifest(folder)
                    if (manifest.role, manifest.name, manifest.version) != (role_name, folder.parent.name, folder.name):
                        raise ManifestError(
                            f"{manifest_path} names {manifest.role}/{manifest.name}/{manifest.version} but lies in "
                            f"{role_name}/{folder.parent.name}/{folder.name}; move the folder or re-import it"
                        )
                    found.setdefault((role_name, manifest.ref), ModelVersion(manifest, folder, read_only))
        return sorted(found.values(), key=lambda v: (v.role, v.manifest.name, v.manifest.created_at, v.manifest.version))

    def get(self, ref: str, role: str | None = None) -> ModelVersion:
        """The version named by ``ref``: ``name:version``, a version string, or a name (its newest).

        Raises :class:`ModelNotFoundError` (listing what exists) or when ``ref`` is ambiguous.
        """
        versions = self.list_versions(role)
        for matcher in (
            lambda v: v.ref == ref,
            lambda v: v.manifest.version == ref,
            lambda v: v.manifest.name == ref,
        ):
            hits = [v for v in versions if matcher(v)]
            if len({v.manifest.name for v in hits}) > 1:
                raise ModelNotFoundError(f"{ref!r} is ambiguous: {', '.join(v.ref for v in hits)}; write name:version")
            if hits:
                return hits[-1]  # newest of one name
        known = ", ".join(v.ref for v in versions) or "none"
        raise ModelNotFoundError(f"no model version {ref!r}{f' with role {role}' if role else ''}; known: {known}")

    def _read_active(self, root: Path) -> dict[str, Any]:
        path = root / ACTIVE_FILENAME
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ModelStoreError(f"{path} is not valid JSON ({error}); fix it or promote again (cxr-node models promote)") from error
        if (
            not isinstance(data, dict)
            or set(data) - {ROLE_SEGMENTER, ROLE_CLASSIFIER}
            or not isinstance(data.get(ROLE_SEGMENTER, ""), str)
            or not isinstance(data.get(ROLE_CLASSIFIER, {}), dict)
        ):
            raise ModelStoreError(
                f'{path} must look like {{"segmenter": "name:version", "classifier": {{"<policy>": "name:version"}}}}; '
                "fix it or promote again (cxr-node models promote)"
            )
        return data

    def active(self) -> dict[str, Any]:
        """Active refs: ``{"segmenter": ref, "classifier": {policy: ref}}``, writable root over demo store."""
        merged: dict[str, Any] = {ROLE_SEGMENTER: None, ROLE_CLASSIFIER: {}}
        for root, _ in reversed(self._roots()):  # fallback first, then overridden by the writable root
            data = self._read_active(root)
            if data.get(ROLE_SEGMENTER):
                merged[ROLE_SEGMENTER] = data[ROLE_SEGMENTER]
            merged[ROLE_CLASSIFIER].update(data.get(ROLE_CLASSIFIER, {}))
        return merged

    def active_segmenter(self) -> ModelVersion:
        """The active segmenter version; :class:`ModelNotFoundError` if none is set."""
        ref = self.active()[ROLE_SEGMENTER]
        if not ref:
            raise ModelNotFoundError(f"no active segmenter in {self}; run cxr-node models promote segmenter NAME:VERSION")
        return self.get(ref, ROLE_SEGMENTER)

    def active_classifier(self, policy: str) -> ModelVersion:
        """The active classifier for mask policy ``policy``; :class:`ModelNotFoundError` if none."""
        ref = self.active()[ROLE_CLASSIFIER].get(policy)
        if not ref:
            raise ModelNotFoundError(
                f"no active classifier for mask policy {policy!r} in {self}; "
                f"run cxr-node models promote classifier NAME:VERSION --policy {policy}"
            )
        version = self.get(ref, ROLE_CLASSIFIER)
        if version.manifest.policy != policy:
            raise ModelStoreError(
                f"active classifier {version.ref} was trained under policy {version.manifest.policy!r}, "
                f"not {policy!r}; promote a classifier trained under {policy!r}"
            )
        return version

    def verify(self) -> list[tuple[str, str | None]]:
        """Check every version's manifest and sha256 and the active entries.

        Returns ``[(ref or folder, error text or None)]``; never raises for a damaged version.
        """
        report: list[tuple[str, str | None]] = []
        try:
            versions = self.list_versions()
        except ModelStoreError as error:
            return [("store", str(error))]
        for version in versions:
            try:
                version.verify()
                report.append((version.ref, None))
            except ModelStoreError as error:
                report.append((version.ref, str(error)))
        try:
            active = self.active()
            if active[ROLE_SEGMENTER]:
                self.active_segmenter()
            for policy in active[ROLE_CLASSIFIER]:
                self.active_classifier(policy)
            report.append(("active.json", None))
        except ModelStoreError as error:
            report.append(("active.json", str(error)))
        return report

    # --- writing ------------------------------------------------------------------------------
    def _writable_root(self) -> Path:
        if self.root is None:
            raise ModelStoreError(
                "this model store has no writable root (only the bundled demo store); set CXR_NODE_MODEL_DIR or "
                "CXR_NODE_DATA_DIR"
            )
        return self.root

    def register(self, folder: Path) -> ModelVersion:
        """Copy a version folder (manifest, weights, card) into the writable root after checking it.

        The manifest is validated and the weights' sha256 verified before anything is copied; an
        existing ``name:version`` is refused (versions are immutable).
        """
        source = ModelVersion(read_manifest(Path(folder)), Path(folder))
        source.verify()
        m = source.manifest
        final = self._writable_root() / m.role / m.name / m.version
        if final.exists():
            raise ModelStoreError(f"{final} exists; model versions are immutable — give the new one another version")
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{m.version}.", dir=final.parent))
        staging.chmod(_FOLDER_MODE)
        try:
            for name in (m.weights_file, MANIFEST_FILENAME):
                shutil.copyfile(source.folder / name, staging / name)
            card = source.folder / MODEL_CARD_FILENAME
            if card.is_file():
                shutil.copyfile(card, staging / MODEL_CARD_FILENAME)
            else:
                (staging / MODEL_CARD_FILENAME).write_text(render_model_card(m), encoding="utf-8")
            os.replace(staging, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        registered = ModelVersion(read_manifest(final), final)
        registered.verify()
        logger.info("registered model version %s at %s", registered.ref, final)
        return registered

    def promote(self, role: str, ref: str, policy: str | None = None) -> ModelVersion:
        """Make ``ref`` the active version of ``role`` (for classifiers: of its policy).

        The version is verified (sha256) first. ``policy`` defaults to the classifier's own training
        policy and must equal it. ``active.json`` in the writable root is rewritten atomically.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
        version = self.get(ref, role)
        version.verify()
        root = self._writable_root()
        data = self._read_active(root)
        if role == ROLE_SEGMENTER:
            if policy is not None:
                raise ValueError("--policy applies to classifiers only; a segmenter serves every policy")
            data[ROLE_SEGMENTER] = version.ref
        else:
            trained = version.manifest.policy
            policy = policy or trained
            if policy != trained:
                raise ValueError(
                    f"{version.ref} was trained under mask policy {trained!r}; it can only be promoted for {trained!r}"
                )
            classifiers = dict(data.get(ROLE_CLASSIFIER, {}))
            classifiers[str(policy)] = version.ref
            data[ROLE_CLASSIFIER] = classifiers
        atomic_write_text(root / ACTIVE_FILENAME, _json_dump(data))
        logger.info("promoted %s %s%s", role, version.ref, f" for policy {policy}" if role == ROLE_CLASSIFIER else "")
        return version
