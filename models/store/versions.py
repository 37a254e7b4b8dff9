"""One model version on disk: its folder, its manifest, and the integrity of its weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.result import ModelVersionInfo
from models.store.errors import ModelIntegrityError
from models.store.manifest import ModelManifest, sha256_file

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersion:
    """One model version folder in a store root.

    Attributes
    ----------
    manifest : the validated ``manifest.json``.
    folder : ``<root>/<role>/<name>/<version>``.
    read_only : True for a version of the bundled demo store.
    """

    manifest: ModelManifest
    folder: Path
    read_only: bool = False

    @property
    def ref(self) -> str:
        """``name:version``."""
        return self.manifest.ref

    @property
    def role(self) -> str:
        """``"segmenter"`` or ``"classifier"``."""
        return self.manifest.role

    @property
    def weights_path(self) -> Path:
        """The weights file named by the manifest."""
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

    def load_state_dict(self) -> "dict[str, torch.Tensor]":
        """Verify the sha256, then read the weights on the CPU as a plain state dict.

        Read by :func:`models.checkpoint.read_state_dict` (``torch.load(weights_only=True)``);
        dtypes are as stored (the demo models keep float16).

        Raises
        ------
        ModelIntegrityError
            The file is missing, its sha256 differs from the manifest's, or it is not a plain
            state dict; the message names the file and what to do.
        """
        from models.checkpoint import CheckpointError, read_state_dict

        self.verify()
        try:
            return read_state_dict(self.weights_path, kind=self.role)
        except CheckpointError as error:
            raise ModelIntegrityError(f"{error} (model {self.ref}); rebuild or re-import it") from error

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
