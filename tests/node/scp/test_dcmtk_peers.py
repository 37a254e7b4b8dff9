"""DCMTK's storescu and echoscu against the listener: what a real modality or PACS sees."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from node.scp import statuses
from tests.support.listener import Node
from tests.support.dcmtk import echoscu, storescu
from tests.support.dicom_files import make_instance, make_study
from training.dicom_export import RadiographIdentity, radiograph_dataset

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def test_storescu_study_is_stored_and_echoscu_answered(start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node(allowed_calling_aets=["MODALITY", "ECHOSCU"])
    study = make_study(tmp_path / "study", 3, size=32)
    study_uid = study[0].identity.study_instance_uid
    run = storescu(node.port, [m.path for m in study], calling_aet="MODALITY")
    assert run.returncode == 0, run.output[-2000:]
    assert run.statuses == [statuses.SUCCESS] * len(study)

    # storescu proposes one compressed transfer syntax per run, named by its option.
    compressed = {JPEGLSLossless: "-xt", JPEG2000Lossless: "-xv", RLELossless: "-xr"}
    extra = []
    for i, (ts, option) in enumerate(compressed.items()):
        made = make_instance(tmp_path / f"{i}.dcm", ts, identity=RadiographIdentity.new(study_uid), size=32, seed=10 + i)
        run = storescu(node.port, [made.path], calling_aet="MODALITY", extra=[option])
        assert run.returncode == 0, run.output[-2000:]
        assert run.statuses == [statuses.SUCCESS]
        extra.append(made)
    everything = study + extra

    rows = {row.sop_instance_uid: row for row in node.instances()}
    assert set(rows) == {m.identity.sop_instance_uid for m in everything}
    for made in everything:
        row = rows[made.identity.sop_instance_uid]
        assert row.transfer_syntax_uid == made.transfer_syntax_uid
        assert np.array_equal(dcmread(node.spool / row.path).pixel_array, made.pixels)
    stored_study = node.study(study_uid)
    assert stored_study is not None and stored_study.calling_aet == "MODALITY"

    echo = echoscu(node.port, calling_aet="ECHOSCU")
    assert echo.returncode == 0, echo.output[-2000:]
    assert echo.association_accepted


def test_storescu_sees_the_rejections(start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node(allowed_calling_aets=["MODALITY"])
    made = make_instance(tmp_path / "in.dcm", size=16)

    stranger = storescu(node.port, [made.path], calling_aet="STRANGER")
    assert stranger.returncode != 0
    assert stranger.rejection == ("Rejected Permanent", "Service User", "Calling AE Title Not Recognized")

    misdirected = storescu(node.port, [made.path], calling_aet="MODALITY", called_aet="OTHERNODE")
    assert misdirected.returncode != 0
    assert misdirected.rejection == ("Rejected Permanent", "Service User", "Called AE Title Not Recognized")

    full = start_node(min_free_disk_bytes=10**18)
    refused = storescu(full.port, [made.path])
    assert refused.returncode != 0
    assert refused.rejection == (
        "Rejected Transient",
        "Service Provider (Presentation Related)",
        "Local Limit Exceeded",
    )
    assert node.instances() == [] and full.instances() == []


def test_storescu_sending_an_unsupported_sop_class_gets_no_presentation_context(
    node: Node, tmp_path: Path
) -> None:
    """What storescu sees: the association is accepted with every context refused
    ("Abstract Syntax Not Supported") and it stops with "No Acceptable Presentation Contexts"."""
    ds = radiograph_dataset(np.zeros((8, 8), np.uint16), RadiographIdentity.new(), sop_class_uid=CT_IMAGE_STORAGE)
    ct = tmp_path / "ct.dcm"
    ds.save_as(ct, enforce_file_format=True)
    run = storescu(node.port, [ct])
    assert run.returncode != 0
    assert "Abstract Syntax Not Supported" in run.output
    assert "No Acceptable Presentation Contexts" in run.output
    assert run.statuses == []
    assert node.instances() == []
