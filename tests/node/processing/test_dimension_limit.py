"""The worker checks an image's declared size before it decodes anything.

A 65535 x 65535 RLE header with a 4 KB frame would make the decoder allocate 8.6 GB; it is opened
in a child process whose address space may grow by 2 GiB at most (so that a regression fails
instead of swapping the machine), and the growth of its peak resident memory is measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless, generate_uid

from node.processing.dimensions import DEFAULT_MAX_IMAGE_PIXELS, ImageSize, size_problem
from node.settings import Settings
from node.tasks.process import open_instance
from training.dicom_export import DX_FOR_PRESENTATION, RadiographIdentity, write_radiograph

REPO = Path(__file__).resolve().parents[3]

_CHILD = """
import json, os, resource, sys
from pathlib import Path
from node.tasks.process import open_instance
from tests.support.hostile_peer import peak_rss_bytes, reset_peak_rss
mapped = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (mapped + (2 << 30), mapped + (2 << 30)))  # 2 GiB more at most
before = reset_peak_rss(os.getpid())
inspection, ds, pixels = open_instance(Path(sys.argv[1]))
print(json.dumps({"error": inspection.get("error"), "decoded": pixels is not None,
                  "peak_growth_bytes": peak_rss_bytes(os.getpid()) - before}))
"""


def rle_bomb(path: Path, size: int = 65535) -> Path:
    """A DX header of ``size`` x ``size`` 16-bit pixels whose RLE frame is 4 KB of runs."""
    segment = b"\x81\x00" * 1000  # 1000 runs of 128 zero bytes: far short of the frame it declares
    header = struct_header(2, [64, 64 + len(segment)])
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = DX_FOR_PRESENTATION, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([header + segment + segment])
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def struct_header(segments: int, offsets: list[int]) -> bytes:
    """The 64-byte RLE header (PS3.5 G.5): segment count and offsets, little endian."""
    values = [segments, *offsets] + [0] * (15 - len(offsets))
    return np.asarray(values, dtype="<u4").tobytes()


def test_a_65535_square_rle_header_is_refused_without_allocating(tmp_path: Path) -> None:
    bomb = rle_bomb(tmp_path / "bomb.dcm")
    assert bomb.stat().st_size < 8192

    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(bomb)], capture_output=True, text=True, timeout=120, cwd=REPO
    )

    assert child.returncode == 0, child.stderr[-3000:]
    found = json.loads(child.stdout.strip().splitlines()[-1])
    assert found["decoded"] is False
    assert found["error"] == (
        f"image too large: 65535 x 65535 is {65535 * 65535} samples, more than "
        f"CXR_NODE_MAX_IMAGE_PIXELS={DEFAULT_MAX_IMAGE_PIXELS}; not decoded"
    )
    assert found["peak_growth_bytes"] < 64 * 1024 * 1024, found  # the frame would take 8.6 GB


def test_the_limit_is_the_setting_and_a_size_within_it_decodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_radiograph(tmp_path / "dx.dcm", np.zeros((48, 64), dtype=np.uint16), RadiographIdentity.new())
    monkeypatch.setenv("CXR_NODE_MAX_IMAGE_PIXELS", str(48 * 64 - 1))
    limit = Settings().max_image_pixels

    refused, _, none = open_instance(path, max_image_pixels=limit)
    inspection, _, pixels = open_instance(path, max_image_pixels=limit + 1)

    assert none is None and refused["error"].startswith(f"image too large: 48 x 64 is 3072 samples, more than CXR_NODE_MAX_IMAGE_PIXELS={limit}")
    assert pixels is not None and pixels.shape == (48, 64) and inspection["decoded"] is True


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (ImageSize(rows=None, columns=64), "Rows (0028,0010) is missing or not a positive number; the pixel data cannot be decoded"),
        (ImageSize(rows=64, columns=0), "Columns (0028,0011) is missing or not a positive number; the pixel data cannot be decoded"),
        (ImageSize(rows=64, columns=64, frames=0), "Number of Frames (0028,0008) is missing or not a positive number; the pixel data cannot be decoded"),
        (ImageSize(rows=64, columns=64, samples_per_pixel=None), "Samples per Pixel (0028,0002) is missing or not a positive number; the pixel data cannot be decoded"),
        (ImageSize(rows=64, columns=64, bits_allocated=12), "Bits Allocated (0028,0100) is not 1 or a multiple of 8 up to 64; the pixel data cannot be decoded"),
        (ImageSize(rows=64, columns=64, bits_allocated=None), "Bits Allocated (0028,0100) is not 1 or a multiple of 8 up to 64; the pixel data cannot be decoded"),
        (
            ImageSize(rows=10000, columns=5000, frames=3, samples_per_pixel=3, bits_allocated=8),
            f"image too large: 10000 x 5000 x 3 frames x 3 samples is 450000000 samples, more than CXR_NODE_MAX_IMAGE_PIXELS={DEFAULT_MAX_IMAGE_PIXELS}; not decoded",
        ),
        (ImageSize(rows=10000, columns=10000), None),
        (ImageSize(rows=4300, columns=4300, bits_allocated=1), None),
    ],
)
def test_size_problems_name_the_attribute_and_the_dimensions(size: ImageSize, expected: str | None) -> None:
    assert size_problem(size) == expected


def test_decoded_bytes_follow_bits_allocated() -> None:
    assert ImageSize(rows=100, columns=200, bits_allocated=16).decoded_bytes == 40_000
    assert ImageSize(rows=100, columns=200, samples_per_pixel=3, bits_allocated=8).decoded_bytes == 60_000
    assert ImageSize(rows=100, columns=200, bits_allocated=1).decoded_bytes == 20_000
