"""Every accepted transfer syntax and SOP Class is received, spooled unchanged and decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from node.scp import statuses
from node.scp.contexts import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from tests.support.listener import Node
from tests.support.dicom_files import TRANSFER_SYNTAXES as FACTORY_SYNTAXES
from tests.support.dicom_files import make_instance
from training.dicom_export import DX_FOR_PRESENTATION


def _assert_decodes_like_source(path: Path, source: np.ndarray, lossy: bool) -> None:
    decoded = dcmread(path).pixel_array
    assert decoded.shape == source.shape
    if not lossy:
        assert np.array_equal(decoded, source)
        return
    full_range = float(np.iinfo(source.dtype).max if source.dtype == np.uint8 else 4095)
    error = np.abs(decoded.astype(np.int32) - source.astype(np.int32))
    assert error.mean() <= 0.01 * full_range, f"mean error {error.mean():.1f} of {full_range:.0f}"
    assert error.max() <= 0.05 * full_range, f"max error {error.max()} of {full_range:.0f}"


def test_the_factory_covers_every_transfer_syntax_the_listener_accepts() -> None:
    assert set(FACTORY_SYNTAXES) == set(TRANSFER_SYNTAXES)


def test_every_transfer_syntax_is_received_and_decodes(node: Node, tmp_path: Path) -> None:
    made = [make_instance(tmp_path / f"{ts}.dcm", ts, size=48, seed=i) for i, ts in enumerate(TRANSFER_SYNTAXES)]
    # One context per transfer syntax, so the listener must accept each one as proposed.
    assoc = node.associate([(DX_FOR_PRESENTATION, [m.transfer_syntax_uid]) for m in made])
    assert assoc.is_established
    assert len(assoc.accepted_contexts) == len(made)
    answers = {m.transfer_syntax_uid: int(assoc.send_c_store(m.path).Status) for m in made}
    assoc.release()
    assert answers == {m.transfer_syntax_uid: statuses.SUCCESS for m in made}
    # Every data set was written to disk while it arrived, none from memory afterwards.
    assert (node.handle.incoming.taken, node.handle.incoming.missed) == (len(made), 0)

    rows = {row.sop_instance_uid: row for row in node.instances()}
    for m in made:
        row = rows[m.identity.sop_instance_uid]
        assert row.transfer_syntax_uid == m.transfer_syntax_uid
        spooled = node.spool / row.path
        assert dcmread(spooled, stop_before_pixels=True).file_meta.TransferSyntaxUID == m.transfer_syntax_uid
        _assert_decodes_like_source(spooled, m.pixels, m.lossy)


def test_every_storage_sop_class_is_accepted(node: Node, tmp_path: Path) -> None:
    made = [
        make_instance(tmp_path / f"{i}.dcm", sop_class_uid=sop_class, size=16, seed=i)
        for i, sop_class in enumerate(STORAGE_SOP_CLASSES)
    ]
    assoc = node.associate([(sop_class, [ExplicitVRLittleEndian]) for sop_class in STORAGE_SOP_CLASSES])
    assert assoc.is_established
    assert [int(assoc.send_c_store(m.path).Status) for m in made] == [statuses.SUCCESS] * len(made)
    assoc.release()
    rows = {row.sop_instance_uid: row.sop_class_uid for row in node.instances()}
    assert rows == {m.identity.sop_instance_uid: m.sop_class_uid for m in made}
