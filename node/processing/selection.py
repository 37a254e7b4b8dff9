"""Which instances of a study are frontal chest radiographs the models may read.

:func:`classify_instance` answers for one dataset, with a human-readable reason when it
says no; the worker records that reason as the instance's skip. The rules, in order:

0. **Not a companion object**: the node's own outputs (Manufacturer ``cxr-node``) and the
   non-image companion classes a PACS forwards with a study (SEG, SR, KOS, GSPS;
   :data:`node.constants.COMPANION_SOP_CLASSES`) are refused first, with a reason that says so.
1. **Image**: Pixel Data present, a single frame.
2. **Modality**: ``CR`` or ``DX``. ``OT``/``SC``-style secondary captures (any other
   modality on the Secondary Capture SOP class) only when the header *says* chest and
   frontal (Body Part Examined or an Anatomic Region code, and View Position or a view code
   or an explicit series description); a scanned film carries no promise otherwise.
   Everything else (CT, MR, US, ...) is refused.
3. **Body part**, first source that speaks:
   Body Part Examined (``CHEST``, ``THORAX``, ``LUNG``); else the Anatomic Region Sequence
   (SNOMED CT chest, thorax or lung codes, current and legacy SRT ones); else, for CR/DX
   only, a Series/Study Description or Protocol Name naming the chest (``CHEST``, ``THORAX``,
   ``CXR``, ``LUNG``, ``TORAX``). Anything else is not a chest.
4. **View**, first source that speaks:
   View Position (``PA``/``AP`` accepted; ``LL``, ``RL``, ``LATERAL``, oblique and others
   refused); else View Code Sequence (CID 4010: postero-anterior, antero-posterior, frontal;
   laterals and obliques refused); else Patient Orientation, whose row direction along the
   patient's left-right axis (``L``/``R``) means a frontal projection and along anterior-
   posterior (``A``/``P``) a lateral one; else the Series Description / Protocol Name
   words ``PA``, ``AP``, ``FRONTAL`` (accepted) or ``LAT``/``LATERAL`` (refused). With
   none of these the view is unknown and the instance is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

from node.constants import COMPANION_SOP_CLASSES, NODE_MANUFACTURER

SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"

RADIOGRAPHY_MODALITIES = frozenset({"CR", "DX"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG"})
#: (scheme, code) of chest/thorax/lung anatomic regions, current SNOMED CT and legacy SRT.
CHEST_REGION_CODES = frozenset(
    {
        ("SCT", "43799004"),  # Chest (older CID 4031 entry; thoracic cavity structure)
        ("SCT", "816094009"),  # Chest
        ("SCT", "51185008"),  # Thorax / thoracic structure
        ("SCT", "302551006"),  # Entire thorax
        ("SCT", "39607008"),  # Lung
        ("SRT", "T-D3000"),  # Chest (legacy SNOMED RT)
        ("SRT", "T-28000"),  # Lung (legacy SNOMED RT)
    }
)
FRONTAL_VIEW_POSITIONS = frozenset({"PA", "AP"})
#: View Code Sequence codes (CID 4010) -> View Position they mean.
FRONTAL_VIEW_CODES = {
    ("SCT", "272479007"): "PA",  # postero-anterior
    ("SCT", "399348003"): "AP",  # antero-posterior
    ("SCT", "399033003"): None,  # frontal (PA or AP not said)
    ("SRT", "R-10214"): "PA",
    ("SRT", "R-10206"): "AP",
}
LATERAL_VIEW_CODES = frozenset(
    {
        ("SCT", "399067008"),  # lateral
        ("SCT", "399173006"),  # left lateral
        ("SCT", "399198007"),  # right lateral
        ("SRT", "R-10236"),  # left lateral (legacy)
        ("SRT", "R-10232"),  # right lateral (legacy)
        ("SRT", "R-102CD"),  # lateral (legacy)
    }
)
_CHEST_WORDS = re.compile(r"\b(CHEST|THORAX|THORAC\w*|CXR|LUNGS?|TORAX|TH?ORAX)\b")
_LATERAL_WORDS = re.compile(r"\b(LAT|LATERAL|LL|RL)\b")
_FRONTAL_WORDS = re.compile(r"\b(PA|AP|FRONTAL)\b")


@dataclass(frozen=True)
class Selection:
    """The verdict on one instance.

    ``view_position`` is ``"PA"``/``"AP"`` when known, ``None`` when only "frontal" is known
    or the instance was refused; ``reason`` says why it was refused (``None`` if accepted).
    """

    accepted: bool
    reason: str | None = None
    view_position: str | None = None

    @classmethod
    def refuse(cls, reason: str) -> "Selection":
        return cls(accepted=False, reason=reason)


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def _codes(ds: Dataset, keyword: str) -> list[tuple[str, str]]:
    return [
        (str(item.get("CodingSchemeDesignator", "")).upper(), str(item.get("CodeValue", "")))
        for item in ds.get(keyword, [])
    ]


def _descriptions(ds: Dataset) -> str:
    return " ".join(_text(ds, k) for k in ("SeriesDescription", "ProtocolName", "StudyDescription"))


def classify_instance(ds: Dataset) -> Selection:
    """Decide whether ``ds`` is a frontal chest radiograph (rules in the module docstring).

    Only header attributes are read; the pixel data is not decoded.
    """
    sop_class = str(ds.get("SOPClassUID", "") or "")
    class_name = UID(sop_class).name if sop_class else "(no SOP Class)"
    if str(ds.get("Manufacturer", "") or "").strip() == NODE_MANUFACTURER:
        return Selection.refuse(f"output of {NODE_MANUFACTURER} ({class_name}), not a radiograph")
    if sop_class in COMPANION_SOP_CLASSES:
        return Selection.refuse(f"{class_name} is not a radiograph (SR/SEG/KOS/GSPS are stored, not analysed)")
    if "PixelData" not in ds:
        return Selection.refuse("no Pixel Data: not an image")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        return Selection.refuse(f"{frames} frames: the models read single-frame radiographs")

    modality = _text(ds, "Modality")
    secondary_capture = str(ds.get("SOPClassUID", "")) == SECONDARY_CAPTURE_SOP_CLASS
    if modality not in RADIOGRAPHY_MODALITIES and not secondary_capture:
        return Selection.refuse(f"modality {modality or '(missing)'} is not a projection radiograph (CR or DX)")

    chest, chest_reason = _is_chest(ds, allow_descriptions=not secondary_capture)
    if not chest:
        return Selection.refuse(chest_reason)
    view, view_reason = _frontal_view(ds, allow_orientation=not secondary_capture)
    if view is False:
        return Selection.refuse(view_reason)
    return Selection(accepted=True, reason=None, view_position=view if isinstance(view, str) else None)


def _is_chest(ds: Dataset, *, allow_descriptions: bool) -> tuple[bool, str]:
    body_part = _text(ds, "BodyPartExamined")
    if body_part:
        if body_part in CHEST_BODY_PARTS:
            return True, ""
        return False, f"body part {body_part} is not the chest"
    regions = _codes(ds, "AnatomicRegionSequence")
    if regions:
        if any(code in CHEST_REGION_CODES for code in regions):
            return True, ""
        named = ", ".join(f"{scheme} {value}" for scheme, value in regions)
        return False, f"anatomic region {named} is not the chest"
    if allow_descriptions and _CHEST_WORDS.search(_descriptions(ds)):
        return True, ""
    return False, "body part not stated (no Body Part Examined, Anatomic Region or chest description)"


def _frontal_view(ds: Dataset, *, allow_orientation: bool) -> tuple[str | bool | None, str]:
    """Return (``"PA"``/``"AP"``/``None`` for frontal, or ``False``, reason when refused)."""
    view = _text(ds, "ViewPosition")
    if view:
        if view in FRONTAL_VIEW_POSITIONS:
            return view, ""
        return False, f"view position {view} is not a frontal (PA or AP) view"

    view_codes = _codes(ds, "ViewCodeSequence")
    for code in view_codes:
        if code in FRONTAL_VIEW_CODES:
            return FRONTAL_VIEW_CODES[code], ""
        if code in LATERAL_VIEW_CODES:
            return False, f"view code {code[0]} {code[1]} is a lateral view"
    if view_codes:
        named = ", ".join(f"{scheme} {value}" for scheme, value in view_codes)
        return False, f"view code {named} is not a frontal (PA or AP) view"

    orientation = [str(v).strip().upper() for v in (ds.get("PatientOrientation") or [])]
    if allow_orientation and len(orientation) == 2 and orientation[0]:
        row_direction = orientation[0][0]
        if row_direction in ("L", "R"):
            # Standard display: a PA view's rows run to the patient's left, an AP view's right.
            return ("PA" if row_direction == "L" else "AP"), ""
        if row_direction in ("A", "P"):
            return False, f"patient orientation {'/'.join(orientation)} is a lateral projection"

    descriptions = " ".join(_text(ds, k) for k in ("SeriesDescription", "ProtocolName"))
    if _LATERAL_WORDS.search(descriptions):
        return False, "series description names a lateral view"
    match = _FRONTAL_WORDS.search(descriptions)
    if match:
        word = match.group(1)
        return (word if word in FRONTAL_VIEW_POSITIONS else None), ""
    return False, "view unknown (no View Position, View Code, Patient Orientation or view in the description)"
