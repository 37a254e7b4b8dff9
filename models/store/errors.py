"""The model store's errors; each message names the file and what to do."""

from __future__ import annotations


class ModelStoreError(Exception):
    """Base class of the model store's errors."""


class ManifestError(ModelStoreError, ValueError):
    """A manifest that does not follow the schema (wrong keys, bad values)."""


class ModelIntegrityError(ModelStoreError):
    """Weights that do not match their manifest (missing file, sha256, state-dict keys)."""


class ModelNotFoundError(ModelStoreError, LookupError):
    """No version matches a reference, or none is active for a role/policy."""
