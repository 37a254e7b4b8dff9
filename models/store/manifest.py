"""The manifest of a model version (``manifest.json``, schema 1): its schema, reading and identity.

:class:`ModelManifest` is a pydantic model that refuses unknown keys (naming them), missing keys,
and values that break a rule (naming the field and the rule). Reading goes through
:func:`read_manifest` or :meth:`ModelManifest.from_dict`, which turn pydantic's
``ValidationError`` into :class:`~models.store.errors.ManifestError` naming the file and the fix.

The JSON on disk is the manifest's :meth:`ModelManifest.to_dict`, written with sorted keys and
two-space indentation (:func:`models.store.writing.json_text`); a manifest read and written again
gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic import model_validator, with_config
from typing_extensions import TypedDict

from models.policies import parse_policy
from models.store.errors import ManifestError

logger = logging.getLogger(__name__)

#: The bundled demo models (read-only; rebuilt by ``cxr-node models build-demo``).
DEMO_STORE_DIR = Path(__file__).resolve().parents[1] / "demo_store"

MANIFEST_FILENAME = "manifest.json"
MODEL_CARD_FILENAME = "MODEL_CARD.md"
WEIGHTS_FILENAME = "weights.pt"
ACTIVE_FILENAME = "active.json"
MANIFEST_SCHEMA_VERSION = 1

ROLE_SEGMENTER = "segmenter"
ROLE_CLASSIFIER = "classifier"
Role = Literal["segmenter", "classifier"]
ROLES: tuple[str, ...] = get_args(Role)

#: Input normalisations a manifest may name.
#: ``minmax``: grey image min-max scaled to [0, 1] (MedSAM); ``meanstd``: [0, 1], then
#: ``(x - mean) / std`` with ``mean`` and ``std`` from the manifest's parameters (the classifier);
#: ``imagenet``: [0, 1] then ImageNet mean/std per channel.
Normalisation = Literal["minmax", "meanstd", "imagenet"]
NORMALISATIONS: tuple[str, ...] = get_args(Normalisation)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_UID_MAX_LENGTH = 64  # PS3.5 9.1
_HASH_CHUNK = 1 << 20
_SHOWN_INPUT = 80  # characters of a refused value quoted in an error


# --------------------------------------------------------------------------------------------
# identity helpers


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


# --------------------------------------------------------------------------------------------
# field rules (each raises ValueError stating the rule; pydantic adds the field's name)


def _name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; got {value!r}")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _weights_file(value: str) -> str:
    if "/" in value or value in (".", "..", MANIFEST_FILENAME):
        raise ValueError(f"must be a plain file name in the version folder; got {value!r}")
    return value


def _sha256(value: str) -> str:
    if not _SHA256_RE.match(value):
        raise ValueError(f"must be 64 lowercase hex digits; got {value!r}")
    return value


def _device_uid(value: str) -> str:
    if not is_valid_uid(value):
        raise ValueError(f"must be a valid DICOM UID (digits and dots, <= 64 chars, no leading zeros); got {value!r}")
    return value


def _schema_version(value: int) -> int:
    if value != MANIFEST_SCHEMA_VERSION:
        raise ValueError(f"must be {MANIFEST_SCHEMA_VERSION}; got {value!r}")
    return value


def _channels(value: int) -> int:
    if value not in (1, 3):
        raise ValueError(f"must be 1 or 3; got {value!r}")
    return value


def _iso8601(value: str) -> str:
    try:
        dt.datetime.fromisoformat(value)
    except ValueError as error:
        raise ValueError(f"must be an ISO 8601 date and time; got {value!r}") from error
    return value


_Name = Annotated[StrictStr, AfterValidator(_name)]
_Text = Annotated[StrictStr, AfterValidator(_non_empty)]
_Probability = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
_Number = Annotated[float, Strict()]
_Pixels = Annotated[int, Strict(), Field(gt=0)]


@with_config(ConfigDict(extra="forbid"))
class InputSpec(TypedDict):
    """``manifest["input"]``: the network input after resizing.

    ``size`` is ``[H, W]`` in pixels, ``channels`` 1 or 3, ``normalisation`` one of
    :data:`NORMALISATIONS`.
    """

    size: Annotated[list[_Pixels], Field(min_length=2, max_length=2)]
    channels: Annotated[StrictInt, AfterValidator(_channels)]
    normalisation: Normalisation


@with_config(ConfigDict(extra="forbid"))
class TrainingData(TypedDict):
    """``manifest["training_data"]``: a sha256 fingerprint of the data and a description for people."""

    fingerprint: StrictStr
    description: StrictStr


class ModelManifest(BaseModel):
    """The manifest of one model version (``manifest.json``, schema 1).

    Attributes
    ----------
    schema_version : always 1.
    role : ``"segmenter"`` or ``"classifier"``.
    name, version : the version's identity; ``name:version`` is its ref. Letters, digits, ``._-``.
    architecture : builder name, e.g. ``"sam_vit_b"``, ``"sam_tiny"``, ``"resnet50"``.
    parameters : extra keyword arguments of the builder (may be empty).
    weights_file : file name of the weights inside the version folder.
    sha256 : hex sha256 of the weights file.
    input : ``{"size": [H, W], "channels": C, "normalisation": one of NORMALISATIONS}`` — the
        network input in pixels after resizing (a plain dict, see :class:`InputSpec`).
    labels : output labels in output order (classifier: the five findings; segmenter: lung sides).
    policy : the mask policy a classifier was trained under; ``None`` for segmenters.
    thresholds : per-label operating thresholds in [0, 1] (classifiers; empty for segmenters).
    metrics : measured quality on held-out data, e.g. ``{"macro_auroc": 0.95}`` or ``{"dice_left": 0.93}``.
    training_data : ``{"fingerprint": sha256 hex, "description": text}`` (see :class:`TrainingData`).
    created_at : ISO 8601 time of creation (UTC).
    device_uid : DICOM UID unique to this version (IHE AIR Device UID).
    clinical_use : ``False`` for demo and research models.
    intended_use : one paragraph for people.

    Unknown keys are refused (``extra="forbid"``), and the manifest is immutable (``frozen``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Annotated[StrictInt, AfterValidator(_schema_version)]
    role: Role
    name: _Name
    version: _Name
    architecture: _Text
    parameters: dict[str, Any]
    weights_file: Annotated[_Text, AfterValidator(_weights_file)]
    sha256: Annotated[StrictStr, AfterValidator(_sha256)]
    input: InputSpec
    labels: Annotated[tuple[StrictStr, ...], Field(min_length=1)]
    policy: StrictStr | None
    thresholds: dict[str, _Probability]
    metrics: dict[str, _Number]
    training_data: TrainingData
    created_at: Annotated[_Text, AfterValidator(_iso8601)]
    device_uid: Annotated[StrictStr, AfterValidator(_device_uid)]
    clinical_use: StrictBool
    intended_use: _Text

    @model_validator(mode="after")
    def _role_rules(self) -> "ModelManifest":
        """A classifier names a valid mask policy and one threshold per label; a segmenter no policy."""
        if self.role == ROLE_CLASSIFIER:
            if not self.policy:
                raise ValueError("a classifier names the mask policy it was trained under (policy)")
            parse_policy(self.policy)  # ValueError: unknown mask policy, listing the known ones
            if set(self.thresholds) != set(self.labels):
                raise ValueError(
                    f"a classifier has one threshold per label; labels {list(self.labels)}, thresholds {sorted(self.thresholds)}"
                )
        elif self.policy is not None:
            raise ValueError("policy must be null for a segmenter")
        return self

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
        """Validate ``data`` against schema 1 and build the manifest.

        Parameters
        ----------
        data : the parsed JSON object.
        source : what ``data`` came from (the manifest's path), named first in every error.

        Raises
        ------
        ManifestError
            Listing the missing keys, the unexpected keys and every value that breaks a rule
            (``field: rule; got value``), then what to do.
        """
        if not isinstance(data, Mapping):
            raise ManifestError(f"{source}: a manifest is a JSON object; got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as error:
            raise ManifestError(
                f"{source}: manifest does not follow schema {MANIFEST_SCHEMA_VERSION} ({_explain(error)}); "
                "rebuild the version (cxr-node models build-demo / train) or re-import it"
            ) from error

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``manifest.json`` (new dicts and lists, safe to change)."""
        return self.model_dump(mode="json")


def _explain(error: ValidationError) -> str:
    """pydantic's errors as ``missing: [...]; unexpected: [...]; field: rule; got value``."""
    missing: list[str] = []
    unexpected: list[str] = []
    rules: list[str] = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        if item["type"] == "missing":
            missing.append(where)
        elif item["type"] == "extra_forbidden":
            unexpected.append(where)
        else:
            rule = item["msg"].removeprefix("Value error, ")
            if "got " not in rule:
                shown = repr(item.get("input"))
                rule += f"; got {shown[:_SHOWN_INPUT]}{'...' if len(shown) > _SHOWN_INPUT else ''}"
            rules.append(f"{where}: {rule}" if where else rule)
    parts = ([f"missing: {missing}"] if missing else []) + ([f"unexpected: {unexpected}"] if unexpected else [])
    return "; ".join(parts + rules)


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
