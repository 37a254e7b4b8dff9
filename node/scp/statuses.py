"""Every DIMSE status and association rejection the listener answers, with its clause.

C-STORE statuses are from PS3.4 Annex B.2.3 (Storage Service Class, "Status"), C-ECHO from
PS3.7 9.1.5.1.4. Within the ranges the standard gives (A7xx, A9xx, Cxxx) each failure stage
has its own value, so a sender's log tells which check refused the instance.

Association rejections are A-ASSOCIATE-RJ (Result, Source, Reason/Diag.) from PS3.8 Table 9-21.
"""

from __future__ import annotations

from typing import NamedTuple

# --- C-ECHO, C-STORE: success -----------------------------------------------------------
#: PS3.4 B.2.3 / PS3.7 9.1.5.1.4: Success. For C-STORE only after the file is fsync'ed and the
#: instance row is committed; also for an instance already stored (a duplicate is not an error).
SUCCESS = 0x0000

# --- C-STORE: Warning (PS3.4 B.2.3: Bxxx) ----------------------------------------------------
#: Warning: Elements Discarded. An instance with this SOP Instance UID and *different* content
#: is already stored; the node keeps the first (UIDs must be unique, PS3.5 9.1) and discards
#: this one. The conflict is recorded (``instance_conflicts``) for the PACS administrator.
WARNING_CONFLICTING_DUPLICATE = 0xB006

# --- C-STORE: Refused, Out of Resources (PS3.4 B.2.3: A7xx) --------------------------------
#: The instance is larger than ``settings.max_instance_bytes``.
OUT_OF_RESOURCES_TOO_LARGE = 0xA700
#: Writing the spool failed (disk full, quota, I/O error).
OUT_OF_RESOURCES_SPOOL_WRITE = 0xA701
#: The database could not record the instance (the spooled file is removed again).
OUT_OF_RESOURCES_DATABASE = 0xA702
#: A deflated data set (PS3.5 A.5) inflates to more than ``settings.max_instance_bytes``;
#: inflation stops at the limit (a deflate bomb is never inflated whole).
OUT_OF_RESOURCES_INFLATED_TOO_LARGE = 0xA703
#: Storing the instance would leave less free disk under the spool than
#: ``settings.min_free_disk_bytes``, checked for every instance before anything of it is written
#: (and while its data set arrives, :mod:`node.scp.incoming`). Transient: the sender retries
#: once space is freed; the association stays usable (C-ECHO, later C-STOREs).
OUT_OF_RESOURCES_LOW_DISK = 0xA704

# --- C-STORE: Error, Data Set Does Not Match SOP Class (PS3.4 B.2.3: A9xx) -----------------
#: No Pixel Data (7FE0,0010): it is Type 1 in the Image Pixel Module of every image IOD we
#: accept (DX, CR, SC), so the data set does not match its SOP Class. The data set itself was
#: readable, hence A9xx rather than Cxxx.
DATASET_WITHOUT_PIXEL_DATA = 0xA900
#: The data set's SOP Class UID (0008,0016) differs from the request's Affected SOP Class UID.
DATASET_SOP_CLASS_MISMATCH = 0xA901

# --- C-STORE: Error, Cannot Understand (PS3.4 B.2.3: Cxxx) ---------------------------------
#: The data set is truncated or not valid DICOM encoding for the negotiated transfer syntax.
CANNOT_UNDERSTAND_CORRUPT = 0xC210
#: pynetdicom answers this when a handler raises; our handler catches its own failures, so
#: seeing it means a bug (the traceback is in the log).
CANNOT_UNDERSTAND_HANDLER_ERROR = 0xC211
#: Study, Series or SOP Instance UID missing or not a valid UID (PS3.5 9.1).
CANNOT_UNDERSTAND_INVALID_UID = 0xC212
#: The data set's SOP Instance UID (0008,0018) differs from the request's Affected SOP
#: Instance UID.
CANNOT_UNDERSTAND_INSTANCE_MISMATCH = 0xC213

# --- DIMSE level (PS3.7 Annex C.5.3, a general status of every DIMSE service) --------------
#: Refused: SOP Class Not Supported. The C-STORE's Affected SOP Class UID is not the abstract
#: syntax of the presentation context it arrived on (PS3.8 7.1.1.13: a context carries one
#: abstract syntax); e.g. a CT instance sent on the DX context. Checked first, before the data
#: set is read; pynetdicom does not check it.
SOP_CLASS_NOT_SUPPORTED = 0x0122

# --- Presentation context results (PS3.8 Table 9-18), per proposed context -----------------
#: A SOP Class we do not store (CT, MR, ...) is refused during negotiation, before any data:
#: its presentation context gets "abstract-syntax-not-supported". DCMTK storescu then prints
#: "No presentation context for: (CT) ..." per such file, or "No Acceptable Presentation
#: Contexts" and stops when nothing it proposed was accepted; no C-STORE is sent.
CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
#: None of the proposed transfer syntaxes is one of :data:`node.scp.contexts.TRANSFER_SYNTAXES`.
CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04

