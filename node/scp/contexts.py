"""SOP Classes and transfer syntaxes the listener accepts (its conformance, in one place).

Storage SOP Classes (PS3.4 Annex B.5): the chest radiograph objects a PACS or modality sends.
Transfer syntaxes (PS3.5 Annex A and PS3.6 Table A-1): the uncompressed ones, Deflated, and the
compressed ones that pydicom decodes here (pylibjpeg-libjpeg, pyjpegls, pylibjpeg-openjpeg,
pydicom's own RLE decoder), so that every instance accepted can also be processed.
"""

from __future__ import annotations

from pydicom import uid as _uid
from pynetdicom.presentation import PresentationContext, build_context

#: PS3.4 B.5: Digital X-Ray Image Storage - For Presentation.
DIGITAL_XRAY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
#: PS3.4 B.5: Digital X-Ray Image Storage - For Processing.
DIGITAL_XRAY_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
#: PS3.4 B.5: Computed Radiography Image Storage.
COMPUTED_RADIOGRAPHY = "1.2.840.10008.5.1.4.1.1.1"
#: PS3.4 B.5: Secondary Capture Image Storage.
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: PS3.4 A.4: Verification SOP Class (C-ECHO).
VERIFICATION = "1.2.840.10008.1.1"

STORAGE_SOP_CLASSES: tuple[str, ...] = (
    DIGITAL_XRAY_FOR_PRESENTATION,
    DIGITAL_XRAY_FOR_PROCESSING,
    COMPUTED_RADIOGRAPHY,
    SECONDARY_CAPTURE,
)

#: Accepted transfer syntaxes, in order of preference (the first one of these that a
#: requestor proposes for a context is accepted; pynetdicom follows the requestor's order
#: within the accepted set).
TRANSFER_SYNTAXES: tuple[str, ...] = (
    _uid.ExplicitVRLittleEndian,  # 1.2.840.10008.1.2.1
    _uid.ImplicitVRLittleEndian,  # 1.2.840.10008.1.2 (the default transfer syntax)
    _uid.DeflatedExplicitVRLittleEndian,  # 1.2.840.10008.1.2.1.99
    _uid.JPEGBaseline8Bit,  # 1.2.840.10008.1.2.4.50 JPEG Baseline (Process 1)
    _uid.JPEGLossless,  # 1.2.840.10008.1.2.4.57 JPEG Lossless, Non-Hierarchical (Process 14)
    _uid.JPEGLosslessSV1,  # 1.2.840.10008.1.2.4.70 JPEG Lossless, Process 14, Selection Value 1
    _uid.JPEGLSLossless,  # 1.2.840.10008.1.2.4.80 JPEG-LS Lossless
    _uid.JPEGLSNearLossless,  # 1.2.840.10008.1.2.4.81 JPEG-LS Lossy (Near-Lossless)
    _uid.JPEG2000Lossless,  # 1.2.840.10008.1.2.4.90 JPEG 2000 (Lossless Only)
    _uid.JPEG2000,  # 1.2.840.10008.1.2.4.91 JPEG 2000
    _uid.RLELossless,  # 1.2.840.10008.1.2.5 RLE Lossless
)

#: Transfer syntaxes whose data set (not only the pixels) is deflated (PS3.5 A.5).
DEFLATED_TRANSFER_SYNTAXES: frozenset[str] = frozenset({_uid.DeflatedExplicitVRLittleEndian})
#: Transfer syntaxes with implicit VR encoding (PS3.5 A.1).
IMPLICIT_VR_TRANSFER_SYNTAXES: frozenset[str] = frozenset({_uid.ImplicitVRLittleEndian})


def storage_contexts() -> list[PresentationContext]:
    """One presentation context per storage SOP Class, each with every accepted transfer syntax."""
    return [build_context(sop_class, list(TRANSFER_SYNTAXES)) for sop_class in STORAGE_SOP_CLASSES]


def verification_context() -> PresentationContext:
    """The Verification context (C-ECHO), Implicit and Explicit VR Little Endian."""
    return build_context(VERIFICATION, [_uid.ImplicitVRLittleEndian, _uid.ExplicitVRLittleEndian])


def supported_contexts() -> list[PresentationContext]:
    """Every context the listener supports as SCP."""
    return [verification_context(), *storage_contexts()]
