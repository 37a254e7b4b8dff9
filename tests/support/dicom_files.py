"""Test DICOM files in every transfer syntax the listener accepts.

Built on :func:`training.dicom_export.radiograph_dataset` (a DX/CR/SC phantom-like image) and
converted the way real senders produce them: DCMTK ``dcmcjpeg`` (JPEG baseline on an 8-bit
variant, JPEG lossless Process 14 and SV1), ``dcmcjpls`` (JPEG-LS lossless and near-lossless),
``dcmcrle`` (RLE), pydicom with pylibjpeg-openjpeg (JPEG 2000 lossless and lossy), pydicom for
Deflated and Implicit VR. Each file comes with the pixels it was made from, so a test can
compare what the node stored and decodes against the source.

Example::

    made = make_instance(tmp_path / "a.dcm", JPEGLSLossless, size=64)
    assert np.array_equal(dcmread(made.path).pixel_array, made.pixels)
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom import uid as _uid
from pydicom.dataset import Dataset

from training.dicom_export import (
    DX_FOR_PRESENTATION,
    RadiographIdentity,
    radiograph_dataset,
)

#: Every transfer syntax the listener accepts, with whether it loses information.
TRANSFER_SYNTAXES: dict[str, bool] = {
    _uid.ImplicitVRLittleEndian: False,
    _uid.ExplicitVRLittleEndian: False,
    _uid.DeflatedExplicitVRLittleEndian: False,
    _uid.JPEGBaseline8Bit: True,
    _uid.JPEGLossless: False,
    _uid.JPEGLosslessSV1: False,
    _uid.JPEGLSLossless: False,
    _uid.JPEGLSNearLossless: True,
    _uid.JPEG2000Lossless: False,
    _uid.JPEG2000: True,
    _uid.RLELossless: False,
}

#: DCMTK conversions: transfer syntax -> (tool, options).
_DCMTK: dict[str, tuple[str, ...]] = {
    _uid.JPEGBaseline8Bit: ("dcmcjpeg", "+eb", "+q", "95", "+sr", "+un"),
    _uid.JPEGLossless: ("dcmcjpeg", "+el", "+sv", "6", "+un"),
    _uid.JPEGLosslessSV1: ("dcmcjpeg", "+e1", "+un"),
    _uid.JPEGLSLossless: ("dcmcjpls", "+el", "+un"),
    _uid.JPEGLSNearLossless: ("dcmcjpls", "+en", "+md", "2", "+un"),
    _uid.RLELossless: ("dcmcrle",),
}


@dataclass(frozen=True)
class TestInstance:
    """A written test file and what it holds.

    ``pixels`` is the ``(H, W)`` image as stored before compression (uint16, or uint8 for the
    JPEG baseline variant); ``lossy`` says whether the file's pixels may differ from it.
    """

    __test__ = False  # not a pytest test class

    path: Path
    identity: RadiographIdentity
    transfer_syntax_uid: str
    sop_class_uid: str
    pixels: np.ndarray
    lossy: bool


def test_pixels(size: int, *, seed: int = 0, bits: int = 12) -> np.ndarray:
    """A smooth ``(size, size)`` radiograph-like image with texture, integers in 0..2**bits-1.

    Smooth so that lossy codecs stay close; noisy enough that a decoder mixing up rows,
    bytes or bits cannot pass an equality test.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    base = 0.5 + 0.3 * np.sin(3 * np.pi * x) * np.cos(2 * np.pi * y)
    image = np.clip(base + rng.normal(0, 0.02, (size, size)), 0, 1)
    return np.rint(image * ((1 << bits) - 1)).astype(np.uint16)


def _eight_bit(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """Turn a 16-bit dataset into the 8-bit variant JPEG baseline needs; return its pixels."""
    small = (pixels >> 4).astype(np.uint8)
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = small.tobytes()
    return small


def make_instance(
    path: Path,
    transfer_syntax_uid: str = _uid.ExplicitVRLittleEndian,
    *,
    identity: RadiographIdentity | None = None,
    sop_class_uid: str = DX_FOR_PRESENTATION,
    size: int = 64,
    seed: int = 0,
) -> TestInstance:
    """Write one DX/CR/SC instance in ``transfer_syntax_uid`` to ``path``.

    Parameters
    ----------
    path:
        Destination file; its directory is created.
    transfer_syntax_uid:
        One of :data:`TRANSFER_SYNTAXES`.
    identity:
        UIDs to use; fresh ones by default.
    sop_class_uid:
        DX for Presentation (default), DX for Processing, CR or Secondary Capture.
    size:
        Rows = Columns; JPEG 2000 needs at least 32 (OpenJPEG's default resolution levels).
    """
    if transfer_syntax_uid not in TRANSFER_SYNTAXES:
        raise ValueError(f"{transfer_syntax_uid} is not a transfer syntax the listener accepts")
    identity = identity or RadiographIdentity.new()
    modality = {"1.2.840.10008.5.1.4.1.1.1": "CR", "1.2.840.10008.5.1.4.1.1.7": "OT"}.get(sop_class_uid, "DX")
    pixels = test_pixels(size, seed=seed)
    ds = radiograph_dataset(pixels, identity, sop_class_uid=sop_class_uid, modality=modality)
    if transfer_syntax_uid == _uid.JPEGBaseline8Bit:
        pixels = _eight_bit(ds, pixels)
    path.parent.mkdir(parents=True, exist_ok=True)

    if transfer_syntax_uid in _DCMTK:
        source = path.with_name(path.name + ".src.dcm")
        ds.save_as(source, enforce_file_format=True)
        tool, *options = _DCMTK[transfer_syntax_uid]
        subprocess.run([tool, *options, str(source), str(path)], check=True, capture_output=True, timeout=60)
        source.unlink()
    elif transfer_syntax_uid in (_uid.JPEG2000Lossless, _uid.JPEG2000):
        if transfer_syntax_uid == _uid.JPEG2000Lossless:
            ds.compress(_uid.JPEG2000Lossless, generate_instance_uid=False)
        else:
            ds.compress(_uid.JPEG2000, j2k_cr=[4], generate_instance_uid=False)
            ds.LossyImageCompression = "01"
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax_uid
        ds.save_as(path, enforce_file_format=True)

    written = dcmread(path, stop_before_pixels=True)
    if written.file_meta.TransferSyntaxUID != transfer_syntax_uid:
        raise RuntimeError(f"{path} came out as {written.file_meta.TransferSyntaxUID}, not {transfer_syntax_uid}")
    if written.SOPInstanceUID != identity.sop_instance_uid:
        raise RuntimeError(f"{path}: the converter changed the SOP Instance UID")
    return TestInstance(
        path=path,
        identity=identity,
        transfer_syntax_uid=transfer_syntax_uid,
        sop_class_uid=sop_class_uid,
        pixels=pixels,
        lossy=TRANSFER_SYNTAXES[transfer_syntax_uid],
    )


def make_study(
    directory: Path,
    count: int,
    transfer_syntax_uid: str = _uid.ExplicitVRLittleEndian,
    *,
    size: int = 64,
    study_instance_uid: str | None = None,
) -> list[TestInstance]:
    """``count`` instances of one study (one series) under ``directory``."""
    first = RadiographIdentity.new(study_instance_uid)
    made = []
    for index in range(count):
        identity = RadiographIdentity.new(first.study_instance_uid, series_instance_uid=first.series_instance_uid)
        made.append(
            make_instance(directory / f"{index:04d}.dcm", transfer_syntax_uid, identity=identity, size=size, seed=index)
        )
    return made
