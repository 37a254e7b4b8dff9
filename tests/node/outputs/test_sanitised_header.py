"""Outputs from sources whose patient or study attributes are invalid: built, valid, without the bad values.

Each source is a real Part 10 file whose bytes were edited the way a broken modality writes them
(an impossible birth date, an unknown character set, a name that does not decode, an unknown VR),
read back with pydicom as the worker reads it from the spool. The SEG and SR built from it must
pass ``dciodvfy`` and carry none of the invalid values; essential attributes still fail the image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from pydicom import config

from node.faults import ImageFault, explain
from node.outputs.files import write_output
from node.outputs.header import output_header
from node.outputs.seg import build_lung_segmentation
from node.outputs.sr import build_measurement_report
from tests.support.analysis_factory import make_analysis, phantom_radiograph
from tests.support.broken_headers import BAD_BIRTH_DATE, UNKNOWN_VR_BODY_PART, break_header, leaked
from tests.support.dicom_tools import dciodvfy_errors
from training.dicom_export import RadiographIdentity, radiograph_dataset

@pytest.fixture(scope="module")
def phantom():
    return phantom_radiograph(128, seed=21, findings=["Mass"])


def source_file(directory: Path, phantom, edits: dict[bytes, bytes] | None = None, **attributes: str) -> Path:  # type: ignore[no-untyped-def]
    """A DX file of ``phantom`` broken by :func:`~tests.support.broken_headers.break_header`."""
    ds = radiograph_dataset(phantom.image, RadiographIdentity.new(), pixel_spacing_mm=phantom.pixel_spacing_mm)
    path = directory / f"src-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return break_header(path, edits, **attributes)


def build_both(source: pydicom.Dataset, phantom, out: Path) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    analysis = make_analysis(phantom, clinical_use=False)
    seg = build_lung_segmentation(source, analysis)
    seg_path = write_output(out, seg)
    sr_path = write_output(out, build_measurement_report(source, seg, analysis))
    return seg_path, sr_path


def test_invalid_birth_date_and_unknown_charset_still_give_a_valid_seg_and_sr(
    phantom, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = source_file(
        tmp_path, phantom, {b"ISO_IR 100": b"ISO_IR 999"}, PatientBirthDate=BAD_BIRTH_DATE, SpecificCharacterSet="ISO_IR 100"
    )
    source = pydicom.dcmread(path)
    caplog.clear()  # what the broken writer logged is not the node's

    header = output_header(source)
    seg_path, sr_path = build_both(source, phantom, tmp_path / "out")

    assert header.left_out == (
        "Specific Character Set (0008,0005): not a supported character set (its texts are ASCII: written in the default repertoire)",
        "Patient's Birth Date (0010,0030): not a valid DA",
    )
    assert header.left_out_keywords == ("SpecificCharacterSet", "PatientBirthDate")
    for output in (seg_path, sr_path):
        assert dciodvfy_errors(output) == [], output
        written = pydicom.dcmread(output)
        assert written.PatientBirthDate == "" and "SpecificCharacterSet" not in written
        identity = RadiographIdentity.new()
        assert (written.PatientID, str(written.PatientName)) == (identity.patient_id, identity.patient_name)
        assert leaked(output.read_bytes()) == []
    assert leaked(caplog.text) == [], caplog.text


def test_a_name_that_does_not_decode_is_left_out_and_the_rest_kept(phantom, tmp_path: Path) -> None:
    # UTF-8 declared, but the name's bytes are Latin-1 (0xE9 alone is not UTF-8).
    path = source_file(
        tmp_path, phantom, {b"Zqwv\xc3\xa9^Anna": b"Zqwv\xe9x^Anna"}, SpecificCharacterSet="ISO_IR 192", PatientName="Zqwv\u00e9^Anna"
    )
    source = pydicom.dcmread(path)

    header = output_header(source)
    seg_path, sr_path = build_both(source, phantom, tmp_path / "out")

    assert header.left_out == ("Patient's Name (0010,0010): text that does not decode in the Specific Character Set",)
    for output in (seg_path, sr_path):
        assert dciodvfy_errors(output) == [], output
        written = pydicom.dcmread(output)
        assert str(written.PatientName) == "" and written.SpecificCharacterSet == "ISO_IR 192"
        assert b"Zqwv" not in output.read_bytes()


def test_an_unknown_charset_over_utf8_texts_becomes_iso_ir_192(phantom, tmp_path: Path) -> None:
    path = source_file(
        tmp_path, phantom, {b"ISO_IR 192": b"ISO_IR 999"}, SpecificCharacterSet="ISO_IR 192", PatientName="M\u00fcller^J\u00fcrgen"
    )
    source = pydicom.dcmread(path)

    header = output_header(source)
    seg_path, _ = build_both(source, phantom, tmp_path / "out")

    assert header.left_out_keywords == ("SpecificCharacterSet",)
    written = pydicom.dcmread(seg_path)
    assert written.SpecificCharacterSet == "ISO_IR 192" and str(written.PatientName) == "M\u00fcller^J\u00fcrgen"
    assert dciodvfy_errors(seg_path) == []


@pytest.mark.parametrize(
    ("attributes", "edits", "keyword", "problem"),
    [
        ({"PatientSex": "Q"}, {}, "PatientSex", "not M, F or O"),
        ({"StudyTime": "256199"}, {}, "StudyTime", "not a valid TM"),
        ({"PatientAge": "4Q5Y"}, {}, "PatientAge", "not a valid AS"),
        ({"StudyDescription": "Q7ZK CHEST"}, {b"\x08\x00\x30\x10LO": b"\x08\x00\x30\x10ZZ"}, "StudyDescription", "has an unknown value representation"),
        ({}, dict([UNKNOWN_VR_BODY_PART]), "BodyPartExamined", "has an unknown value representation"),
    ],
)
def test_other_invalid_descriptive_attributes_are_left_out(phantom, tmp_path: Path, attributes, edits, keyword, problem) -> None:  # type: ignore[no-untyped-def]
    source = pydicom.dcmread(source_file(tmp_path, phantom, edits, **attributes))

    header = output_header(source)
    seg_path, sr_path = build_both(source, phantom, tmp_path / "out")

    assert header.left_out_keywords == (keyword,)
    assert header.left_out[0].endswith(f": {problem}")
    for output in (seg_path, sr_path):
        assert dciodvfy_errors(output) == [], output
        written = pydicom.dcmread(output)
        assert keyword not in written or written[keyword].value in ("", None)
        for value in attributes.values():  # digits alone turn up in UIDs by chance: looked for whole
            assert (value.encode() not in output.read_bytes()) if value.isdigit() else (leaked(output.read_bytes(), value) == [])


def test_an_invalid_essential_attribute_fails_the_image_naming_it(phantom, tmp_path: Path) -> None:
    source = pydicom.dcmread(source_file(tmp_path, phantom, SeriesInstanceUID="1.2.Q7Z3K1.4"))

    with pytest.raises(ImageFault) as raised:
        output_header(source)

    assert str(raised.value) == (
        "Series Instance UID (0020,000E) not a valid UI; the outputs cannot be built from this image"
    )
    with pytest.raises(ImageFault):  # the builders check the same way
        build_lung_segmentation(source, make_analysis(phantom))


def test_a_valid_header_is_copied_whole_without_pixels(phantom, tmp_path: Path) -> None:
    source = pydicom.dcmread(source_file(tmp_path, phantom))

    header = output_header(source)

    assert header.left_out == ()
    expected = {e.keyword for e in source if e.keyword != "PixelData" and not e.tag.is_private}
    assert {e.keyword for e in header.dataset} == expected
    assert all(header.dataset[k].value == source[k].value for k in expected)


def test_explanations_of_library_errors_never_quote_the_value() -> None:
    with pytest.raises(ValueError) as invalid:
        pydicom.valuerep.validate_value("DA", BAD_BIRTH_DATE, config.RAISE)
    unknown_vr = NotImplementedError("Unknown Value Representation 'ZZ' in tag (0018,0015)")

    assert explain(invalid.value) == "a value is not a valid DA"
    assert explain(unknown_vr) == "Body Part Examined (0018,0015) has an unknown value representation"
    assert explain(KeyError(BAD_BIRTH_DATE)) == "KeyError (its message is not kept: it may quote header values)"
    assert explain(ImageFault("Rows (0028,0010) is missing")) == "Rows (0028,0010) is missing"
    truncated = ValueError("The number of bytes of pixel data is less than expected (5192 vs 8192 bytes) - ...")
    assert explain(truncated) == "Pixel Data (7FE0,0010) does not have the length Rows x Columns x frames x Bits Allocated declare"
