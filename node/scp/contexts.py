"""SOP Classes and transfer syntaxes the listener accepts (its conformance, in one place).

Storage SOP Classes (PS3.4 Annex B.5): the chest radiograph objects a PACS or modality sends.
Companion SOP Classes (Segmentation, the SR classes, Key Object Selection, Grayscale Softcopy
Presentation State): stored, never analysed. A PACS that forwards whole studies re-sends the
node's own SEG and SR along with the radiographs, and one refused class fails the whole
transfer; :mod:`node.ingest` records them without re-opening a processed study, so they do not
start a processing loop with an auto-routing PACS.
Transfer syntaxes (PS3.5 Annex A and PS3.6 Table A-1): the uncompressed ones, Deflated, and the
compressed ones that pydicom decodes here (pylibjpeg-libjpeg, pyjpegls, pylibjpeg-openjpeg,
pydicom's own RLE decoder), so that every instance accepted can also be processed.
"""

from __future__ import annotations

from pydicom import uid as _uid
from pynetdicom.presentation import PresentationContext, build_context

# The companion classes are named in node.constants (node.ingest and the worker's selection
# read them too, without importing the listener); re-exported here with the rest of the
# listener's conformance.
from node.constants import (  # noqa: F401  (re-exported)
    BASIC_TEXT_SR,
    COMPANION_SOP_CLASSES,
    COMPREHENSIVE_3D_SR,
    COMPREHENSIVE_SR,
    ENHANCED_SR,
    GRAYSCALE_SOFTCOPY_PRESENTATION_STATE,
    KEY_OBJECT_SELECTION,
    NO_PIXEL_DATA_SOP_CLASSES,
    SEGMENTATION,
)

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

#: Accepted transfer syntaxes of the companion classes without pixel data (SR, KOS, GSPS);
#: Segmentation takes every one of :data:`TRANSFER_SYNTAXES` (the node's own SEG is JPEG 2000).
NON_IMAGE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    _uid.ExplicitVRLittleEndian,
    _uid.ImplicitVRLittleEndian,
    _uid.DeflatedExplicitVRLittleEndian,
)

#: Transfer syntaxes whose data set (not only the pixels) is deflated (PS3.5 A.5).
DEFLATED_TRANSFER_SYNTAXES: frozenset[str] = frozenset({_uid.DeflatedExplicitVRLittleEndian})
#: Transfer syntaxes with implicit VR encoding (PS3.5 A.1).
IMPLICIT_VR_TRANSFER_SYNTAXES: frozenset[str] = frozenset({_uid.ImplicitVRLittleEndian})


def storage_contexts() -> list[PresentationContext]:
    """One presentation context per storage SOP Class, each with every accepted transfer syntax.

    The image classes and Segmentation take :data:`TRANSFER_SYNTAXES`; the other companion
    classes :data:`NON_IMAGE_TRANSFER_SYNTAXES`.
    """
    contexts = [build_context(sop_class, list(TRANSFER_SYNTAXES)) for sop_class in STORAGE_SOP_CLASSES]
    for sop_class in COMPANION_SOP_CLASSES:
        syntaxes = NON_IMAGE_TRANSFER_SYNTAXES if sop_class in NO_PIXEL_DATA_SOP_CLASSES else TRANSFER_SYNTAXES
        contexts.append(build_context(sop_class, list(syntaxes)))
    return contexts


def verification_context() -> PresentationContext:
    """The Verification context (C-ECHO), Implicit and Explicit VR Little Endian."""
    return build_context(VERIFICATION, [_uid.ImplicitVRLittleEndian, _uid.ExplicitVRLittleEndian])


def supported_contexts() -> list[PresentationContext]:
    """Every context the listener supports as SCP."""
    return [verification_context(), *storage_contexts()]
