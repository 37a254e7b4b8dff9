"""The source image's header without its pixels, as the output builders hand it to highdicom."""

from __future__ import annotations

from pydicom.dataset import Dataset


def header_without_pixels(source: Dataset) -> Dataset:
    """A shallow copy of ``source`` without Pixel Data, with the same File Meta Information.

    highdicom reads only the source's metadata; building from this copy keeps it from
    touching (or decoding) the caller's dataset and keeps a large frame out of the output.
    """
    header = Dataset({element.tag: element for element in source if element.keyword != "PixelData"})
    header.file_meta = getattr(source, "file_meta", Dataset())
    return header
