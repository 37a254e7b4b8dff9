"""Encoding faults: data sets that are not what their transfer syntax and SOP Class promise.

Every case sends one C-STORE of a damaged small DX radiograph on a DX context. What the listener
must answer follows from what it checks before anything is stored (:mod:`node.scp.handlers`):
the bytes must walk as a complete data set in the negotiated transfer syntax (else 0xC210), a
deflated one must not inflate past the size limit (0xA703), Pixel Data must be there (0xA900),
the four UIDs must be UIDs (0xC212) and agree with the request (0xC213, 0xA901). Damage the
walker cannot see (pixel data shorter than Rows x Columns, a 65535 x 65535 frame in a tiny RLE
fragment, colour nonsense) is stored (Success) and then recorded as a failed result with its
reason when the study is processed.
"""

from __future__ import annotations

import random
import struct
from io import BytesIO
from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from node.scp import statuses
from tests.hostile.attacks import Store, processed_attack, store_attack
from tests.hostile.cases import ENCODING, Aborted, HostileCase, Recorded, Status
from tests.hostile.datasets import (
    PIXEL_DATA,
    SERIES_INSTANCE_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    UNDEFINED,
    Encoded,
    Radiograph,
    deflate,
    deflate_bomb,
    encapsulated_pixel_data,
    explicit_element,
    implicit_element,
    item,
    radiograph,
    rle_frame,
    sequence,
    text_element,
)
from training.dicom_export import CR_IMAGE

CORRUPT = Status(statuses.CANNOT_UNDERSTAND_CORRUPT)
INVALID_UID = Status(statuses.CANNOT_UNDERSTAND_INVALID_UID)
NO_PIXELS = Status(statuses.DATASET_WITHOUT_PIXEL_DATA)
BOMB = Status(statuses.OUT_OF_RESOURCES_INFLATED_TOO_LARGE)
STORED = Status(statuses.SUCCESS)
NOT_DECODED = Recorded("failed", "pixel data could not be decoded")
MIB = 1024 * 1024
#: A sequence tag that sorts between the radiograph's own elements: Referenced Image Sequence.
SEQUENCE_TAG = 0x00081140
#: The elements the generators damage one at a time (present in every radiograph).
TARGETS = {
    "sop-class-uid": SOP_CLASS_UID,
    "sop-instance-uid": SOP_INSTANCE_UID,
    "modality": 0x00080060,
    "patient-name": 0x00100010,
    "study-uid": STUDY_INSTANCE_UID,
    "series-uid": SERIES_INSTANCE_UID,
    "rows": 0x00280010,
    "pixel-data": PIXEL_DATA,
}

Damage = Callable[[Radiograph], list[Encoded] | bytes]


def _store(r: Radiograph, data: bytes, **kwargs: object) -> Store:
    return Store(data, r.sop_instance_uid, r.identity.study_instance_uid, r.sop_class_uid, **kwargs)  # type: ignore[arg-type]


