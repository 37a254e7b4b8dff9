"""The source image's header as the output builders hand it to highdicom: checked, without pixels.

highdicom copies the patient and study attributes of the source into every SEG and SR, and
refuses (or writes an invalid object) when one of them is invalid: a birth date that is not a
date, an unknown Specific Character Set, a name that does not decode. Such attributes describe
the patient or the study; the analysis does not need them, so :func:`output_header` leaves them
out of the copy it gives the builders (a Type 2 attribute highdicom reads stays, empty) and
says which ones it left out. The attributes the outputs are built on (:data:`ESSENTIAL`: the
UIDs, the SOP Class, the image pixel module) are checked too; an invalid one is an
:class:`~node.faults.ImageFault` for that image.

Nothing is converted by pydicom before it has been checked here, so pydicom's own warnings,
which quote the value, are never raised for what is left out; the explanations name the
attribute and the problem, never the value (:mod:`node.faults`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom import config
from pydicom.charset import decode_bytes, python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import (
    ALLOW_BACKSLASH,
    CUSTOMIZABLE_CHARSET_VR,
    DEFAULT_CHARSET_VR,
    TEXT_VR_DELIMS,
    VR,
    PersonName,
    validate_value,
)

from node.faults import ImageFault, attribute_name

_PIXEL_KEYWORDS = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData"})
#: Attributes every output is built on: invalid or missing ones fail the image.
ESSENTIAL = frozenset(
    {
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
    }
)
#: Type 2 attributes highdicom reads from the source by name: kept present (empty when left out).
TYPE_2_READ_BY_HIGHDICOM = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)
#: Character sets both pydicom and highdicom write (the default repertoire is written as none).
_DEFAULT_REPERTOIRE = frozenset({"", "ISO_IR 6"})
_SUPPORTED_CHARSETS = frozenset(python_encoding) - {"ISO 2022 GBK", "ISO 2022 58", "ISO_IR 6"}
_UTF8 = "ISO_IR 192"
#: The default repertoire is ASCII; pydicom reads it as Latin-1, which would copy undeclared bytes.
_ASCII = "ascii"
_SPECIFIC_CHARACTER_SET = Tag("SpecificCharacterSet")
_KNOWN_VRS = frozenset(vr.value for vr in VR)
_STRING_VRS = frozenset(DEFAULT_CHARSET_VR | CUSTOMIZABLE_CHARSET_VR)
_PATIENT_SEX = frozenset({"", "M", "F", "O"})


def instance_number(header: Dataset) -> int:
    """The source's Instance Number for an output, or 1 when it is absent or not positive."""
    value = header.get("InstanceNumber")
    try:
        number = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        return 1
    return number if number >= 1 else 1


@dataclass(frozen=True)
class OutputHeader:
    """The checked copy of a source header and what was left out of it.

    ``left_out`` holds one text per attribute left out (or replaced), e.g.
    ``"Patient's Birth Date (0010,0030): not a valid DA"``; ``left_out_keywords`` the keywords
    (or tags) alone, for logs.
    """

    dataset: Dataset
    left_out: tuple[str, ...] = ()
    left_out_keywords: tuple[str, ...] = ()


class _Notes:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.keywords: list[str] = []

    def add(self, tag: BaseTag, problem: str, path: str = "") -> None:
        self.texts.append(f"{path}{attribute_name(tag)}: {problem}")
        self.keywords.append(f"{path}{keyword_for_tag(tag) or attribute_name(tag)}")


def header_without_pixels(source: Dataset) -> Dataset:
    """The checked header of ``source`` without Pixel Data (:func:`output_header`'s dataset).

    highdicom reads only the source's metadata; building from this copy keeps it from
    touching (or decoding) the caller's dataset and keeps a large frame out of the output.
    """
    return output_header(source).dataset


