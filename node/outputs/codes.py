"""Every coded concept the node writes into a SEG or an SR, defined once.

Each constant is a :class:`pydicom.sr.coding.Code` (value, scheme designator, meaning).
Standard codes were checked against the DICOM content-mapping resource shipped with
pydicom 3 (``pydicom.sr._concepts_dict``) where it holds them; the SNOMED CT codes it does
not hold (left and right lung structure, pneumonia, pulmonary fibrosis, plain chest X-ray)
are the SNOMED CT International concept ids, noted on each line.

Where no standard concept says what the node needs to say (a probability named after one
finding, which OHIF prints as the label of the finding's region; the lung mask policy; the
threshold decision) the code is in the private scheme :data:`PRIVATE_SCHEME`, declared in
the SR's Coding Scheme Identification Sequence (PS3.3 C.12.1.1.4) by
:func:`private_coding_scheme`. The finding itself is always the standard SNOMED CT code,
so a reader that ignores the private scheme still knows what each group is about.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.coding import Code

from models.labels import FINDINGS, NO_FINDING

#: Coding Scheme Designator of the node's own concepts (PS3.16 8.1: "99" prefix = private).
PRIVATE_SCHEME = "99CXRNODE"
PRIVATE_SCHEME_NAME = "cxr-node private concepts"
PRIVATE_SCHEME_RESPONSIBLE = "cxr-node project"

# --- Anatomy ---------------------------------------------------------------------------
#: Segmented Property Category of both lung segments (CID 7150).
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
#: Segmented Property Type of both lung segments (CID 7151), made left or right by a
#: Segmented Property Type Modifier (:data:`LEFT` / :data:`RIGHT`), the way CID 7151's
#: lateralised entries are coded.
LUNG = Code("39607008", "SCT", "Lung")
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")
#: The whole structures, used as the SEG's Anatomic Region and the SR's Finding Site.
LEFT_LUNG = Code("44029006", "SCT", "Left lung")  # SNOMED CT "Left lung structure"
RIGHT_LUNG = Code("3341006", "SCT", "Right lung")  # SNOMED CT "Right lung structure"
CHEST = Code("43799004", "SCT", "Chest")  # CID 4031 (older Chest entry; thoracic structure)

#: Lung codes per side, in SEG segment order (models.labels.LUNG_SIDES).
LUNG_BY_SIDE: Mapping[str, Code] = MappingProxyType({"left": LEFT_LUNG, "right": RIGHT_LUNG})
LATERALITY_BY_SIDE: Mapping[str, Code] = MappingProxyType({"left": LEFT, "right": RIGHT})

# --- Findings (SNOMED CT) -----------------------------------------------------------------
MASS = Code("4147007", "SCT", "Mass")
NODULE = Code("27925004", "SCT", "Nodule")
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")  # SNOMED CT "Pneumonia (disorder)"
PULMONARY_EDEMA = Code("19242006", "SCT", "Pulmonary edema")
PULMONARY_FIBROSIS = Code("51615001", "SCT", "Pulmonary fibrosis")  # "Fibrosis of lung (disorder)"
NO_ABNORMALITY = Code("111286", "DCM", "No abnormality")

#: The standard code of each label the classifier scores, keyed by models.labels names.
FINDING_CODES: Mapping[str, Code] = MappingProxyType(
    {
        "Mass": MASS,
        "Nodule": NODULE,
        "Pneumonia": PNEUMONIA,
        "Edema": PULMONARY_EDEMA,
        "Fibrosis": PULMONARY_FIBROSIS,
        NO_FINDING: NO_ABNORMALITY,
    }
)

# --- Private concepts: one probability per label, named so a viewer's label reads well ---
#: Concept name of each label's probability NUM, e.g. "Mass probability" (unit %).
PROBABILITY_CODES: Mapping[str, Code] = MappingProxyType(
    {
        label: Code(f"PROB-{label.upper().replace(' ', '-')}", PRIVATE_SCHEME, f"{label} probability")
        for label in (*FINDINGS, NO_FINDING)
    }
)
#: Qualitative evaluation: is the probability at or above the model's operating threshold.
ABOVE_OPERATING_THRESHOLD = Code("ABOVE-THRESHOLD", PRIVATE_SCHEME, "At or above operating threshold")
#: TEXT item naming the lung mask policy the classifier ran under.
LUNG_MASK_POLICY = Code("MASK-POLICY", PRIVATE_SCHEME, "Lung mask policy")

# --- Standard measurement concepts ----------------------------------------------------------
THRESHOLD_VALUE = Code("122411", "DCM", "Threshold Value")
AREA = Code("42798000", "SCT", "Area")
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
COMMENT = Code("121106", "DCM", "Comment")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12

# --- Units (UCUM) -----------------------------------------------------------------------------
PERCENT = Code("%", "UCUM", "Percent")
SQUARE_MILLIMETER = Code("mm2", "UCUM", "square millimeter")
SQUARE_PIXEL = Code("{pixels}", "UCUM", "pixels")  # area when the pixel spacing is unknown

# --- Procedure, algorithm, equipment -------------------------------------------------------------
#: Procedure Reported of the TID 1500 report: the examination, not the algorithm.
PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")  # "Plain X-ray of chest (procedure)"
#: Observer Type (CID 270) of the report's observer: the classifier, a device.
DEVICE_OBSERVER = Code("121007", "DCM", "Device")
#: Algorithm Family (CID 7162) of both models.
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
#: Purpose of Reference of the models in the Contributing Equipment Sequence (CID 7005).
#: The brief's "DCM 109104" is *De-identifying Equipment*; 109102 is the processing one.
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")


def private_coding_scheme() -> list[CodingSchemeIdentificationItem]:
    """Items for the Coding Scheme Identification Sequence declaring :data:`PRIVATE_SCHEME`."""
    return [
        CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME,
            name=PRIVATE_SCHEME_NAME,
            responsible_organization=PRIVATE_SCHEME_RESPONSIBLE,
        )
    ]
