"""Part 10 files with the header faults broken modalities write, made by editing real files.

:func:`break_header` rewrites a file in place: attributes set without pydicom's validation (an
impossible date, a sex that is not M/F/O), then byte edits of equal length (a Specific Character
Set no library knows, a VR that does not exist), so the result is what arrives on the wire.
:func:`leaked` finds pieces of a value in any text or bytes (libraries often quote a part of it).

Example::

    break_header(path, {UNKNOWN_VR_BODY_PART[0]: UNKNOWN_VR_BODY_PART[1]}, PatientBirthDate="19Q7Z3K1")
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom import config

#: Body Part Examined (0018,0015) with the VR "ZZ" instead of "CS" (explicit VR little endian).
UNKNOWN_VR_BODY_PART = (b"\x18\x00\x15\x00CS", b"\x18\x00\x15\x00ZZ")
#: An impossible birth date; no part of it may reach an output, a log, a record or an error text.
BAD_BIRTH_DATE = "19Q7Z3K1"


def break_header(path: Path, edits: dict[bytes, bytes] | None = None, **attributes: str) -> Path:
    """Set ``attributes`` unvalidated, save, then replace each key of ``edits`` (found once) by its value."""
    if attributes:
        ds = pydicom.dcmread(path)
        with config.disable_value_validation():
            for keyword, value in attributes.items():
                if keyword in ds:
                    del ds[keyword]  # a new element takes the relaxed validation mode
                setattr(ds, keyword, value)
            ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    for old, new in (edits or {}).items():
        if len(old) != len(new) or data.count(old) != 1:
            raise ValueError(f"edit {old!r} -> {new!r} must keep the length and match once")
        data = data.replace(old, new)
    path.write_bytes(data)
    return path


def leaked(text: str | bytes, value: str = BAD_BIRTH_DATE) -> list[str]:
    """Every 4-character piece of ``value`` found in ``text``; empty when none is."""
    haystack = text.decode("latin-1") if isinstance(text, bytes) else text
    return [value[i : i + 4] for i in range(len(value) - 3) if value[i : i + 4] in haystack]
