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
with valid values (:class:`ModelManifest`, a pydantic model), and the weights file must have the
sha256 the manifest records. A mismatch is refused with :class:`ManifestError` or
:class:`ModelIntegrityError` naming the file and what to do (rebuild or re-import).

The package is split by job:

``manifest``  the schema of ``manifest.json``, reading it, file names, roles, identity helpers
``versions``  :class:`ModelVersion`, one version folder and the integrity of its weights
``writing``   writing versions (weights copy, sha256, model card) and atomic writes
``store``     :class:`ModelStore`: listing and lookup, ``active.json``, register and promote
``errors``    the store's exception types

It takes paths, never node settings, and imports neither pydicom nor :mod:`node`.
"""

from models.store.errors import ManifestError, ModelIntegrityError, ModelNotFoundError, ModelStoreError
from models.store.manifest import (
    ACTIVE_FILENAME,
    DEMO_STORE_DIR,
    MANIFEST_FILENAME,
    MANIFEST_SCHEMA_VERSION,
    MODEL_CARD_FILENAME,
    NORMALISATIONS,
    ROLE_CLASSIFIER,
    ROLE_SEGMENTER,
    ROLES,
    WEIGHTS_FILENAME,
    InputSpec,
    ModelManifest,
    TrainingData,
    data_fingerprint,
    derive_device_uid,
    is_valid_uid,
    read_manifest,
    sha256_file,
)
from models.store.store import ModelStore
from models.store.versions import ModelVersion
from models.store.writing import atomic_write_text, render_model_card, write_version

__all__ = [
    "ACTIVE_FILENAME",
    "DEMO_STORE_DIR",
    "MANIFEST_FILENAME",
    "MANIFEST_SCHEMA_VERSION",
    "MODEL_CARD_FILENAME",
    "NORMALISATIONS",
    "ROLES",
    "ROLE_CLASSIFIER",
    "ROLE_SEGMENTER",
    "WEIGHTS_FILENAME",
    "InputSpec",
    "ManifestError",
    "ModelIntegrityError",
    "ModelManifest",
    "ModelNotFoundError",
    "ModelStore",
    "ModelStoreError",
    "ModelVersion",
    "TrainingData",
    "atomic_write_text",
    "data_fingerprint",
    "derive_device_uid",
    "is_valid_uid",
    "read_manifest",
    "render_model_card",
    "sha256_file",
    "write_version",
]
