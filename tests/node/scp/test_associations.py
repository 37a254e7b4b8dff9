"""Association negotiation: AE title checks, allow-list, association limit, disk watermark."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import _config

from node.scp import statuses
from node.scp.contexts import TRANSFER_SYNTAXES
from tests.support.listener import VERIFICATION_CONTEXT, Node
from tests.support.dicom_files import make_instance
from training.dicom_export import DX_FOR_PRESENTATION

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _rejection(assoc) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    primitive = assoc.acceptor.primitive
    return primitive.result, primitive.result_source, primitive.diagnostic


def test_wrong_called_ae_title_is_rejected_permanently(node: Node) -> None:
    assoc = node.associate([VERIFICATION_CONTEXT], called_aet="SOMEONEELSE")
    assert assoc.is_rejected
    assert _rejection(assoc) == statuses.REJECT_CALLED_AET[:3]


def test_called_ae_title_is_not_checked_when_switched_off(start_node: Callable[..., Node]) -> None:
    node = start_node(require_called_aet=False)
    assoc = node.associate([VERIFICATION_CONTEXT], called_aet="ANYTHING")
    assert assoc.is_established
    assoc.release()


def test_calling_ae_title_outside_the_allow_list_is_rejected_and_listed_one_accepted(
    start_node: Callable[..., Node],
) -> None:
    node = start_node(allowed_calling_aets=["PACS1", "PACS2"])
    stranger = node.associate([VERIFICATION_CONTEXT], calling_aet="INTRUDER")
    assert stranger.is_rejected
    assert _rejection(stranger) == statuses.REJECT_CALLING_AET[:3]
    friend = node.associate([VERIFICATION_CONTEXT], calling_aet="PACS2")
    assert friend.is_established
    assert friend.send_c_echo().Status == statuses.SUCCESS
    friend.release()


def test_low_free_disk_rejects_new_associations_transiently_and_the_node_keeps_serving(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node(min_free_disk_bytes=10**18)  # more than any disk: always "low"
    for _ in range(2):
        assoc = node.associate([(DX_FOR_PRESENTATION, [ExplicitVRLittleEndian])])
        assert assoc.is_rejected
        assert _rejection(assoc) == statuses.REJECT_LOW_DISK[:3]
    assert node.instances() == []

    roomy = start_node(min_free_disk_bytes=1)  # the same check with space to spare
    made = make_instance(tmp_path / "in.dcm", size=16)
    assoc = roomy.associate([(DX_FOR_PRESENTATION, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    assert assoc.send_c_store(made.path).Status == statuses.SUCCESS
    assoc.release()


def test_associations_beyond_the_limit_are_rejected_transiently(start_node: Callable[..., Node]) -> None:
    node = start_node(max_associations=1)
    first = node.associate([VERIFICATION_CONTEXT])
    assert first.is_established
    second = node.associate([VERIFICATION_CONTEXT])
    assert second.is_rejected
    assert _rejection(second) == statuses.REJECT_TOO_MANY_ASSOCIATIONS[:3]
    first.release()


def test_unsupported_sop_class_gets_no_presentation_context(node: Node) -> None:
    assoc = node.associate([(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian]), VERIFICATION_CONTEXT])
    assert assoc.is_established
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    assert accepted == {VERIFICATION_CONTEXT[0]}
    (rejected,) = assoc.rejected_contexts
    assert str(rejected.abstract_syntax) == CT_IMAGE_STORAGE
    assert rejected.result == statuses.CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED
    assoc.release()


def test_unsupported_transfer_syntax_is_refused_and_supported_ones_accepted(node: Node) -> None:
    big_endian = "1.2.840.10008.1.2.2"
    assoc = node.associate([(DX_FOR_PRESENTATION, [big_endian]), (DX_FOR_PRESENTATION, list(TRANSFER_SYNTAXES[:1]))])
    assert assoc.is_established
    assert [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts] == [TRANSFER_SYNTAXES[0]]
    (rejected,) = assoc.rejected_contexts
    assert rejected.result == statuses.CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED
    assoc.release()


def test_max_pdu_size_is_offered_to_the_peer(start_node: Callable[..., Node]) -> None:
    node = start_node(max_pdu_size=32768)
    assoc = node.associate([VERIFICATION_CONTEXT])
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 32768
    assoc.release()


def test_listener_refuses_to_start_in_pynetdicom_chunked_receive_mode(
    start_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    with pytest.raises(ValueError, match="STORE_RECV_CHUNKED_DATASET"):
        start_node()
