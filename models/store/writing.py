"""Writing to a store root: new versions (weights, manifest, model card), atomically.

Every write here is crash-safe the same way: a file is written to a temporary name, fsync'ed,
renamed over its final name, and the folder holding it is fsync'ed (:func:`atomic_write_text`);
a version folder is assembled in a hidden staging folder next to its final place, every file in
it fsync'ed, then renamed into place and the parent fsync'ed (:func:`staged_folder`). A crash
leaves the old state or the complete new one, never a half-written version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping, Sequence

from models.store.errors import ModelStoreError
from models.store.manifest import (
    MANIFEST_FILENAME,
    MANIFEST_SCHEMA_VERSION,
    MODEL_CARD_FILENAME,
    WEIGHTS_FILENAME,
    ModelManifest,
    derive_device_uid,
    sha256_file,
)
from models.store.versions import ModelVersion

logger = logging.getLogger(__name__)

_FOLDER_MODE = 0o755
_FILE_MODE = 0o644


def json_text(data: Any) -> str:
    """The store's JSON format (manifests, ``active.json``): sorted keys, 2-space indent, final newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that a rename or a new entry in it survives a crash (POSIX)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        logger.debug("cannot open %s to fsync it; relying on the file system", folder)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: temporary file, fsync, rename, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; a store is read by other users (containers)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def staged_folder(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder that becomes ``final`` when the block ends without error.

    The staging folder is hidden (``.<name>.*``, skipped by the store's listing) and lies next to
    ``final``, so the closing rename is atomic. On leaving the block its files are fsync'ed, an
    existing ``final`` is removed when ``replace`` (else refused), the folder is renamed into
    place and the parent fsync'ed. On an error the staging folder is removed and ``final`` is
    left as it was.

    Raises
    ------
    ModelStoreError
        ``final`` exists and ``replace`` is false (model versions are immutable).
    """
    final = Path(final)
    if final.exists() and not replace:
        raise ModelStoreError(f"{final} exists; model versions are immutable — give the new one another version")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    staging.chmod(_FOLDER_MODE)  # mkdtemp makes 0700; a store is read by other users (containers)
    try:
        yield staging
        for path in staging.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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


def _save_weights(weights: Path | Mapping[str, Any], target: Path, float_dtype: Any) -> None:
    """Copy a weights file byte for byte, or ``torch.save`` a state dict (optionally narrowed)."""
    import torch

    if isinstance(weights, (str, os.PathLike)):
        shutil.copyfile(weights, target)
    elif float_dtype is not None:
        torch.save(
            {k: (v.to(float_dtype) if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0 else v) for k, v in weights.items()},
            target,
        )
    else:
        torch.save(weights, target)


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
    UID are computed here; ``created_at`` defaults to now (UTC). The folder is assembled next to
    its final place and renamed into it (:func:`staged_folder`).

    Raises
    ------
    ModelStoreError
        The version exists and ``overwrite`` is false (versions are immutable).
    ManifestError
        An argument breaks a manifest rule (named, with the rule).
    """
    final = Path(root) / role / name / version
    with staged_folder(final, replace=overwrite) as staging:
        target = staging / weights_file
        _save_weights(weights, target, float_dtype)
        sha = sha256_file(target)
        manifest = ModelManifest.from_dict(
            {
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
            },
            source=f"new version {name}:{version}",
        )
        (staging / MANIFEST_FILENAME).write_text(json_text(manifest.to_dict()), encoding="utf-8")
        (staging / MODEL_CARD_FILENAME).write_text(render_model_card(manifest), encoding="utf-8")
    logger.info("wrote model version %s (%s) at %s", manifest.ref, role, final)
    return ModelVersion(manifest, final)
