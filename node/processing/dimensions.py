"""Whether an image's declared size is sane enough to decode, from its header alone.

A decoder allocates what the header declares: Rows x Columns x frames x samples per pixel,
times the bytes per sample, before it reads a byte of the (possibly tiny) compressed data. A
65535 x 65535 RLE header with a 4 KB frame makes pydicom allocate 8.6 GB. The worker asks
:func:`size_problem` first and records the image as failed when it answers; nothing is decoded.

The limit (``CXR_NODE_MAX_IMAGE_PIXELS``, default :data:`DEFAULT_MAX_IMAGE_PIXELS`) counts
*samples*: Rows x Columns x Number of Frames x Samples per Pixel. The decoded array then takes at
most that many samples times the bytes per sample (Bits Allocated / 8, at most 8). The default,
10^8 samples, is five times a 4300 x 4300 detector image's 18.5 million; the models read single
frame images, so a larger one is never one they could use.

The texts name attributes and dimensions, which are not patient data, and no other value.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Default of ``CXR_NODE_MAX_IMAGE_PIXELS``: samples (Rows x Columns x frames x samples per pixel).
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
#: Bits Allocated values pydicom decodes (PS3.5 8.1.1: 1, or a multiple of 8).
_BITS_ALLOCATED = frozenset({1, 8, 16, 24, 32, 40, 48, 56, 64})


@dataclass(frozen=True)
class ImageSize:
    """The declared geometry of an image's pixel data (``None``: the attribute is absent or not a number)."""

    rows: int | None
    columns: int | None
    frames: int | None = 1
    samples_per_pixel: int | None = 1
    bits_allocated: int | None = 16

    @property
    def samples(self) -> int:
        """Rows x Columns x frames x samples per pixel (0 when one of them is unknown)."""
        values = (self.rows, self.columns, self.frames, self.samples_per_pixel)
        if any(v is None or v < 1 for v in values):
            return 0
        total = 1
        for value in values:
            total *= int(value)  # type: ignore[arg-type]
        return total

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoded array (pydicom unpacks 1-bit data to one byte per sample)."""
        bits = self.bits_allocated or 8
        return self.samples * max(1, bits // 8)

    def describe(self) -> str:
        """``"65535 x 65535"``, with frames and samples per pixel when they are not 1."""
        text = f"{self.rows} x {self.columns}"
        if self.frames not in (None, 1):
            text += f" x {self.frames} frames"
        if self.samples_per_pixel not in (None, 1):
            text += f" x {self.samples_per_pixel} samples"
        return text


def size_problem(size: ImageSize, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> str | None:
    """Why the image must not be decoded, or ``None`` when its declared size is sane.

    Refused: Rows, Columns, Number of Frames or Samples per Pixel absent or below 1 (Number of
    Frames absent means 1), Bits Allocated not 1 or a multiple of 8 up to 64, or more samples
    than ``max_pixels``.
    """
    for name, tag, value in (
        ("Rows", "(0028,0010)", size.rows),
        ("Columns", "(0028,0011)", size.columns),
        ("Number of Frames", "(0028,0008)", size.frames),
        ("Samples per Pixel", "(0028,0002)", size.samples_per_pixel),
    ):
        if value is None or value < 1:
            return f"{name} {tag} is missing or not a positive number; the pixel data cannot be decoded"
    if size.bits_allocated not in _BITS_ALLOCATED:
        return "Bits Allocated (0028,0100) is not 1 or a multiple of 8 up to 64; the pixel data cannot be decoded"
    if size.samples > max_pixels:
        return (
            f"image too large: {size.describe()} is {size.samples} samples, more than "
            f"CXR_NODE_MAX_IMAGE_PIXELS={max_pixels}; not decoded"
        )
    return None
