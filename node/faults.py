"""Why one image could not be used, in words that quote nothing from its header.

pydicom and highdicom quote the offending value in their messages (``Invalid value for VR DA:
'19xx0101'``), and that value may be a patient's birth date or name. Every error text the node
stores (result reasons, job errors, instance inspections), shows or logs about an image's content
is made here instead: it names the attribute (its name and tag) and the class of the problem,
never the value.

* :class:`ImageFault` is what the node's own checks raise for one image's content; its message
  was written by the node, names attributes only, and is stored as it is.
* :func:`explain` turns any exception into such a text: an :class:`ImageFault` keeps its
  message; another library's exception becomes a fixed explanation built from its type and
  the tag, VR and problem class it names (never the rest of its message).
"""

from __future__ import annotations

import re

from pydicom.datadict import dictionary_description
from pydicom.tag import BaseTag, Tag

#: Longest explanation kept; longer texts are cut here.
MAX_EXPLANATION_CHARS = 500

_TAG = re.compile(r"\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)")
_INVALID_VR = re.compile(r"Invalid value for VR (\w\w)\b")
_SPECIFIC_CHARACTER_SET = 0x00080005
_CHARSET_PROBLEM = "names a character set that is not supported"
_PIXEL_LENGTH_PROBLEM = "does not have the length Rows x Columns x frames x Bits Allocated declare"
#: The attribute a problem class is about when the message names no tag.
_SUBJECT_OF_PROBLEM = {_CHARSET_PROBLEM: _SPECIFIC_CHARACTER_SET, _PIXEL_LENGTH_PROBLEM: 0x7FE00010}


class ImageFault(ValueError):
    """One image's content cannot be used. The message names attributes, never their values."""


def attribute_name(tag: int | BaseTag) -> str:
    """``"Patient's Birth Date (0010,0030)"``; a tag outside the dictionary is named by its number alone."""
    tag = Tag(tag)
    number = f"({tag.group:04X},{tag.element:04X})"
    try:
        return f"{dictionary_description(tag)} {number}"
    except KeyError:
        return f"private or unknown attribute {number}" if tag.is_private else f"unknown attribute {number}"


def explain(exc: BaseException) -> str:
    """A text for ``exc`` that quotes no header value (see the module docstring).

    Examples: ``"View Position (0018,5101) has an unknown value representation"``,
    ``"a value is not a valid DA"``, ``"KeyError (its message is not kept: it may quote header values)"``.
    """
    if isinstance(exc, ImageFault):
        return str(exc)[:MAX_EXPLANATION_CHARS]
    message = str(exc)
    match = _TAG.search(message)
    subject = attribute_name(int(match.group(1) + match.group(2), 16)) if match else None
    problem = _problem_class(exc, message)
    if subject is None and problem in _SUBJECT_OF_PROBLEM:
        subject = attribute_name(_SUBJECT_OF_PROBLEM[problem])
    if problem is None:
        where = f" about {subject}" if subject else ""
        return f"{type(exc).__name__}{where} (its message is not kept: it may quote header values)"
    return f"{subject or 'a value'} {problem}"[:MAX_EXPLANATION_CHARS]


def _problem_class(exc: BaseException, message: str) -> str | None:
    """The class of problem a library's message describes, in fixed words; None when not recognised."""
    if "bytes of pixel data" in message and "expected" in message:
        return _PIXEL_LENGTH_PROBLEM
    if "Unknown Value Representation" in message or "Unknown VR" in message:
        return "has an unknown value representation"
    invalid = _INVALID_VR.search(message)
    if invalid:
        return f"is not a valid {invalid.group(1)}"
    if "SpecificCharacterSet" in message or "character set" in message.lower():
        return _CHARSET_PROBLEM
    if isinstance(exc, UnicodeError):
        return "holds text that cannot be decoded in its Specific Character Set"
    if isinstance(exc, LookupError) and "encoding" in message:
        return "names a character encoding that is not known"
    return None
