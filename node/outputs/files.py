"""Keep every output object under the data directory, so it can be re-sent or inspected.

Layout: ``<output_dir>/<Study Instance UID>/<Series Instance UID>/<SOP Instance UID>.dcm``,
every path component a validated UID (never raw header text). Writing is atomic
(:func:`node.spool.write_atomically`: temporary file, fsync, rename, fsync of the directory;
files 0600, directories 0700, the service account only), and idempotent: as output UIDs
are deterministic, a retry writes the same path again.

Free disk: an output is not written when it would leave less free disk than the watermark the
caller gives (``settings.min_free_disk_bytes``), and a write that fails for lack of space is
reported the same way, as :class:`OutputDiskFullError`. That is the node's problem, not the
study's: the job fails at its stage and can be run again once space is freed.
"""

from __future__ import annotations

import errno
import logging
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset

from node.constants import DICOM_SUFFIX
from node.dicom_uids import require_uid
from node.disk import free_bytes, is_disk_full
from node.spool import write_atomically

logger = logging.getLogger(__name__)


def output_path(output_dir: Path, ds: Dataset) -> Path:
    """Where the output ``ds`` lives under ``output_dir`` (see the module docstring)."""
    study = require_uid(str(ds.get("StudyInstanceUID", "")), "Study Instance UID", strict=False)
    series = require_uid(str(ds.get("SeriesInstanceUID", "")), "Series Instance UID", strict=False)
    instance = require_uid(str(ds.get("SOPInstanceUID", "")), "SOP Instance UID", strict=False)
    return Path(output_dir) / study / series / f"{instance}{DICOM_SUFFIX}"


class OutputDiskFullError(OSError):
    """An output was not written for lack of free disk (``errno`` ENOSPC); nothing of it is left behind.

    Not the study's fault: free space and run the job again.
    """


def write_output(output_dir: Path, ds: Dataset, *, min_free_bytes: int = 0) -> Path:
    """Write ``ds`` as a DICOM Part 10 file under ``output_dir`` atomically; return its path.

    Parameters
    ----------
    output_dir:
        The node's output directory (``Settings.output_dir``); created when missing.
    ds:
        A SEG or SR built by :mod:`node.outputs.seg` / :mod:`node.outputs.sr` (with file meta).
    min_free_bytes:
        The disk watermark (``Settings.min_free_disk_bytes``; 0: none). The object is encoded
        first; when writing it would leave less free disk than this, nothing is written.

    Raises
    ------
    OutputDiskFullError
        Under the watermark, or the disk filled up while writing (no partial file is left).
    """
    path = output_path(output_dir, ds)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getbuffer()
    what = f"output {ds.SOPInstanceUID} ({ds.get('Modality', '?')}, {data.nbytes} bytes)"
    advice = "free disk space in the data directory, then process the study again"
    if min_free_bytes > 0:
        free = free_bytes(output_dir)
        if free - data.nbytes < min_free_bytes:
            raise OutputDiskFullError(
                errno.ENOSPC,
                f"{what} not written: {free} bytes free, under the watermark of {min_free_bytes} bytes "
                f"(CXR_NODE_MIN_FREE_DISK_BYTES); {advice}",
            )
    try:
        write_atomically(path, lambda handle: handle.write(data))
    except OSError as error:
        if is_disk_full(error):
            raise OutputDiskFullError(errno.ENOSPC, f"{what} not written: the disk is full; {advice}") from error
        raise
    finally:
        data.release()
    logger.info("wrote output %s (%s)", ds.SOPInstanceUID, ds.get("Modality", "?"))
    return path
