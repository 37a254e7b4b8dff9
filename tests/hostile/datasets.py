"""Data sets to damage: a small valid DX radiograph as a list of encoded elements.

:func:`radiograph_elements` encodes each top-level element of a
:func:`training.dicom_export.radiograph_dataset` separately, so a generator knows where every
element starts and ends and can cut, shift, swap, duplicate or rewrite exactly one of them. The
encoders for the damage (:func:`explicit_element`, :func:`sequence`, :func:`item`) write bytes
by hand after PS3.5 7.1 and 7.5, because pydicom refuses to write most of it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element

from tests.support.dicom_files import test_pixels
from training.dicom_export import RadiographIdentity, radiograph_dataset

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
PIXEL_DATA = 0x7FE00010
ITEM = (0xFFFE, 0xE000)
ITEM_DELIMITER = (0xFFFE, 0xE00D)
SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
UNDEFINED = 0xFFFFFFFF
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


@dataclass(frozen=True)
class Encoded:
    """One top-level element: its tag (group << 16 | element) and its bytes."""

    tag: int
    data: bytes
    vr: bytes | None  #: None in implicit VR

    @property
    def header_length(self) -> int:
        if self.vr is None:
            return 8
        return 12 if self.vr in LONG_VRS else 8

    @property
    def value_length(self) -> int:
        return len(self.data) - self.header_length


@dataclass
class Radiograph:
    """A valid data set as elements, with the UIDs it carries."""

    identity: RadiographIdentity
    sop_class_uid: str
    elements: list[Encoded]

    @property
    def sop_instance_uid(self) -> str:
        return self.identity.sop_instance_uid

    def join(self, elements: Sequence[Encoded] | None = None) -> bytes:
        return b"".join(e.data for e in (self.elements if elements is None else elements))

    def index(self, tag: int) -> int:
        for position, element in enumerate(self.elements):
            if element.tag == tag:
                return position
        raise KeyError(f"no element ({tag >> 16:04X},{tag & 0xFFFF:04X})")

    def offset(self, index: int) -> int:
        """Byte offset of element ``index`` in :meth:`join`."""
        return sum(len(e.data) for e in self.elements[:index])

    def replaced(self, tag: int, new: Encoded | None) -> list[Encoded]:
        """The elements with ``tag`` replaced by ``new`` (or removed when ``None``)."""
        return [(new if e.tag == tag else e) for e in self.elements if e.tag != tag or new is not None]

    def inserted(self, new: Encoded) -> list[Encoded]:
        """The elements with ``new`` put at its place in ascending tag order."""
        before = [e for e in self.elements if e.tag < new.tag]
        return [*before, new, *[e for e in self.elements if e.tag >= new.tag and e.tag != new.tag]]


def encode(ds: Dataset, *, implicit: bool = False) -> list[Encoded]:
    """Each top-level element of ``ds`` encoded alone, little endian, in tag order."""
    out = []
    correct_ambiguous_vr(ds, True)  # Pixel Data 'OB or OW' -> OW for 16 bits
    for element in ds:
        buffer = DicomBytesIO()
        buffer.is_little_endian = True
        buffer.is_implicit_VR = implicit
        write_data_element(buffer, element)
        data = buffer.getvalue()
        out.append(Encoded(int(element.tag), data, None if implicit else data[4:6]))
    return out


def radiograph(
    *,
    size: int = 16,
    implicit: bool = False,
    change: Callable[[Dataset], None] | None = None,
    identity: RadiographIdentity | None = None,
    seed: int = 0,
) -> Radiograph:
    """A valid radiograph as elements: fresh UIDs unless ``identity`` is given, pixels from ``seed``;
    ``change`` edits the data set before encoding."""
    identity = identity or RadiographIdentity.new()
    ds = radiograph_dataset(test_pixels(size, seed=seed), identity)
    if change is not None:
        change(ds)
    return Radiograph(identity, str(ds.SOPClassUID), encode(ds, implicit=implicit))


# --- hand-written encodings (PS3.5 7.1.2, 7.5) ---------------------------------------------
def explicit_element(tag: int, vr: bytes, value: bytes, *, length: int | None = None) -> Encoded:
    """An explicit VR little endian element; ``length`` overrides the declared length (lies allowed)."""
    declared = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in LONG_VRS:
        head += b"\x00\x00" + struct.pack("<L", declared)
    else:
        head += struct.pack("<H", declared & 0xFFFF)
    return Encoded(tag, head + value, vr)


def implicit_element(tag: int, value: bytes, *, length: int | None = None) -> Encoded:
    """An implicit VR little endian element; ``length`` overrides the declared length."""
    declared = len(value) if length is None else length
    return Encoded(tag, struct.pack("<HHL", tag >> 16, tag & 0xFFFF, declared) + value, None)


def item(content: bytes, *, defined: bool = True, delimited: bool | None = None) -> bytes:
    """A sequence item (FFFE,E000) holding ``content``; undefined length ends with an item delimiter
    unless ``delimited`` is False."""
    if defined:
        return struct.pack("<HHL", *ITEM, len(content)) + content
    tail = struct.pack("<HHL", *ITEM_DELIMITER, 0) if delimited is not False else b""
    return struct.pack("<HHL", *ITEM, UNDEFINED) + content + tail


def sequence(tag: int, items: bytes, *, defined: bool = False, delimited: bool = True) -> Encoded:
    """An SQ element of ``items``; undefined length ends with a sequence delimiter unless told not to."""
    if defined:
        return explicit_element(tag, b"SQ", items)
    tail = struct.pack("<HHL", *SEQUENCE_DELIMITER, 0) if delimited else b""
    return explicit_element(tag, b"SQ", items + tail, length=UNDEFINED)


def text_element(tag: int, vr: bytes, text: str) -> Encoded:
    """A short text element (UI padded with NUL, others with space, to even length)."""
    value = text.encode("latin-1")
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    return explicit_element(tag, vr, value)


def encapsulated_pixel_data(fragments: Sequence[bytes], *, offset_table: bytes = b"") -> Encoded:
    """Encapsulated Pixel Data (PS3.5 A.4): undefined length OB, Basic Offset Table, fragments, delimiter."""
    body = item(offset_table) + b"".join(item(f) for f in fragments)
    return explicit_element(PIXEL_DATA, b"OB", body + struct.pack("<HHL", *SEQUENCE_DELIMITER, 0), length=UNDEFINED)


def deflate(data: bytes, level: int = 6) -> bytes:
    """Raw deflate (no zlib header), as PS3.5 A.5 requires for Deflated Explicit VR Little Endian."""
    deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()


def deflate_bomb(head: bytes, zeros: int, tail: bytes = b"") -> bytes:
    """``head``, ``zeros`` zero bytes and ``tail``, raw-deflated in 16 MiB steps (never held inflated)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(head)]
    block = bytes(16 * 1024 * 1024)
    left = zeros
    while left > 0:
        parts.append(deflater.compress(block[: min(left, len(block))]))
        left -= min(left, len(block))
    parts.append(deflater.compress(tail))
    parts.append(deflater.flush())
    return b"".join(parts)


def rle_frame(segments: Sequence[bytes]) -> bytes:
    """An RLE Lossless frame (PS3.5 G.3): the 64-byte header of segment offsets, then the segments."""
    header = struct.pack("<L", len(segments))
    offsets = []
    position = 64
    for segment in segments:
        offsets.append(position)
        position += len(segment)
    header += b"".join(struct.pack("<L", o) for o in offsets) + b"\x00" * 4 * (15 - len(segments))
    return header + b"".join(segments)