def damaged(damage: Damage, *, implicit: bool = False, transfer_syntax: str | None = None, **store: object) -> Callable[[], Store]:
    """A builder: a fresh radiograph, ``damage`` applied (to its elements, or bytes outright)."""

    def build() -> Store:
        r = radiograph(implicit=implicit)
        result = damage(r)
        data = result if isinstance(result, bytes) else r.join(result)
        syntax = transfer_syntax or (ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
        return _store(r, data, transfer_syntax=syntax, **store)

    return build


def case(name: str, damage: Damage, expected: object, **options: object) -> HostileCase:
    return HostileCase(name, ENCODING, store_attack(damaged(damage, **options)), expected)  # type: ignore[arg-type]


# --- truncated and garbage -------------------------------------------------------------------
def _cut(tag: int, inside: str) -> Damage:
    def damage(r: Radiograph) -> bytes:
        index = r.index(tag)
        element = r.elements[index]
        start = r.offset(index)
        at = start + 3 if inside == "header" else start + element.header_length + element.value_length // 2
        return r.join()[:at]

    return damage


def truncated_cases() -> list[HostileCase]:
    cases = []
    for target, tag in TARGETS.items():
        cases.append(case(f"truncated-in-header-of-{target}", _cut(tag, "header"), CORRUPT))
        cases.append(case(f"truncated-in-value-of-{target}", _cut(tag, "value"), CORRUPT))
    cases.append(case("truncated-implicit-in-pixel-data", _cut(PIXEL_DATA, "value"), CORRUPT, implicit=True))
    cases.append(case("truncated-implicit-in-study-uid", _cut(STUDY_INSTANCE_UID, "value"), CORRUPT, implicit=True))
    cases.append(case("truncated-to-one-byte", lambda r: r.join()[:1], CORRUPT))
    cases.append(case("truncated-last-byte", lambda r: r.join()[:-1], CORRUPT))
    return cases


def garbage_cases() -> list[HostileCase]:
    cases = [
        case("empty-data-set", lambda r: b"", CORRUPT),
        case("all-zero-bytes", lambda r: bytes(4096), CORRUPT),
        case("all-ff-bytes", lambda r: b"\xff" * 4096, CORRUPT),
        case("text-instead-of-a-data-set", lambda r: b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n", CORRUPT),
        case("trailing-garbage-13-bytes", lambda r: r.join() + bytes(range(1, 14)), CORRUPT),
        case("trailing-one-byte", lambda r: r.join() + b"\x00", CORRUPT),
    ]
    for seed, size in enumerate((8, 64, 1000, 65536)):
        noise = random.Random(seed).randbytes(size)
        cases.append(case(f"random-bytes-{size}", lambda r, noise=noise: noise, CORRUPT))
    for seed, target in enumerate(("modality", "patient-name", "rows")):
        def overwrite(r: Radiograph, tag: int = TARGETS[target], seed: int = seed) -> bytes:
            data = bytearray(r.join())
            at = r.offset(r.index(tag))
            data[at : at + 16] = random.Random(100 + seed).randbytes(16)
            return bytes(data)

        cases.append(case(f"random-block-over-{target}", overwrite, CORRUPT))
    return cases


# --- lengths ---------------------------------------------------------------------------------
def _relength(tag: int, delta: int | None, value: int | None = None) -> Damage:
    """Rewrite the declared length of ``tag`` by ``delta`` (or to ``value``)."""

    def damage(r: Radiograph) -> list[Encoded]:
        element = r.elements[r.index(tag)]
        data = bytearray(element.data)
        if element.header_length == 12:
            old = struct.unpack_from("<L", data, 8)[0]
            struct.pack_into("<L", data, 8, (old + delta if value is None else value) & 0xFFFFFFFF)  # type: ignore[operator]
        else:
            old = struct.unpack_from("<H", data, 6)[0]
            struct.pack_into("<H", data, 6, (old + delta if value is None else value) & 0xFFFF)  # type: ignore[operator]
        return r.replaced(tag, Encoded(tag, bytes(data), element.vr))

    return damage


def length_cases() -> list[HostileCase]:
    cases = []
    for target in ("sop-instance-uid", "modality", "patient-name", "study-uid", "rows", "pixel-data"):
        tag = TARGETS[target]
        cases.append(case(f"length-plus-2-on-{target}", _relength(tag, 2), CORRUPT))
        cases.append(case(f"length-plus-1-on-{target}", _relength(tag, 1), CORRUPT))
        cases.append(case(f"length-minus-2-on-{target}", _relength(tag, -2), CORRUPT))
    cases += [
        case("length-ffff-on-a-short-vr", _relength(TARGETS["patient-name"], None, 0xFFFF), CORRUPT),
        case("huge-length-on-pixel-data", _relength(PIXEL_DATA, None, 0xFFFFFFF0), CORRUPT),
        case("2-gib-length-on-pixel-data", _relength(PIXEL_DATA, None, 0x80000000), CORRUPT),
        case(
            "1-gib-length-on-a-ut-element",
            lambda r: r.inserted(explicit_element(0x00204000, b"UT", b"comment ", length=1 << 30)),
            CORRUPT,
        ),
        case(
            "huge-item-length-in-a-sequence",
            lambda r: r.inserted(sequence(SEQUENCE_TAG, struct.pack("<HHL", 0xFFFE, 0xE000, 0x7FFFFFF0) + b"\x00" * 8)),
            CORRUPT,
        ),
        case(
            "huge-fragment-length-in-encapsulated-pixel-data",
            lambda r: r.replaced(PIXEL_DATA, explicit_element(PIXEL_DATA, b"OB", item(b"") + struct.pack("<HHL", 0xFFFE, 0xE000, 0x7FFFFFF0) + b"\x00" * 16, length=UNDEFINED)),
            CORRUPT,
            transfer_syntax=RLELossless,
        ),
    ]
    return cases


# --- undefined lengths never closed ----------------------------------------------------------
def undefined_length_cases() -> list[HostileCase]:
    element = text_element(0x00080100, b"SH", "CODE")
    nested = element.data
    return [
        case(
            "sequence-without-delimiters-swallows-the-rest",
            lambda r: r.inserted(explicit_element(SEQUENCE_TAG, b"SQ", item(nested, defined=False, delimited=False), length=UNDEFINED)),
            CORRUPT,
        ),
        case(
            "sequence-and-item-never-closed-at-the-end",
            lambda r: r.join() + explicit_element(0x7FE00020, b"SQ", item(nested, defined=False, delimited=False), length=UNDEFINED).data,
            CORRUPT,
        ),
        case(
            "sequence-never-closed-at-the-end",
            lambda r: r.join() + sequence(0x7FE00020, item(nested), delimited=False).data,
            CORRUPT,
        ),
        case(
            "item-closed-sequence-not-at-the-end",
            lambda r: r.join() + sequence(0x7FE00020, item(nested, defined=False), delimited=False).data,
            CORRUPT,
        ),
        case("undefined-length-on-a-ut-element", lambda r: r.inserted(explicit_element(0x00204000, b"UT", b"text", length=UNDEFINED)), CORRUPT),
        case(
            "undefined-length-on-an-ob-element",
            lambda r: r.inserted(explicit_element(0x00091010, b"OB", b"\x00" * 8, length=UNDEFINED)),
            CORRUPT,
        ),
        case(
            "encapsulated-pixel-data-never-closed",
            lambda r: r.replaced(PIXEL_DATA, explicit_element(PIXEL_DATA, b"OB", item(b"") + item(b"\x00" * 64), length=UNDEFINED)),
            CORRUPT,
            transfer_syntax=RLELossless,
        ),
        case(
            "encapsulated-pixel-data-without-a-fragment",
            lambda r: r.replaced(PIXEL_DATA, encapsulated_pixel_data([])),
            CORRUPT,
            transfer_syntax=RLELossless,
        ),
        case(
            "encapsulated-fragment-of-undefined-length",
            lambda r: r.replaced(
                PIXEL_DATA,
                explicit_element(PIXEL_DATA, b"OB", item(b"") + item(b"\x00" * 8, defined=False) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0), length=UNDEFINED),
            ),
            CORRUPT,
            transfer_syntax=RLELossless,
        ),
        case(
            "implicit-undefined-length-text-element",
            lambda r: r.inserted(implicit_element(0x00081030, b"CHEST PA", length=UNDEFINED)),
            CORRUPT,
            implicit=True,
        ),
        case("item-delimiter-at-the-top-level", lambda r: r.join() + struct.pack("<HHL", 0xFFFE, 0xE00D, 0), CORRUPT),
        case("sequence-delimiter-at-the-top-level", lambda r: r.join() + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0), CORRUPT),
    ]


