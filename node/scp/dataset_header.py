"""Read the few attributes the listener needs from an encoded data set, without decoding it.

The C-STORE handler gets the data set as the bytes the peer sent. It needs four UIDs and
whether Pixel Data is there, and it must notice a truncated or garbled stream, all without
decoding pixel data or building a pydicom Dataset. :func:`read_header` walks the element
headers of the whole stream (PS3.5 7.1 data elements, 7.5 nested data sets, A.4 encapsulated
pixel data), checks that every value fits inside it and that top-level tags ascend, and keeps
the values of a handful of top-level elements. It skips values, so it costs microseconds per
element whatever the image size.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from node.scp.contexts import DEFLATED_TRANSFER_SYNTAXES, IMPLICIT_VR_TRANSFER_SYNTAXES

# Tags as (group << 16 | element).
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
MODALITY = 0x00080060
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
PIXEL_DATA = 0x7FE00010

ITEM = 0xFFFEE000
ITEM_DELIMITATION = 0xFFFEE00D
SEQUENCE_DELIMITATION = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF

#: Values kept from the top level (short text values only).
WANTED_TAGS = frozenset({SOP_CLASS_UID, SOP_INSTANCE_UID, MODALITY, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID})
_MAX_KEPT_VALUE = 256

#: PS3.5 Table 7.1-1: VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
#: Nesting deeper than this is not a radiograph; refuse rather than recurse without bound.
_MAX_DEPTH = 32

_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_TAG = struct.Struct("<HH")


class CorruptDatasetError(ValueError):
    """The stream is not a complete data set in the negotiated transfer syntax."""


@dataclass(frozen=True)
class DatasetHeader:
    """What :func:`read_header` found at the top level of a data set.

    ``values`` maps a tag in :data:`WANTED_TAGS` to its value as text (trailing spaces and NULs
    removed); missing attributes are absent.
    """

    values: dict[int, str] = field(default_factory=dict)
    has_pixel_data: bool = False
    element_count: int = 0

    def get(self, tag: int) -> str | None:
        return self.values.get(tag)


class _Walker:
    def __init__(self, buffer: memoryview, explicit: bool, wanted: frozenset[int] = WANTED_TAGS) -> None:
        self.buf = buffer
        self.explicit = explicit
        self.wanted = wanted
        self.values: dict[int, str] = {}
        self.has_pixel_data = False
        self.count = 0

    def fail(self, position: int, what: str) -> CorruptDatasetError:
        return CorruptDatasetError(f"{what} at byte {position} of a {len(self.buf)}-byte data set")

    def u32(self, position: int, end: int) -> int:
        if position + 4 > end:
            raise self.fail(position, "stream ends inside an element header")
        return _U32.unpack_from(self.buf, position)[0]

    def element_header(self, position: int, end: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
        """Return (tag, vr, length, value offset) of the element starting at ``position``."""
        if position + 8 > end:
            raise self.fail(position, "stream ends inside an element header")
        group, element = _TAG.unpack_from(self.buf, position)
        tag = group << 16 | element
        if group == 0xFFFE:  # item and delimiters: tag + 4-byte length, never a VR
            return tag, None, _U32.unpack_from(self.buf, position + 4)[0], position + 8
        if not explicit:
            return tag, None, _U32.unpack_from(self.buf, position + 4)[0], position + 8
        vr = bytes(self.buf[position + 4 : position + 6])
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise self.fail(position, f"element ({group:04X},{element:04X}) has no valid VR")
        if vr in _LONG_VRS:
            return tag, vr, self.u32(position + 8, end), position + 12
        return tag, vr, _U16.unpack_from(self.buf, position + 6)[0], position + 8

    def dataset(self, position: int, end: int, explicit: bool, depth: int, *, in_item: bool) -> int:
        """Walk elements from ``position``; stop at ``end`` or (``in_item``) an item delimiter."""
        if depth > _MAX_DEPTH:
            raise self.fail(position, "data sets nested too deeply")
        previous_tag = -1
        while position < end:
            tag, vr, length, value = self.element_header(position, end, explicit)
            if tag == ITEM_DELIMITATION:
                if not in_item:
                    raise self.fail(position, "item delimiter outside an item")
                return value
            if tag in (ITEM, SEQUENCE_DELIMITATION):
                raise self.fail(position, "item tag where a data element was expected")
            if tag <= previous_tag:
                raise self.fail(position, f"tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) out of ascending order")
            previous_tag = tag
            if depth == 0:
                self.count += 1
            if length == UNDEFINED_LENGTH:
                if tag == PIXEL_DATA and depth == 0:
                    self.has_pixel_data = True
                    position = self.encapsulated(value, end)
                    continue
                if explicit and vr not in (b"SQ", b"UN"):
                    raise self.fail(position, f"undefined length on a {vr!r} element")
                # UN with undefined length is implicit VR inside (PS3.5 6.2.2 note 4).
                nested_explicit = explicit and vr == b"SQ"
                position = self.sequence(value, end, nested_explicit, depth + 1)
                continue
            next_position = value + length
            if next_position > end:
                raise self.fail(position, f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end")
            if depth == 0:
                if tag == PIXEL_DATA and length > 0:
                    self.has_pixel_data = True
                elif tag in self.wanted and length <= _MAX_KEPT_VALUE:
                    text = bytes(self.buf[value:next_position]).decode("ascii", "replace")
                    self.values[tag] = text.rstrip("\x00 ").strip()
            position = next_position
        if in_item:
            raise self.fail(position, "stream ends inside an item without its delimiter")
        if position != end:
            raise self.fail(position, "element runs past the end")
        return position

    def sequence(self, position: int, end: int, explicit: bool, depth: int) -> int:
        """Walk the items of an undefined-length sequence; return the offset after its delimiter."""
        while True:
            tag, _vr, length, value = self.element_header(position, end, False)
            if tag == SEQUENCE_DELIMITATION:
                return value
            if tag != ITEM:
                raise self.fail(position, "sequence holds something other than items")
            if length == UNDEFINED_LENGTH:
                position = self.dataset(value, end, explicit, depth, in_item=True)
            else:
                if value + length > end:
                    raise self.fail(position, "item runs past the end")
                self.dataset(value, value + length, explicit, depth, in_item=False)
                position = value + length

    def encapsulated(self, position: int, end: int) -> int:
        """Skip the fragments of encapsulated Pixel Data (PS3.5 A.4); return the offset after them."""
        fragments = 0
        while True:
            tag, _vr, length, value = self.element_header(position, end, False)
            if tag == SEQUENCE_DELIMITATION:
                if fragments < 2:  # the Basic Offset Table item plus at least one fragment
                    raise self.fail(position, "encapsulated Pixel Data without a fragment")
                return value
            if tag != ITEM or length == UNDEFINED_LENGTH:
                raise self.fail(position, "encapsulated Pixel Data holds something other than fragments")
            if value + length > end:
                raise self.fail(position, "Pixel Data fragment runs past the end")
            fragments += 1
            position = value + length


class InflatedTooLargeError(ValueError):
    """A deflated data set inflates to more than the caller's limit (a deflate bomb, or just too big)."""


