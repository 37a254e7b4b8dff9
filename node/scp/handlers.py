"""Event handlers of the listener: C-ECHO, C-STORE and association events.

The C-STORE handler never decodes the data set. It walks the element headers of the bytes
pynetdicom received (the buffer behind :meth:`pynetdicom.events.Event.encoded_dataset`) for four
UIDs (:mod:`node.scp.dataset_header`), then makes the instance durable in the spool: normally by
moving the file :mod:`node.scp.incoming` wrote while the data set arrived (only its tail is left
to fsync), else by writing File Meta Information plus those bytes atomically (:mod:`node.spool`).
It commits the instance row (:mod:`node.ingest`) and only then answers Success. Below the disk
watermark (``settings.min_free_disk_bytes``) it refuses each instance before writing anything of
it, as the association check refuses new associations. Each refusal
has its own status (:mod:`node.scp.statuses`) and one log line carrying UIDs, AE titles and the
reason, never patient attributes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from io import BytesIO
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from node.constants import NO_PIXEL_DATA_SOP_CLASSES
from node.db import Database
from node.dicom_uids import is_valid_uid
from node.ingest import IngestOutcome, ReceivedInstance, StoredInstance, record_conflict, record_instance, stored_path
from node.scp import statuses
from node.scp.incoming import IncomingFile, IncomingWriter, part10_prefix
from node.scp.dataset_header import (
    SERIES_INSTANCE_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    CorruptDatasetError,
    InflatedTooLargeError,
    read_header,
)
from node.disk import is_disk_full
from node.spool import KeyedLocks, Spool, SpooledFile, dataset_sha256

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from node.settings import Settings

log = logging.getLogger(__name__)

InstanceCallback = Callable[[StoredInstance], None]


def _peer(event: "Event") -> tuple[str, str, str]:
    assoc = event.assoc
    calling = (assoc.requestor.ae_title or "").strip()
    called = (assoc.acceptor.ae_title or "").strip()
    address = f"{assoc.requestor.address}:{assoc.requestor.port}"
    return calling, called, address


def _uid_or_mark(value: str) -> str:
    """``value`` when it is a UID, else a mark (no header text of the sender's reaches the log)."""
    return value if is_valid_uid(value, strict=False) else "<invalid UID>"


def handle_echo(event: "Event") -> int:
    """EVT_C_ECHO: answer Success (PS3.7 9.1.5.1.4)."""
    calling, _called, address = _peer(event)
    log.info("C-ECHO from %s (%s): success", calling, address)
    return statuses.SUCCESS


class StoreHandler:
    """EVT_C_STORE handler bound to one node's settings, database and spool.

    Parameters
    ----------
    settings:
        Reads ``max_instance_bytes`` and ``min_free_disk_bytes`` (0: no per-instance disk check).
    database:
        Where instance and study rows are committed.
    spool:
        Where files are written.
    on_instance_stored:
        Called after each new instance is durable and committed (not for duplicates), from
        the association's thread; it must be quick and must not raise (an exception is
        logged and does not change the answer, which is already decided).
    incoming:
        The listener's progressive writer; when it holds the file of this data set, that file
        (already mostly on disk) is moved into the spool instead of writing from memory.
    """

    def __init__(
        self,
        settings: "Settings",
        database: Database,
        spool: Spool,
        on_instance_stored: InstanceCallback | None = None,
        incoming: IncomingWriter | None = None,
    ) -> None:
        self.max_instance_bytes = settings.max_instance_bytes
        self.min_free_disk_bytes = settings.min_free_disk_bytes
        self.database = database
        self.spool = spool
        self.on_instance_stored = on_instance_stored
        self.incoming = incoming
        self._instance_locks = KeyedLocks()

    def __call__(self, event: "Event") -> int:
        calling, called, _address = _peer(event)
        request = event.request
        affected_sop_instance = str(request.AffectedSOPInstanceUID or "")
        affected_sop_class = str(request.AffectedSOPClassUID or "")
        transfer_syntax = str(event.context.transfer_syntax)
        context_sop_class = str(event.context.abstract_syntax)
        if affected_sop_class != context_sop_class:
            # PS3.7 C.5.3 (0x0122): the request names a SOP Class other than its context's.
            return self._refuse(
                statuses.SOP_CLASS_NOT_SUPPORTED,
                calling,
                affected_sop_instance,
                f"SOP Class {_uid_or_mark(affected_sop_class)} on the presentation context of {context_sop_class}",
            )
        data_set = request.DataSet
        if not isinstance(data_set, BytesIO):
            return self._refuse(
                statuses.CANNOT_UNDERSTAND_CORRUPT, calling, affected_sop_instance, "no data set in the request"
            )
        view = data_set.getbuffer()
        incoming: IncomingFile | None = None
        if self.incoming is not None:
            incoming = self.incoming.take(event.assoc, affected_sop_instance, view.nbytes, transfer_syntax)
        try:
            return self._store(
                view, incoming, calling, called, affected_sop_class, affected_sop_instance, transfer_syntax
            )
        finally:
            view.release()
            if incoming is not None and not incoming.closed:
                incoming.discard()  # refused, duplicate, or an error before it was moved

    def _refuse(self, status: int, calling: str, sop_instance: str, reason: str) -> int:
        log.warning(
            "C-STORE from %s refused with 0x%04X (%s): instance %s: %s",
            calling,
            status,
            statuses.status_name(status),
            _uid_or_mark(sop_instance),
            reason,
        )
        return status

    def _store(
        self,
        view: memoryview,
        incoming: IncomingFile | None,
        calling: str,
        called: str,
        affected_sop_class: str,
        affected_sop_instance: str,
        transfer_syntax: str,
    ) -> int:
        size = view.nbytes
        if size > self.max_instance_bytes:
            return self._refuse(
                statuses.OUT_OF_RESOURCES_TOO_LARGE,
                calling,
                affected_sop_instance,
                f"{size} bytes is over the limit of {self.max_instance_bytes} (CXR_NODE_MAX_INSTANCE_BYTES)",
            )
        try:
            header = read_header(view, transfer_syntax, max_inflated_bytes=self.max_instance_bytes)
        except InflatedTooLargeError as error:
            return self._refuse(
                statuses.OUT_OF_RESOURCES_INFLATED_TOO_LARGE,
                calling,
                affected_sop_instance,
                f"{error} (CXR_NODE_MAX_INSTANCE_BYTES)",
            )
        except CorruptDatasetError as error:
            return self._refuse(
                statuses.CANNOT_UNDERSTAND_CORRUPT, calling, affected_sop_instance, f"{error} ({transfer_syntax})"
            )
        if not header.has_pixel_data and affected_sop_class not in NO_PIXEL_DATA_SOP_CLASSES:
            return self._refuse(
                statuses.DATASET_WITHOUT_PIXEL_DATA, calling, affected_sop_instance, "no Pixel Data (7FE0,0010)"
            )
        uids: dict[str, str] = {}
        for name, tag in (
            ("Study Instance UID", STUDY_INSTANCE_UID),
            ("Series Instance UID", SERIES_INSTANCE_UID),
            ("SOP Instance UID", SOP_INSTANCE_UID),
            ("SOP Class UID", SOP_CLASS_UID),
        ):
            value = header.get(tag)
            if value is None or not is_valid_uid(value, strict=False):
                return self._refuse(
                    statuses.CANNOT_UNDERSTAND_INVALID_UID,
                    calling,
                    affected_sop_instance,
                    f"{name} is missing or not a UID",
                )
            uids[name] = value
        study_uid = uids["Study Instance UID"]
        series_uid = uids["Series Instance UID"]
        sop_uid = uids["SOP Instance UID"]
        sop_class = uids["SOP Class UID"]
        if sop_uid != affected_sop_instance:
            return self._refuse(
                statuses.CANNOT_UNDERSTAND_INSTANCE_MISMATCH,
                calling,
                affected_sop_instance,
                f"data set says SOP Instance UID {sop_uid}",
            )
        if sop_class != affected_sop_class:
            return self._refuse(
                statuses.DATASET_SOP_CLASS_MISMATCH,
                calling,
                sop_uid,
                f"data set says SOP Class {sop_class}, the request {affected_sop_class}",
            )

        with self._instance_locks.hold(sop_uid):  # concurrent senders of one UID take turns
            return self._store_once(view, incoming, calling, called, study_uid, series_uid, sop_uid, sop_class, transfer_syntax)

    def _store_once(
        self,
        view: memoryview,
        incoming: IncomingFile | None,
        calling: str,
        called: str,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        sop_class: str,
        transfer_syntax: str,
    ) -> int:
        try:
            known = stored_path(self.database, sop_uid)
        except SQLAlchemyError as error:
            log.error("C-STORE from %s: database unavailable for %s: %s", calling, sop_uid, type(error).__name__)
            return statuses.OUT_OF_RESOURCES_DATABASE
        if known is not None:
            return self._answer_known(view, calling, sop_uid, known)

        low_disk = self._low_disk(view.nbytes, incoming)
        if low_disk is not None:
            return self._refuse(statuses.OUT_OF_RESOURCES_LOW_DISK, calling, sop_uid, low_disk)
        try:
            spooled = self._write(view, incoming, study_uid, series_uid, sop_uid, sop_class, transfer_syntax, calling)
        except OSError as error:
            kind = "disk full" if is_disk_full(error) else "I/O error"
            return self._refuse(
                statuses.OUT_OF_RESOURCES_SPOOL_WRITE, calling, sop_uid, f"spool write failed ({kind}: {error.strerror})"
            )

        item = ReceivedInstance(
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            sop_class_uid=sop_class,
            transfer_syntax_uid=transfer_syntax,
            path=spooled.relative_path,
            size_bytes=spooled.size_bytes,
            calling_aet=calling or None,
            called_aet=called or None,
        )
        try:
            stored = record_instance(self.database, item)
        except SQLAlchemyError as error:
            # No row, no Success: remove the file so that the spool holds only recorded instances.
            # The sender retries; the retry writes the file again.
            self.spool.remove(spooled.relative_path)
            return self._refuse(
                statuses.OUT_OF_RESOURCES_DATABASE, calling, sop_uid, f"database error ({type(error).__name__})"
            )

        if stored.outcome is IngestOutcome.DUPLICATE:
            log.info("C-STORE from %s: instance %s already stored; success (duplicate)", calling, sop_uid)
            return statuses.SUCCESS
        log.info(
            "C-STORE from %s: stored instance %s of study %s (%s, %d bytes, %s, generation %d)",
            calling,
            sop_uid,
            study_uid,
            stored.outcome.value,
            spooled.size_bytes,
            transfer_syntax,
            stored.generation,
        )
        if self.on_instance_stored is not None:
            try:
                self.on_instance_stored(stored)
            except Exception:  # the instance is durable and committed; the answer stays Success
                log.exception("on_instance_stored callback failed for instance %s", sop_uid)
        return statuses.SUCCESS

    def _low_disk(self, size: int, incoming: IncomingFile | None) -> str | None:
        """Why storing this instance would take free disk under the watermark, or ``None`` when it fits.

        One ``statvfs`` per instance, no cache: the instance after the one that filled the disk
        is already refused. A progressively written file's bytes are already on disk (and counted
        as used), so then only the current free space is compared.
        """
        if self.min_free_disk_bytes <= 0:
            return None
        free = self.spool.free_bytes()
        needed = 0 if incoming is not None else size
        if free - needed >= self.min_free_disk_bytes:
            return None
        return (
            f"free disk {free} bytes, instance {size} bytes: under the watermark of {self.min_free_disk_bytes} "
            "bytes (CXR_NODE_MIN_FREE_DISK_BYTES); nothing of it written, a retry succeeds once disk space is freed"
        )


    def _answer_known(self, view: memoryview, calling: str, sop_uid: str, known_path: str) -> int:
        """A C-STORE of a stored UID: Success for the same data set, a warning and a record for another."""
        digest = hashlib.sha256(view).hexdigest()
        try:
            stored_digest = dataset_sha256(self.spool.path_of(known_path))
        except (OSError, ValueError) as error:
            log.warning("instance %s: stored file unreadable for comparison (%s)", sop_uid, type(error).__name__)
            stored_digest = ""
        if digest == stored_digest:
            log.info("C-STORE from %s: instance %s already stored; success (duplicate)", calling, sop_uid)
            return statuses.SUCCESS
        try:
            record_conflict(
                self.database, sop_uid, calling_aet=calling or None, size_bytes=view.nbytes, sha256=digest, stored_sha256=stored_digest
            )
        except SQLAlchemyError as error:
            log.error("C-STORE from %s: database unavailable for %s: %s", calling, sop_uid, type(error).__name__)
            return statuses.OUT_OF_RESOURCES_DATABASE
        log.warning(
            "C-STORE from %s: instance %s is already stored with other content; this one discarded, conflict recorded",
            calling,
            sop_uid,
        )
        return statuses.WARNING_CONFLICTING_DUPLICATE

    def _write(
        self,
        view: memoryview,
        incoming: IncomingFile | None,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        sop_class: str,
        transfer_syntax: str,
        calling: str,
    ) -> SpooledFile:
        """Make the instance durable in the spool: move the progressively written file, or write."""
        if incoming is not None:
            try:
                incoming.finish()  # waits for the background flush, fsyncs the tail, closes
                return self.spool.adopt(study_uid, series_uid, sop_uid, incoming.path)
            except BaseException:
                incoming.path.unlink(missing_ok=True)
                raise
        prefix = part10_prefix(sop_class, sop_uid, transfer_syntax, calling)
        return self.spool.write(study_uid, series_uid, sop_uid, (prefix, view))


# --- association events ------------------------------------------------------------------
def make_disk_watermark_check(spool: Spool, min_free_bytes: int) -> Callable[["Event"], None]:
    """EVT_REQUESTED handler: reject a new association while free disk is under the watermark.

    Runs when the A-ASSOCIATE-RQ arrives, before any data is sent, so the sender sees a
    transient rejection (:data:`node.scp.statuses.REJECT_LOW_DISK`) and retries later instead
    of failing in the middle of a study. pynetdicom documents EVT_REQUESTED as the place to
    send an A-ASSOCIATE-RJ yourself; we follow its own rejection path (send, notify, kill).
    """
    from pynetdicom import evt

    reject = statuses.REJECT_LOW_DISK

    def check(event: "Event") -> None:
        free = spool.free_bytes()
        if free >= min_free_bytes:
            return
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling = (getattr(primitive, "calling_ae_title", "") or "").strip()
        log.warning(
            "rejecting association from %s (%s:%s): free disk %d bytes under the watermark of %d "
            "(CXR_NODE_MIN_FREE_DISK_BYTES); answered %s",
            calling,
            assoc.requestor.address,
            assoc.requestor.port,
            free,
            min_free_bytes,
            statuses.rejection_name(reject.result, reject.source, reject.reason),
        )
        assoc.acse.send_reject(reject.result, reject.source, reject.reason)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    return check


def log_rejected(event: "Event") -> None:
    """EVT_REJECTED: one line naming the peer and the reason."""
    assoc = event.assoc
    rq = assoc.requestor.primitive
    rj = assoc.acceptor.primitive
    log.warning(
        "association from %s (%s:%s) to %s rejected, %s",
        (getattr(rq, "calling_ae_title", "") or "").strip(),
        assoc.requestor.address,
        assoc.requestor.port,
        (getattr(rq, "called_ae_title", "") or "").strip(),
        statuses.rejection_name(
            getattr(rj, "result", None), getattr(rj, "result_source", None), getattr(rj, "diagnostic", None)
        ),
    )


def log_accepted(event: "Event") -> None:
    """EVT_ACCEPTED: the peer, and a warning when no presentation context was accepted."""
    assoc = event.assoc
    calling = (assoc.requestor.ae_title or "").strip()
    accepted = assoc.accepted_contexts
    if not accepted:
        proposed = sorted({str(cx.abstract_syntax) for cx in assoc.requestor.requested_contexts})
        log.warning(
            "association from %s (%s:%s) accepted with no presentation context: none of the proposed "
            "SOP Classes/transfer syntaxes is supported (%s)",
            calling,
            assoc.requestor.address,
            assoc.requestor.port,
            ", ".join(proposed),
        )
        return
    log.info(
        "association from %s (%s:%s) accepted, %d presentation context(s)",
        calling,
        assoc.requestor.address,
        assoc.requestor.port,
        len(accepted),
    )


def log_aborted(event: "Event") -> None:
    """EVT_ABORTED: a peer or network abort (an unfinished C-STORE is then not stored)."""
    assoc = event.assoc
    if assoc.is_rejected:  # the peer closing after our rejection; already logged
        return
    log.warning(
        "association from %s (%s:%s) aborted",
        (assoc.requestor.ae_title or "").strip(),
        assoc.requestor.address,
        assoc.requestor.port,
    )