# --- transfer syntax that does not match the bytes --------------------------------------------
def transfer_syntax_cases() -> list[HostileCase]:
    def implicit_bytes(r: Radiograph) -> bytes:
        return _reencode(r, implicit=True)

    def deflated(r: Radiograph) -> bytes:
        return deflate(r.join())

    return [
        case("explicit-bytes-on-an-implicit-context", lambda r: r.join(), CORRUPT, transfer_syntax=ImplicitVRLittleEndian),
        case("implicit-bytes-on-an-explicit-context", implicit_bytes, CORRUPT),
        case("explicit-bytes-on-a-deflated-context", lambda r: r.join(), CORRUPT, transfer_syntax=DeflatedExplicitVRLittleEndian),
        case("deflated-bytes-on-an-explicit-context", deflated, CORRUPT),
        case("implicit-bytes-on-a-deflated-context", implicit_bytes, CORRUPT, transfer_syntax=DeflatedExplicitVRLittleEndian),
        case("big-endian-bytes-on-a-little-endian-context", lambda r: _reencode(r, implicit=False, little_endian=False), CORRUPT),
        case("truncated-deflate-stream", lambda r: deflated(r)[: len(deflated(r)) // 2], CORRUPT, transfer_syntax=DeflatedExplicitVRLittleEndian),
        case("deflated-then-garbage-appended", lambda r: deflated(r) + b"\x00garbage", CORRUPT, transfer_syntax=DeflatedExplicitVRLittleEndian),
        HostileCase(
            "native-pixel-data-on-an-rle-context",
            ENCODING,
            processed_attack(damaged(lambda r: r.join(), transfer_syntax=RLELossless)),
            NOT_DECODED,
        ),
    ]


def _reencode(r: Radiograph, *, implicit: bool, little_endian: bool = True) -> bytes:
    """The radiograph's data set written again in another encoding."""
    ds = read_dataset(BytesIO(r.join()), is_implicit_VR=False, is_little_endian=True)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = little_endian, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


# --- pixel data, file meta ---------------------------------------------------------------------
def _pixels(length: Callable[[int], int]) -> Damage:
    def damage(r: Radiograph) -> list[Encoded]:
        element = r.elements[r.index(PIXEL_DATA)]
        value = element.data[element.header_length :]
        return r.replaced(PIXEL_DATA, explicit_element(PIXEL_DATA, b"OW", value[: length(len(value))]))

    return damage


def pixel_cases() -> list[HostileCase]:
    def processed(name: str, damage: Damage, expected: object, **options: object) -> HostileCase:
        return HostileCase(name, ENCODING, processed_attack(damaged(damage, **options)), expected)  # type: ignore[arg-type]

    return [
        case("no-pixel-data", lambda r: r.replaced(PIXEL_DATA, None), NO_PIXELS),
        case("zero-length-pixel-data", _pixels(lambda n: 0), NO_PIXELS),
        processed("pixel-data-half-as-long-as-rows-x-columns", _pixels(lambda n: n // 2), NOT_DECODED),
        processed("pixel-data-one-row-short", _pixels(lambda n: n - 32), NOT_DECODED),
        processed("pixel-data-two-bytes-short", _pixels(lambda n: n - 2), NOT_DECODED),
    ]


def _part10(r: Radiograph) -> bytes:
    meta = Dataset()
    meta.MediaStorageSOPClassUID = r.sop_class_uid
    meta.MediaStorageSOPInstanceUID = r.sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.7433.1"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)  # type: ignore[arg-type]
    return buffer.getvalue()


def file_meta_cases() -> list[HostileCase]:
    return [
        case("part-10-file-with-preamble-as-the-data-set", lambda r: b"\x00" * 128 + b"DICM" + _part10(r) + r.join(), CORRUPT),
        case("dicm-prefix-and-meta-as-the-data-set", lambda r: b"DICM" + _part10(r) + r.join(), CORRUPT),
        case("file-meta-information-only", lambda r: _part10(r), NO_PIXELS),
        case("file-meta-group-after-the-data-set", lambda r: r.join() + _part10(r), CORRUPT),
    ]


# --- order, VRs ----------------------------------------------------------------------------------
def order_cases() -> list[HostileCase]:
    cases = []
    for target in ("sop-instance-uid", "modality", "study-uid", "rows", "pixel-data"):
        tag = TARGETS[target]

        def duplicate(r: Radiograph, tag: int = tag) -> list[Encoded]:
            index = r.index(tag)
            return [*r.elements[: index + 1], r.elements[index], *r.elements[index + 1 :]]

        def swap(r: Radiograph, tag: int = tag) -> list[Encoded]:
            elements = list(r.elements)
            index = r.index(tag)
            other = index - 1
            elements[index], elements[other] = elements[other], elements[index]
            return elements

        cases.append(case(f"duplicate-{target}", duplicate, CORRUPT))
        cases.append(case(f"{target}-before-its-predecessor", swap, CORRUPT))
    cases += [
        case("elements-in-reverse-order", lambda r: list(reversed(r.elements)), CORRUPT),
        case("pixel-data-first", lambda r: [r.elements[-1], *r.elements[:-1]], CORRUPT),
        case(
            "duplicate-tag-inside-a-sequence-item",
            lambda r: r.inserted(sequence(SEQUENCE_TAG, item(text_element(0x00081150, b"UI", "1.2.3").data * 2, defined=False))),
            CORRUPT,
        ),
    ]
    return cases


def _vr(tag: int, vr: bytes) -> Damage:
    def damage(r: Radiograph) -> list[Encoded]:
        element = r.elements[r.index(tag)]
        return r.replaced(tag, Encoded(tag, element.data[:4] + vr + element.data[6:], vr))

    return damage


def vr_cases() -> list[HostileCase]:
    cases = []
    for target, vr in (
        ("sop-instance-uid", b"\x00\x00"),
        ("modality", b"cs"),
        ("patient-name", b"P\x00"),
        ("study-uid", b"1I"),
        ("rows", b"??"),
        ("pixel-data", b"\xff\xff"),
        ("series-uid", b"U "),
        ("sop-class-uid", b"\x7f\x7f"),
    ):
        cases.append(case(f"vr-{vr.hex()}-on-{target}", _vr(TARGETS[target], vr), CORRUPT))
    return cases


# --- UIDs ------------------------------------------------------------------------------------------
BAD_UIDS = {
    "letters": "1.2.abc.4",
    "empty-component": "1.2..4",
    "trailing-dot": "1.2.3.",
    "leading-dot": ".1.2.3",
    "one-component": "12345",
    "65-characters": "1." + "2" * 63,
    "path-traversal": "../../../../tmp/escape",
    "slash": "1.2/3.4",
    "backslash": "1.2\\3.4",
    "space-inside": "1.2 3.4",
    "control-character": "1.2.\x1b[2J.4",
}


def uid_cases() -> list[HostileCase]:
    cases = []
    for uid_name, tag in (("study-uid", STUDY_INSTANCE_UID), ("series-uid", SERIES_INSTANCE_UID), ("sop-instance-uid", SOP_INSTANCE_UID)):
        for bad_name, bad in BAD_UIDS.items():
            if uid_name != "study-uid" and bad_name not in ("letters", "path-traversal", "65-characters", "empty-component"):
                continue

            def rewrite(r: Radiograph, tag: int = tag, bad: str = bad) -> list[Encoded]:
                return r.replaced(tag, text_element(tag, b"UI", bad))

            cases.append(case(f"{uid_name}-{bad_name}", rewrite, INVALID_UID))
    for uid_name, tag in (
        ("study-uid", STUDY_INSTANCE_UID),
        ("series-uid", SERIES_INSTANCE_UID),
        ("sop-instance-uid", SOP_INSTANCE_UID),
        ("sop-class-uid", SOP_CLASS_UID),
    ):
        cases.append(case(f"missing-{uid_name}", lambda r, tag=tag: r.replaced(tag, None), INVALID_UID))
    cases += [
        case("no-uids-at-all", lambda r: [e for e in r.elements if e.tag not in (STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, SOP_INSTANCE_UID, SOP_CLASS_UID)], INVALID_UID),
        case(
            "sop-instance-uid-differs-from-the-request",
            lambda r: r.replaced(SOP_INSTANCE_UID, text_element(SOP_INSTANCE_UID, b"UI", "1.2.826.0.1.3680043.9.7433.99.1")),
            Status(statuses.CANNOT_UNDERSTAND_INSTANCE_MISMATCH),
        ),
        case(
            "sop-class-uid-differs-from-the-request",
            lambda r: r.replaced(SOP_CLASS_UID, text_element(SOP_CLASS_UID, b"UI", CR_IMAGE)),
            Status(statuses.DATASET_SOP_CLASS_MISMATCH),
        ),
    ]
    return cases


# --- nesting, deflate bombs ---------------------------------------------------------------------
def _nested(depth: int, *, defined: bool) -> Damage:
    def damage(r: Radiograph) -> list[Encoded]:
        inner = text_element(0x00080100, b"SH", "LEAF").data
        for _ in range(depth - 1):
            inner = sequence(SEQUENCE_TAG, item(inner, defined=defined), defined=defined).data
        return r.inserted(sequence(SEQUENCE_TAG, item(inner, defined=defined), defined=defined))

    return damage


def nesting_cases() -> list[HostileCase]:
    return [
        case("nested-sequences-32-deep-undefined-lengths", _nested(32, defined=False), STORED),
        case("nested-sequences-32-deep-defined-lengths", _nested(32, defined=True), STORED),
        case("nested-sequences-33-deep-undefined-lengths", _nested(33, defined=False), CORRUPT),
        case("nested-sequences-33-deep-defined-lengths", _nested(33, defined=True), CORRUPT),
        case("nested-sequences-1000-deep", _nested(1000, defined=False), CORRUPT),
        case("nested-sequences-20000-deep", _nested(20000, defined=False), CORRUPT),
        case("nested-sequences-5000-deep-defined-lengths", _nested(5000, defined=True), CORRUPT),
    ]


def _bomb(zeros: int, where: str) -> Damage:
    def damage(r: Radiograph) -> bytes:
        head = r.join(r.elements[:-1])
        if where == "pixel-data":
            return deflate_bomb(head + explicit_element(PIXEL_DATA, b"OW", b"", length=zeros).data, zeros)
        # in a UT element before Pixel Data (Text Value, 0040,A160 would sort after; use 0020,4000)
        before = [e for e in r.elements if e.tag < 0x00204000]
        after = r.join([e for e in r.elements if e.tag > 0x00204000])
        return deflate_bomb(r.join(before) + explicit_element(0x00204000, b"UT", b"", length=zeros).data, zeros, after)

    return damage


def deflate_cases() -> list[HostileCase]:
    def deflated(r: Radiograph) -> bytes:
        return deflate(r.join())

    return [
        case("deflate-bomb-16-mib", _bomb(16 * MIB, "pixel-data"), BOMB, transfer_syntax=DeflatedExplicitVRLittleEndian),
        case("deflate-bomb-256-mib", _bomb(256 * MIB, "pixel-data"), BOMB, transfer_syntax=DeflatedExplicitVRLittleEndian),
        case("deflate-bomb-1-gib", _bomb(1024 * MIB, "pixel-data"), BOMB, transfer_syntax=DeflatedExplicitVRLittleEndian),
        case("deflate-bomb-64-mib-in-a-text-element", _bomb(64 * MIB, "text"), BOMB, transfer_syntax=DeflatedExplicitVRLittleEndian),
        case("deflated-radiograph-is-stored", deflated, STORED, transfer_syntax=DeflatedExplicitVRLittleEndian),
        case("deflate-garbage", lambda r: random.Random(7).randbytes(4096), CORRUPT, transfer_syntax=DeflatedExplicitVRLittleEndian),
    ]


def oversized_cases(max_instance_bytes: int, network_timeout: float) -> list[HostileCase]:
    """A data set larger than the size limit is cut off while it arrives (A-ABORT, not an answer)."""

    def big(r: Radiograph) -> bytes:
        return r.join(r.elements[:-1]) + explicit_element(PIXEL_DATA, b"OW", bytes(max_instance_bytes + MIB)).data

    return [case("instance-over-the-size-limit", big, Aborted(0x02, 0x00, within=network_timeout + 10))]


# --- compressed-frame bombs, colour nonsense ----------------------------------------------------
def _header(**values: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)

    return change


def _processed(name: str, change: Callable[[Dataset], None], expected: object, *, pixel: Callable[[Radiograph], Encoded] | None = None, transfer_syntax: str = ExplicitVRLittleEndian) -> HostileCase:
    def build() -> Store:
        r = radiograph(change=change)
        elements = r.elements if pixel is None else r.replaced(PIXEL_DATA, pixel(r))
        return _store(r, r.join(elements), transfer_syntax=transfer_syntax)

    return HostileCase(name, ENCODING, processed_attack(build), expected)


def _tiny_rle(r: Radiograph) -> Encoded:
    # One segment per byte of a 16-bit sample: each says "repeat 0 for 128 bytes" once.
    segment = b"\x81\x00"
    return encapsulated_pixel_data([rle_frame([segment, segment])])


def bomb_cases() -> list[HostileCase]:
    huge = {"Rows": 65535, "Columns": 65535}
    return [
        _processed("rle-frame-claiming-65535x65535", _header(**huge), NOT_DECODED, pixel=_tiny_rle, transfer_syntax=RLELossless),
        _processed(
            "rle-frame-claiming-65535x65535-8-bit",
            _header(**huge, BitsAllocated=8, BitsStored=8, HighBit=7),
            NOT_DECODED,
            pixel=lambda r: encapsulated_pixel_data([rle_frame([b"\x81\x00"])]),
            transfer_syntax=RLELossless,
        ),
        _processed(
            "rle-claiming-65535-frames",
            _header(NumberOfFrames=65535),
            Recorded("skipped", "65535 frames: the models read single-frame radiographs"),
            pixel=_tiny_rle,
            transfer_syntax=RLELossless,
        ),
        _processed("native-claiming-65535x65535", _header(**huge), NOT_DECODED),
    ]


def colour_cases() -> list[HostileCase]:
    return [
        _processed(
            "photometric-monochrome3",
            _header(PhotometricInterpretation="MONOCHROME3"),
            NOT_DECODED,
        ),
        _processed("three-samples-per-pixel-monochrome", _header(SamplesPerPixel=3, PlanarConfiguration=0), NOT_DECODED),
        _processed(
            "palette-colour-without-a-palette",
            _header(PhotometricInterpretation="PALETTE COLOR"),
            Recorded("failed", "pixel data not usable: photometric interpretation PALETTE COLOR is not supported"),
        ),
        _processed("bits-stored-over-bits-allocated", _header(BitsStored=20, HighBit=19), NOT_DECODED),
        _processed("bits-allocated-7", _header(BitsAllocated=7), NOT_DECODED),
        _processed("pixel-representation-2", _header(PixelRepresentation=2), NOT_DECODED),
    ]


def encoding_cases(*, max_instance_bytes: int, network_timeout: float) -> list[HostileCase]:
    """Every encoding-fault case (see the module docstring)."""
    return [
        *truncated_cases(),
        *garbage_cases(),
        *length_cases(),
        *undefined_length_cases(),
        *transfer_syntax_cases(),
        *pixel_cases(),
        *file_meta_cases(),
        *order_cases(),
        *vr_cases(),
        *uid_cases(),
        *nesting_cases(),
        *deflate_cases(),
        *oversized_cases(max_instance_bytes, network_timeout),
        *bomb_cases(),
        *colour_cases(),
    ]