STATUS_NAMES: dict[int, str] = {
    SUCCESS: "Success",
    WARNING_CONFLICTING_DUPLICATE: "Warning: Elements Discarded (another instance with this UID is stored)",
    OUT_OF_RESOURCES_TOO_LARGE: "Refused: Out of Resources (instance over the size limit)",
    OUT_OF_RESOURCES_SPOOL_WRITE: "Refused: Out of Resources (spool write failed)",
    OUT_OF_RESOURCES_DATABASE: "Refused: Out of Resources (database unavailable)",
    OUT_OF_RESOURCES_INFLATED_TOO_LARGE: "Refused: Out of Resources (deflated data set inflates over the size limit)",
    OUT_OF_RESOURCES_LOW_DISK: "Refused: Out of Resources (free disk under the watermark)",
    DATASET_WITHOUT_PIXEL_DATA: "Error: Data Set Does Not Match SOP Class (no Pixel Data)",
    DATASET_SOP_CLASS_MISMATCH: "Error: Data Set Does Not Match SOP Class (SOP Class UID differs)",
    CANNOT_UNDERSTAND_CORRUPT: "Error: Cannot Understand (truncated or corrupt data set)",
    CANNOT_UNDERSTAND_HANDLER_ERROR: "Error: Cannot Understand (unexpected error in the node)",
    CANNOT_UNDERSTAND_INVALID_UID: "Error: Cannot Understand (missing or invalid UID)",
    CANNOT_UNDERSTAND_INSTANCE_MISMATCH: "Error: Cannot Understand (SOP Instance UID differs from the request)",
    SOP_CLASS_NOT_SUPPORTED: "Refused: SOP Class Not Supported",
}


def status_name(status: int) -> str:
    """A readable name for a status this node answers, e.g. for log lines."""
    return STATUS_NAMES.get(status, f"status 0x{status:04X}")


class Rejection(NamedTuple):
    """An A-ASSOCIATE-RJ: (result, source, reason) as in PS3.8 Table 9-21."""

    result: int
    source: int
    reason: int
    name: str


# PS3.8 Table 9-21 values.
RESULT_PERMANENT = 0x01
RESULT_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_SERVICE_PROVIDER_ACSE = 0x02
SOURCE_SERVICE_PROVIDER_PRESENTATION = 0x03

#: Calling AE title not on ``settings.allowed_calling_aets`` (sent by pynetdicom from
#: ``AE.require_calling_aet``): rejected-permanent, service-user, calling-AE-title-not-recognized.
REJECT_CALLING_AET = Rejection(RESULT_PERMANENT, SOURCE_SERVICE_USER, 0x03, "calling AE title not recognized")
#: Called AE title is not ours (``settings.require_called_aet``; pynetdicom's
#: ``AE.require_called_aet``): rejected-permanent, service-user, called-AE-title-not-recognized.
REJECT_CALLED_AET = Rejection(RESULT_PERMANENT, SOURCE_SERVICE_USER, 0x07, "called AE title not recognized")
#: More than ``settings.max_associations`` established at once (:class:`node.scp.limits.AssociationSlots`): rejected-transient,
#: service-provider (presentation), local-limit-exceeded.
REJECT_TOO_MANY_ASSOCIATIONS = Rejection(
    RESULT_TRANSIENT, SOURCE_SERVICE_PROVIDER_PRESENTATION, 0x02, "local limit exceeded (associations)"
)
#: Free disk under the spool below ``settings.min_free_disk_bytes`` (our check, before any
#: transfer starts): rejected-transient, service-provider (presentation), local-limit-exceeded,
#: so that the sender retries later instead of failing mid-transfer.
REJECT_LOW_DISK = Rejection(
    RESULT_TRANSIENT, SOURCE_SERVICE_PROVIDER_PRESENTATION, 0x02, "local limit exceeded (free disk)"
)

_REJECTION_NAMES = {
    (RESULT_PERMANENT, SOURCE_SERVICE_USER, 0x03): REJECT_CALLING_AET.name,
    (RESULT_PERMANENT, SOURCE_SERVICE_USER, 0x07): REJECT_CALLED_AET.name,
    (RESULT_TRANSIENT, SOURCE_SERVICE_PROVIDER_PRESENTATION, 0x02): "local limit exceeded",
    (RESULT_TRANSIENT, SOURCE_SERVICE_PROVIDER_PRESENTATION, 0x01): "temporary congestion",
}


def rejection_name(result: int | None, source: int | None, reason: int | None) -> str:
    """A readable name for an A-ASSOCIATE-RJ triple, for log lines."""
    kind = {RESULT_PERMANENT: "permanent", RESULT_TRANSIENT: "transient"}.get(result or 0, f"result {result}")
    what = _REJECTION_NAMES.get((result or 0, source or 0, reason or 0), f"source {source}, reason {reason}")
    return f"{kind}: {what}"
