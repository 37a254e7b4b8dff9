"""Output UIDs are derived, not random: the same work gives the same UIDs, other work others."""

from __future__ import annotations

import dataclasses

import pytest

from node.dicom_uids import is_valid_uid
from node.outputs.uids import OutputUIDs, derived_uid
from tests.support.analysis_factory import make_analysis, model_version, phantom_radiograph

SERIES = "1.2.826.0.1.3680043.8.498.1"
INSTANCE = "1.2.826.0.1.3680043.8.498.1.1"


@pytest.fixture(scope="module")
def phantom():
    return phantom_radiograph(64, seed=5)


def _uids(analysis, instance: str = INSTANCE) -> OutputUIDs:
    return OutputUIDs.for_result(source_series_uid=SERIES, source_instance_uid=instance, analysis=analysis)


def test_same_source_models_and_policy_give_the_same_uids(phantom) -> None:
    first = _uids(make_analysis(phantom, seed=1))
    again = _uids(make_analysis(phantom, seed=2))  # other probabilities: same work identity
    assert first == again
    assert first.group_tracking_uid("Mass") == again.group_tracking_uid("Mass")


def test_every_uid_is_a_valid_dicom_uid(phantom) -> None:
    uids = _uids(make_analysis(phantom))
    values = [*dataclasses.astuple(uids), uids.segment_tracking_uid("left"), uids.group_tracking_uid("No Finding")]
    assert all(is_valid_uid(value) and value.startswith("2.25.") for value in values)
    assert len(set(values)) == len(values)


def test_policy_changes_the_sr_but_not_the_seg(phantom) -> None:
    loose = _uids(make_analysis(phantom, policy="loose"))
    tight = _uids(make_analysis(phantom, policy="tight"))
    assert (loose.seg_series, loose.seg_instance) == (tight.seg_series, tight.seg_instance)
    assert loose.sr_instance != tight.sr_instance and loose.sr_series != tight.sr_series


def test_classifier_version_changes_the_sr_only(phantom) -> None:
    old = _uids(make_analysis(phantom, classifier_version="1"))
    new = _uids(make_analysis(phantom, classifier_version="2"))
    assert old.seg_instance == new.seg_instance
    assert old.sr_instance != new.sr_instance


def test_segmenter_version_or_weights_change_both_objects(phantom) -> None:
    base = make_analysis(phantom)
    other_version = make_analysis(phantom, segmenter_version="2027.01.01-1")
    other_weights = dataclasses.replace(
        base, segmenter=dataclasses.replace(base.segmenter, sha256="0" * 64)
    )
    for changed in (other_version, other_weights):
        assert _uids(changed).seg_instance != _uids(base).seg_instance
        assert _uids(changed).sr_instance != _uids(base).sr_instance


def test_images_of_one_series_share_output_series_but_not_instances(phantom) -> None:
    analysis = make_analysis(phantom)
    one, two = _uids(analysis), _uids(analysis, instance=INSTANCE + "2")
    assert (one.seg_series, one.sr_series) == (two.seg_series, two.sr_series)
    assert one.seg_instance != two.seg_instance and one.sr_instance != two.sr_instance


def test_empty_source_uid_is_refused(phantom) -> None:
    with pytest.raises(ValueError, match="source_instance_uid is empty"):
        _uids(make_analysis(phantom), instance="")


def test_derived_uid_fits_the_64_character_limit() -> None:
    assert len(derived_uid("x" * 1000)) <= 44
    assert derived_uid("a", "b") != derived_uid("ab")
    assert model_version("segmenter").device_uid != model_version("classifier").device_uid
