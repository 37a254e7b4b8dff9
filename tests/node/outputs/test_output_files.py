"""Outputs are kept under the data directory, atomically, at paths made of validated UIDs."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from node.outputs.files import output_path, write_output
from node.outputs.seg import build_lung_segmentation
from tests.support.analysis_factory import make_analysis, phantom_radiograph
from training.dicom_export import RadiographIdentity, radiograph_dataset


@pytest.fixture(scope="module")
def seg():
    phantom = phantom_radiograph(64, seed=2)
    source = radiograph_dataset(phantom.image, RadiographIdentity.new())
    return build_lung_segmentation(source, make_analysis(phantom))


def test_output_lands_under_study_series_instance(seg, tmp_path: Path) -> None:
    path = write_output(tmp_path / "outputs", seg)
    assert path == tmp_path / "outputs" / seg.StudyInstanceUID / seg.SeriesInstanceUID / f"{seg.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(path).SOPInstanceUID == seg.SOPInstanceUID
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left behind


def test_writing_the_same_object_again_replaces_it_in_place(seg, tmp_path: Path) -> None:
    first = write_output(tmp_path, seg)
    second = write_output(tmp_path, seg)
    assert first == second
    assert len(list(tmp_path.rglob("*.dcm"))) == 1


def test_a_uid_that_is_not_a_uid_never_becomes_a_path(seg, tmp_path: Path) -> None:
    bad = pydicom.Dataset()
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):  # pydicom notices too
        bad.StudyInstanceUID = "../../etc"
    bad.SeriesInstanceUID, bad.SOPInstanceUID = "1.2.3", "1.2.3.4"
    with pytest.raises(ValueError, match="Study Instance UID '../../etc' is not a DICOM UID"):
        output_path(tmp_path, bad)