def output_header(source: Dataset) -> OutputHeader:
    """Check ``source``'s header and copy what the builders may use (see the module docstring).

    The copy has the same File Meta Information, no pixel data, no private attributes, and a
    Specific Character Set highdicom accepts: an unsupported one is replaced by the default
    repertoire or ISO_IR 192 when every text of the header decodes in it, otherwise the texts
    that do not decode are left out too.

    Raises
    ------
    node.faults.ImageFault
        An attribute of :data:`ESSENTIAL` is missing or invalid (the message names it).
    """
    notes = _Notes()
    encodings, charset = _character_set(source, notes)
    header = _checked_copy(source, encodings, notes, path="", top_level=True)
    if charset:
        header.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
    for keyword in ESSENTIAL:
        if keyword not in header:
            raise ImageFault(f"{attribute_name(Tag(keyword))} is missing; the outputs cannot be built without it")
    for keyword in TYPE_2_READ_BY_HIGHDICOM:
        if keyword not in header:
            vr = dictionary_VR(keyword)
            header[keyword] = DataElement(Tag(keyword), vr, empty_value_for_VR(vr))
    _normalise_patient_name(header)
    header.file_meta = getattr(source, "file_meta", Dataset())
    return OutputHeader(header, tuple(notes.texts), tuple(notes.keywords))


def _character_set(source: Dataset, notes: _Notes) -> tuple[list[str], list[str]]:
    """(Python encodings to decode the texts with, the terms to write as Specific Character Set)."""
    terms = _charset_terms(source)
    if terms is not None and all(t in _DEFAULT_REPERTOIRE or t in _SUPPORTED_CHARSETS for t in terms):
        if all(t in _DEFAULT_REPERTOIRE for t in terms):
            return [_ASCII], []
        return [python_encoding[t] for t in terms], terms
    raw_texts = list(_raw_texts(source))
    if all(text.isascii() for text in raw_texts):
        notes.add(_SPECIFIC_CHARACTER_SET, "not a supported character set (its texts are ASCII: written in the default repertoire)")
        return [_ASCII], []
    if _decodes(raw_texts, "utf_8"):
        notes.add(_SPECIFIC_CHARACTER_SET, f"not a supported character set (its texts decode as UTF-8: written as {_UTF8})")
        return [python_encoding[_UTF8]], [_UTF8]
    notes.add(_SPECIFIC_CHARACTER_SET, "not a supported character set (texts that are not ASCII are left out)")
    return [_ASCII], []


def _charset_terms(source: Dataset) -> list[str] | None:
    """The Specific Character Set terms, [] when absent, None when they cannot even be read."""
    element = source.get_item(_SPECIFIC_CHARACTER_SET)
    if element is None:
        return []
    value = element.value
    if isinstance(element, RawDataElement) or isinstance(value, bytes):
        if value is None:
            return []
        try:
            text = bytes(value).decode("ascii")
        except UnicodeError:
            return None
        return [term.strip() for term in text.rstrip("\x00 ").split("\\")] if text.strip() else []
    values = value if isinstance(value, (list, MultiValue)) else [value]
    return [str(v).strip() for v in values if v is not None]


def _raw_texts(dataset: Dataset) -> Iterable[bytes]:
    """The encoded values of the charset-dependent texts at the top level of ``dataset``."""
    for tag in dataset.keys():
        element = dataset.get_item(tag)
        if isinstance(element, RawDataElement) and element.value and _vr_of(element) in CUSTOMIZABLE_CHARSET_VR:
            yield bytes(element.value)


def _decodes(values: Iterable[bytes], encoding: str) -> bool:
    try:
        for value in values:
            value.decode(encoding)
    except UnicodeError:
        return False
    return True


def _vr_of(element: RawDataElement | DataElement) -> str | None:
    if element.VR:
        return str(element.VR)
    try:
        return dictionary_VR(element.tag)
    except KeyError:
        return None


def _checked_copy(source: Dataset, encodings: list[str], notes: _Notes, *, path: str, top_level: bool) -> Dataset:
    copy = Dataset()
    for tag in source.keys():
        tag = Tag(tag)
        if tag == _SPECIFIC_CHARACTER_SET or tag.is_private or tag.group == 0x0002:
            continue
        keyword = keyword_for_tag(tag)
        if keyword in _PIXEL_KEYWORDS or not keyword:
            continue  # pixels stay behind; unknown attributes are not copied into outputs
        element = source.get_item(tag)
        try:
            checked = _checked_element(source, element, encodings, notes, path)
        except _Invalid as invalid:
            if top_level and keyword in ESSENTIAL:
                raise ImageFault(
                    f"{attribute_name(tag)} {invalid.problem}; the outputs cannot be built from this image"
                ) from None
            notes.add(tag, invalid.problem, path)
            continue
        if checked is not None:
            copy[tag] = checked
    return copy


