"""DICOM UID validation (PS3.5 section 9.1).

A UID is at most 64 characters of digits and dots; each component is a number without a
leading zero (a lone ``0`` is allowed). Paths in the spool are built only from UIDs that
pass this check, never from raw header text.
"""

from __future__ import annotations

import re

#: PS3.5 9.1: "UIDs ... shall not exceed 64 total characters".
MAX_UID_LENGTH = 64

_STRICT_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")
# Old modalities emit components with leading zeros ("1.2.040"); PS3.5 forbids them but they
# are harmless in a path. Digits and dots with no empty component, nothing else.
_LENIENT_UID = re.compile(r"[0-9]+(?:\.[0-9]+)+")


def is_valid_uid(text: object, *, strict: bool = True) -> bool:
    """Return whether ``text`` is a UID.

    Parameters
    ----------
    text:
        The candidate; anything that is not a ``str`` is not a UID.
    strict:
        ``True`` applies PS3.5 9.1 exactly. ``False`` also accepts components with leading
        zeros, which real devices send; such a UID is still only digits and dots (at least
        two components, none empty, at most 64 characters), so it is safe as a file name.
    """
    if not isinstance(text, str) or not 0 < len(text) <= MAX_UID_LENGTH:
        return False
    pattern = _STRICT_UID if strict else _LENIENT_UID
    return pattern.fullmatch(text) is not None


def require_uid(text: object, what: str, *, strict: bool = True) -> str:
    """Return ``text`` if it is a UID (see :func:`is_valid_uid`), else raise ``ValueError``.

    ``what`` names the attribute in the message, e.g. ``"Study Instance UID"``.
    """
    if not is_valid_uid(text, strict=strict):
        shown = text if isinstance(text, str) and len(text) <= 80 else f"<{type(text).__name__}>"
        rule = "components without leading zeros, " if strict else ""
        raise ValueError(
            f"{what} {shown!r} is not a DICOM UID: digits and dots, at least two components, "
            f"{rule}at most {MAX_UID_LENGTH} characters (PS3.5 9.1)"
        )
    return str(text)
