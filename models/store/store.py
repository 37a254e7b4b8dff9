"""The model store: versions in a writable root and the bundled demo store, and which are active.

:class:`ModelStore` lists and looks up the versions of both roots (the layout is in
:mod:`models.store`), reads and merges their ``active.json`` (the writable root's entries override
the demo store's, entry by entry) and promotes a version by rewriting the writable root's
``active.json`` atomically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from models.store.errors import ManifestError, ModelNotFoundError, ModelStoreError
from models.store.manifest import (
    ACTIVE_FILENAME,
    DEMO_STORE_DIR,
    MANIFEST_FILENAME,
    ROLE_CLASSIFIER,
    ROLE_SEGMENTER,
    ROLES,
    read_manifest,
)
from models.store.versions import ModelVersion
from models.store.writing import atomic_write_text, json_text

logger = logging.getLogger(__name__)


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
        atomic_write_text(root / ACTIVE_FILENAME, json_text(data))
        logger.info("promoted %s %s%s", role, version.ref, f" for policy {policy}" if role == ROLE_CLASSIFIER else "")
        return version