class _Invalid(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _checked_element(
    source: Dataset, element: RawDataElement | DataElement, encodings: list[str], notes: _Notes, path: str
) -> DataElement | None:
    vr = _vr_of(element)
    if vr is None or vr not in _KNOWN_VRS:
        raise _Invalid("has an unknown value representation")
    if vr == VR.SQ:
        return _checked_sequence(source, element, encodings, notes, path)
    if vr not in _STRING_VRS:
        return _converted(source, element, encodings)
    texts = _texts(element, vr, encodings)
    for text in texts:
        if text:
            _validate(vr, text)
    if element.tag == Tag("PatientSex") and any(t.upper() not in _PATIENT_SEX for t in texts):
        raise _Invalid("not M, F or O")
    value: object = empty_value_for_VR(vr)
    if texts and any(texts):
        values = [PersonName(t) for t in texts] if vr == VR.PN else texts
        value = values[0] if len(values) == 1 else values
    return DataElement(element.tag, vr, value, validation_mode=config.IGNORE)


def _texts(element: RawDataElement | DataElement, vr: str, encodings: list[str]) -> list[str]:
    """The element's values as text, decoded strictly; ``_Invalid`` when they do not decode."""
    value = element.value
    if isinstance(element, RawDataElement) or isinstance(value, bytes):
        if not value:
            return []
        data = bytes(value)
        try:
            if vr not in CUSTOMIZABLE_CHARSET_VR:
                text = data.decode("ascii")
            elif b"\x1b" not in data:
                text = data.decode(encodings[0])
            else:  # ISO 2022 code extensions: pydicom switches encodings at each escape
                text = decode_bytes(data, encodings, TEXT_VR_DELIMS if vr != VR.PN else {0x5E, 0x3D})
                if "\ufffd" in text:
                    raise UnicodeError("replacement character")
        except (UnicodeError, LookupError):
            raise _Invalid("text that does not decode in the Specific Character Set") from None
        parts = [text] if vr in ALLOW_BACKSLASH else text.split("\\")
    else:
        values = value if isinstance(value, (list, MultiValue)) else [value]
        parts = [_as_text(v) for v in values if v is not None]
        if any("\ufffd" in part for part in parts):
            raise _Invalid("text that does not decode in the Specific Character Set")
    if vr in (VR.UT, VR.ST, VR.LT):
        return [p.rstrip("\x00 ") for p in parts]
    return [p.strip("\x00 ") for p in parts]


def _as_text(value: object) -> str:
    return str(value)


def _validate(vr: str, text: str) -> None:
    try:
        validate_value(vr, text, config.RAISE)  # RAISE: no warning is logged (the message quotes the value)
    except ValueError:
        raise _Invalid(f"not a valid {vr}") from None


def _converted(source: Dataset, element: RawDataElement | DataElement, encodings: list[str]) -> DataElement:
    """A binary (numeric, bytes, tag) element as pydicom converts it; ``_Invalid`` when it cannot."""
    if isinstance(element, DataElement):
        return element
    try:
        return convert_raw_data_element(element, encoding=encodings, ds=source)
    except Exception:  # any conversion failure is this value's fault
        raise _Invalid(f"a value that cannot be read as {element.VR or 'its VR'}") from None


def _checked_sequence(
    source: Dataset, element: RawDataElement | DataElement, encodings: list[str], notes: _Notes, path: str
) -> DataElement:
    try:
        converted = _converted(source, element, encodings)
        items = list(converted.value or [])
    except _Invalid:
        raise _Invalid("a sequence that cannot be read") from None
    name = f"{path}{keyword_for_tag(element.tag) or attribute_name(element.tag)} > "
    checked = Sequence([_checked_copy(item, encodings, notes, path=name, top_level=False) for item in items])
    return DataElement(element.tag, VR.SQ, checked)


def _normalise_patient_name(header: Dataset) -> None:
    """Add the family-name caret to a one-component Patient's Name (``Smith`` -> ``Smith^``).

    The same name in PS3.5 6.2 terms; highdicom logs a name without any caret as suspicious,
    quoting it, which would put the name in the node's log.
    """
    name = header.get("PatientName")
    if name is None or not str(name) or "^" in str(name):
        return
    groups = str(name).split("=")
    groups[0] = groups[0] + "^"
    header.PatientName = PersonName("=".join(groups))
