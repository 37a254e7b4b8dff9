"""Keep every output object under the data directory, so it can be re-sent or inspected.

Layout: ``<output_dir>/<Study Instance UID>/<Series Instance UID>/<SOP Instance UID>.dcm``,
every path component a validated UID (never raw header text). Writing is atomic
(:func:`node.spool.write_atomically`: temporary file, fsync, rename, fsync of the directory;
files 0600, directories 0700, the service account only), and idempotent: as output UIDs
are deterministic, a retry writes the same path again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom.dataset import Dataset

from node.constants import DICOM_SUFFIX
from node.dicom_uids import require_uid
from node.spool import write_atomically

logger = logging.getLogger(__name__)


def output_path(output_dir: Path, ds: Dataset) -> Path:
    """Where the output ``ds`` lives under ``output_dir`` (see the module docstring)."""
    study = require_uid(str(ds.get("StudyInstanceUID", "")), "Study Instance UID", strict=False)
    series = require_uid(str(ds.get("SeriesInstanceUID", "")), "Series Instance UID", strict=False)
    instance = require_uid(str(ds.get("SOPInstanceUID", "")), "SOP Instance UID", strict=False)
    return Path(output_dir) / study / series / f"{instance}{DICOM_SUFFIX}"


def write_output(output_dir: Path, ds: Dataset) -> Path:
    """Write ``ds`` as a DICOM Part 10 file under ``output_dir`` atomically; return its path.

    Parameters
    ----------
    output_dir:
        The node's output directory (``Settings.output_dir``); created when missing.
    ds:
        A SEG or SR built by :mod:`node.outputs.seg` / :mod:`node.outputs.sr` (with file meta).
    """
    path = output_path(output_dir, ds)
    write_atomically(path, lambda handle: ds.save_as(handle, enforce_file_format=True))
    logger.info("wrote output %s (%s)", ds.SOPInstanceUID, ds.get("Modality", "?"))
    return path