def read_header(
    stream: bytes | memoryview,
    transfer_syntax_uid: str,
    wanted: frozenset[int] = WANTED_TAGS,
    *,
    max_inflated_bytes: int | None = None,
) -> DatasetHeader:
    """Walk an encoded data set (no File Meta Information) and return its header facts.

    Parameters
    ----------
    stream:
        The data set exactly as received, in ``transfer_syntax_uid``.
    transfer_syntax_uid:
        The presentation context's transfer syntax: implicit or explicit VR little endian,
        deflated explicit VR little endian, or any encapsulated (compressed) one.
    wanted:
        Top-level tags whose (short, text) values are kept; :data:`WANTED_TAGS` by default.
    max_inflated_bytes:
        For a deflated data set, the most bytes it may inflate to; inflation stops one byte
        past it, so memory stays bounded whatever the stream holds. ``None``: no limit.

    Raises
    ------
    CorruptDatasetError
        When the stream is truncated, an element's length runs past the end, a VR is not
        letters, top-level tags do not ascend, or a deflated stream does not inflate completely.
    InflatedTooLargeError
        When a deflated data set inflates to more than ``max_inflated_bytes``.
    """
    buffer = memoryview(stream)
    if transfer_syntax_uid in DEFLATED_TRANSFER_SYNTAXES:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        cap = 0 if max_inflated_bytes is None else max_inflated_bytes + 1  # 0: zlib's "no limit"
        try:
            inflated = inflater.decompress(buffer, cap)
            if max_inflated_bytes is None:
                inflated += inflater.flush()
        except zlib.error as error:
            raise CorruptDatasetError(f"deflated data set does not inflate: {error}") from None
        if max_inflated_bytes is not None and len(inflated) > max_inflated_bytes:
            raise InflatedTooLargeError(
                f"deflated data set of {len(buffer)} bytes inflates to more than {max_inflated_bytes} bytes"
            )
        if not inflater.eof:
            raise CorruptDatasetError("deflated data set is truncated (no end of the deflate stream)")
        buffer = memoryview(inflated)
    if len(buffer) == 0:
        raise CorruptDatasetError("the data set is empty")
    walker = _Walker(buffer, transfer_syntax_uid not in IMPLICIT_VR_TRANSFER_SYNTAXES, wanted)
    walker.dataset(0, len(buffer), walker.explicit, 0, in_item=False)
    return DatasetHeader(walker.values, walker.has_pixel_data, walker.count)
