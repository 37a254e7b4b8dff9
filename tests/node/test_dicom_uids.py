"""UID validation (PS3.5 9.1): what may become a spool path component."""

from __future__ import annotations

import pytest

from node.dicom_uids import MAX_UID_LENGTH, is_valid_uid, require_uid


@pytest.mark.parametrize("uid", ["1.2", "1.2.840.10008.5.1.4.1.1.1.1", "0.0", "2.25.0", "1." + "9" * 62])
def test_valid_uids_are_accepted(uid: str) -> None:
    assert is_valid_uid(uid)
    assert is_valid_uid(uid, strict=False)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",  # one component
        "1.2.",  # empty component
        ".1.2",
        "1..2",
        "1.2.3a",
        "1.2 ",  # padding must be stripped before the check
        "../../etc/passwd",
        "1.2/3",
        "1.2\\3",
        "1." + "9" * MAX_UID_LENGTH,  # too long
        "１.２",  # non-ASCII digits
    ],
)
def test_non_uids_are_refused_in_both_modes(text: str) -> None:
    assert not is_valid_uid(text)
    assert not is_valid_uid(text, strict=False)


def test_leading_zeros_are_refused_strictly_and_tolerated_leniently() -> None:
    assert not is_valid_uid("1.2.040")
    assert is_valid_uid("1.2.040", strict=False)


def test_non_strings_are_not_uids() -> None:
    assert not is_valid_uid(None)
    assert not is_valid_uid(1.2)
    assert not is_valid_uid(b"1.2")


def test_require_uid_names_the_attribute_and_the_rule() -> None:
    assert require_uid("1.2.3", "Study Instance UID") == "1.2.3"
    with pytest.raises(ValueError, match=r"Study Instance UID '1\.2\.x' is not a DICOM UID.*PS3\.5 9\.1"):
        require_uid("1.2.x", "Study Instance UID")
