"""Write each incoming C-STORE data set to the spool's disk while it is still arriving.

Durability costs one fsync of the whole instance before Success. Done in the C-STORE handler
after the transfer, that fsync waits for every byte to reach the disk (tens of ms for an 8 MiB
radiograph) while the sender waits. :class:`IncomingWriter` moves that work into the transfer:
bound to ``evt.EVT_PDU_RECV`` it appends each data set fragment (P-DATA PDV, PS3.8 Annex E) of a
C-STORE to a ``.part`` file under ``<spool>/.incoming`` as the fragments arrive, and a background
thread ``fdatasync``s the file every few MiB. When the handler runs, it takes the finished file
(:meth:`IncomingWriter.take`), and only the last fragments are left to flush before the rename
into ``<study>/<series>/<sop>.dcm``.

The file starts with the same File Meta Information the handler would write (from the command
set's Affected SOP Class/Instance UIDs and the presentation context's transfer syntax), so both
ways produce the same bytes. The handler still checks the data set in memory (pynetdicom's
buffer) as before; a file that does not match the request exactly (SOP Instance UID, transfer
syntax, length) is discarded and the handler writes from memory instead, so this is only ever
an optimisation, never a second source of truth.

Free disk: with a watermark (``min_free_bytes``, ``settings.min_free_disk_bytes``) no file is
started while free space under the spool is below it, and free space is checked again every
:data:`DISK_CHECK_EVERY_BYTES` written; a data set whose file takes free space under the watermark
is dropped from disk at once (so one huge instance cannot eat the last bytes: it overshoots the
watermark by at most that much plus one PDU). The handler then refuses the C-STORE with
:data:`node.scp.statuses.OUT_OF_RESOURCES_LOW_DISK`.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.pdu import P_DATA_TF

from node.constants import PARTIAL_SUFFIX
from node.dicom_uids import is_valid_uid
from node.disk import free_bytes
from node.scp.dataset_header import CorruptDatasetError, read_header
from node.scp.limits import abort_association
from node.spool import DIRECTORY_MODE, FILE_MODE

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

log = logging.getLogger(__name__)

INCOMING_DIRNAME = ".incoming"
#: Start an fdatasync of a file being received each time this many bytes were appended.
FLUSH_EVERY_BYTES = 2 * 1024 * 1024
#: Check free disk against the watermark each time a file being received grew by this many bytes.
DISK_CHECK_EVERY_BYTES = 1024 * 1024

# Command set tags (PS3.7 E.1).
_AFFECTED_SOP_CLASS_UID = 0x00000002
_AFFECTED_SOP_INSTANCE_UID = 0x00001000
_COMMAND_TAGS = frozenset({_AFFECTED_SOP_CLASS_UID, _AFFECTED_SOP_INSTANCE_UID})


def part10_prefix(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_aet: str) -> bytes:
    """Preamble, ``DICM`` and File Meta Information (PS3.10 7.1) for a received data set.

    The implementation is pynetdicom's (the receiving implementation), as in its
    ``Event.file_meta``; ``source_aet`` is the sender's calling AE title.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    if source_aet:
        meta.SourceApplicationEntityTitle = source_aet
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue()


@dataclass(eq=False)
class IncomingFile:
    """A data set being (or finished being) written to ``path``; owned by one thread at a time."""

    path: Path
    fd: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data_bytes: int = 0
    unflushed: int = 0
    unchecked: int = 0  # bytes appended since free disk was last checked
    flush: Future[None] | None = None
    closed: bool = False

    def finish(self) -> None:
        """Wait for the background flush, fsync the rest and close. The file is then durable."""
        try:
            if self.flush is not None:
                self.flush.result()
            os.fsync(self.fd)
        finally:
            self._close()

    def discard(self) -> None:
        """Close and delete (a file not used)."""
        try:
            if self.flush is not None:
                self.flush.exception()  # wait; a failed flush does not matter for a discarded file
        finally:
            self._close()
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


_SKIP = object()  # the message being received is not written progressively


@dataclass
class _AssociationState:
    command: bytearray = field(default_factory=bytearray)
    command_complete: bool = False
    current: Any = None  # IncomingFile, _SKIP or None
    data_bytes: int = 0  # of the data set being received, written or not
    over_limit: bool = False
    completed: deque[IncomingFile] = field(default_factory=deque)


class IncomingWriter:
    """Progressive writer for one listener (see the module docstring).

    Bind :meth:`handlers` to the server; give :meth:`take` to the C-STORE handler; call
    :meth:`close` when the listener stops.
    """

    def __init__(
        self,
        spool_root: Path,
        *,
        flush_every_bytes: int = FLUSH_EVERY_BYTES,
        max_data_bytes: int | None = None,
        min_free_bytes: int = 0,
        disk_check_every_bytes: int = DISK_CHECK_EVERY_BYTES,
    ) -> None:
        self.directory = spool_root / INCOMING_DIRNAME
        self.directory.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
        self.flush_every_bytes = flush_every_bytes
        #: A data set growing past this is dropped from disk and its association aborted at once.
        self.max_data_bytes = max_data_bytes
        #: The disk watermark (0: none): no file is started, or kept growing, below it.
        self.min_free_bytes = min_free_bytes
        self.disk_check_every_bytes = disk_check_every_bytes
        self._states: dict[int, _AssociationState] = {}
        self._lock = threading.Lock()
        self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-spool-flush")
        #: How many received instances were taken from disk / had to be written from memory.
        self.taken = 0
        self.missed = 0
        #: How many files were dropped because free disk fell under the watermark as they grew.
        self.dropped_low_disk = 0

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_PDU_RECV, self.on_pdu),
            (evt.EVT_RELEASED, self.on_end),
            (evt.EVT_ABORTED, self.on_end),
            (evt.EVT_CONN_CLOSE, self.on_end),
        ]

    # --- DUL thread -----------------------------------------------------------------------
    def on_pdu(self, event: "Event") -> None:
        """EVT_PDU_RECV: append data set fragments of C-STOREs to their files."""
        pdu = event.pdu
        if not isinstance(pdu, P_DATA_TF):
            return
        assoc = event.assoc
        with self._lock:
            state = self._states.setdefault(id(assoc), _AssociationState())
        try:
            self._receive(assoc, state, pdu)
        except Exception:  # never disturb the transfer; the handler falls back to memory
            log.exception("progressive spool write failed; this instance is written from memory")
            if isinstance(state.current, IncomingFile):
                state.current.discard()
            state.current = _SKIP

    def _receive(self, assoc: "Association", state: _AssociationState, pdu: P_DATA_TF) -> None:
        for item in pdu.presentation_data_value_items:
            value = item.presentation_data_value
            if not value:
                continue
            header = value[0]
            if header & 0x01:  # command fragment (PS3.8 E.2)
                if state.command_complete:
                    state.command.clear()
                    state.command_complete = False
                state.command += value[1:]
                state.command_complete = bool(header & 0x02)
                continue
            if state.over_limit:
                return  # the association is being aborted; nothing more is kept
            if state.current is None:
                state.current = self._open(assoc, state, int(item.presentation_context_id or 0))
            current = state.current
            state.data_bytes += len(value) - 1
            if self.max_data_bytes is not None and state.data_bytes > self.max_data_bytes:
                self._refuse_oversized(assoc, state)
                return
            if isinstance(current, IncomingFile):
                self._append(current, memoryview(value)[1:])
                if self._under_watermark(current):
                    self._drop_low_disk(current)
                    state.current = current = _SKIP
            if header & 0x02:  # last fragment of the data set
                if isinstance(current, IncomingFile):
                    with self._lock:
                        state.completed.append(current)
                state.current = None
                state.data_bytes = 0
                state.command.clear()
                state.command_complete = False

    def _refuse_oversized(self, assoc: "Association", state: _AssociationState) -> None:
        """A data set grew past ``max_data_bytes``: drop its file and abort the association.

        pynetdicom would otherwise assemble the whole data set in memory before the C-STORE
        handler could answer 0xA700; aborting (PS3.8 7.3, A-ABORT) while it arrives bounds the
        memory and the disk an association can use to the limit plus one PDU.
        """
        state.over_limit = True
        if isinstance(state.current, IncomingFile):
            state.current.discard()
        state.current = _SKIP
        command = state.command if state.command_complete else bytearray()
        sop_instance = "<unknown>"
        try:
            found = read_header(bytes(command), ImplicitVRLittleEndian, _COMMAND_TAGS).get(_AFFECTED_SOP_INSTANCE_UID)
        except CorruptDatasetError:
            found = None
        if found is not None and is_valid_uid(found, strict=False):
            sop_instance = found
        reason = (
            f"data set of instance {sop_instance} is over the limit of {self.max_data_bytes} bytes "
            "(CXR_NODE_MAX_INSTANCE_BYTES) while still arriving"
        )
        if not abort_association(assoc, reason):
            log.warning("%s; cannot abort this association, its data set is not written", reason)

    def _under_watermark(self, incoming: IncomingFile) -> bool:
        """Every :attr:`disk_check_every_bytes` appended: whether free disk is now under the watermark."""
        if self.min_free_bytes <= 0 or incoming.unchecked < self.disk_check_every_bytes:
            return False
        incoming.unchecked = 0
        return free_bytes(self.directory) < self.min_free_bytes

    def _drop_low_disk(self, incoming: IncomingFile) -> None:
        """Free disk fell under the watermark while ``incoming`` grew: delete it; the handler refuses the C-STORE."""
        free = free_bytes(self.directory)
        incoming.discard()
        self.dropped_low_disk += 1
        log.warning(
            "instance %s: free disk %d bytes fell under the watermark of %d (CXR_NODE_MIN_FREE_DISK_BYTES) while its "
            "data set arrived (%d bytes written); its file is deleted and the C-STORE will be refused",
            incoming.sop_instance_uid,
            free,
            self.min_free_bytes,
            incoming.data_bytes,
        )

    def _open(self, assoc: "Association", state: _AssociationState, context_id: int) -> Any:
        if not state.command_complete:
            return _SKIP
        if self.min_free_bytes > 0 and free_bytes(self.directory) < self.min_free_bytes:
            return _SKIP  # nothing is written below the watermark; the handler refuses the C-STORE
        try:
            command = read_header(bytes(state.command), ImplicitVRLittleEndian, _COMMAND_TAGS)
        except CorruptDatasetError:
            return _SKIP
        sop_class = command.get(_AFFECTED_SOP_CLASS_UID)
        sop_instance = command.get(_AFFECTED_SOP_INSTANCE_UID)
        if not (is_valid_uid(sop_class, strict=False) and is_valid_uid(sop_instance, strict=False)):
            return _SKIP  # not a C-STORE-RQ we would store; the handler decides what to answer
        syntaxes = [cx.transfer_syntax for cx in assoc.accepted_contexts if cx.context_id == context_id]
        if not syntaxes or not syntaxes[0]:
            return _SKIP
        transfer_syntax = str(syntaxes[0][0])
        calling = (assoc.requestor.ae_title or "").strip()
        path = self.directory / f"{secrets.token_hex(8)}{PARTIAL_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        incoming = IncomingFile(path, fd, str(sop_class), str(sop_instance), transfer_syntax)
        try:
            prefix = part10_prefix(incoming.sop_class_uid, incoming.sop_instance_uid, transfer_syntax, calling)
            _write_all(fd, memoryview(prefix))
        except BaseException:
            incoming.discard()
            raise
        return incoming

    def _append(self, incoming: IncomingFile, data: memoryview) -> None:
        _write_all(incoming.fd, data)
        incoming.data_bytes += len(data)
        incoming.unflushed += len(data)
        incoming.unchecked += len(data)
        if incoming.unflushed >= self.flush_every_bytes and (incoming.flush is None or incoming.flush.done()):
            incoming.unflushed = 0
            incoming.flush = self._flusher.submit(os.fdatasync, incoming.fd)

    # --- association thread -------------------------------------------------------------------
    def take(self, assoc: "Association", sop_instance_uid: str, data_bytes: int, transfer_syntax_uid: str) -> IncomingFile | None:
        """The file of the data set the C-STORE handler is answering, if it matches exactly.

        Returns ``None`` (and discards a mismatching file) when the data set was not written
        progressively; the caller then owns nothing. A returned file belongs to the caller, who
        must :meth:`IncomingFile.finish` and move it, or :meth:`IncomingFile.discard` it.
        """
        with self._lock:
            state = self._states.get(id(assoc))
            incoming = state.completed.popleft() if state is not None and state.completed else None
        if incoming is None:
            self.missed += 1
            return None
        if (
            incoming.sop_instance_uid != sop_instance_uid
            or incoming.data_bytes != data_bytes
            or incoming.transfer_syntax_uid != transfer_syntax_uid
        ):
            log.warning(
                "progressively written file for %s does not match the request (%s, %d bytes); writing from memory",
                sop_instance_uid,
                incoming.sop_instance_uid,
                incoming.data_bytes,
            )
            incoming.discard()
            self.missed += 1
            return None
        self.taken += 1
        return incoming

    def on_end(self, event: "Event") -> None:
        """EVT_RELEASED / EVT_ABORTED / EVT_CONN_CLOSE: delete what no handler took."""
        with self._lock:
            state = self._states.pop(id(event.assoc), None)
        if state is None:
            return
        leftovers = list(state.completed)
        if isinstance(state.current, IncomingFile):
            leftovers.append(state.current)
        for incoming in leftovers:
            incoming.discard()

    def close(self) -> None:
        """Delete every file not taken and stop the flusher (listener shutdown)."""
        with self._lock:
            states = list(self._states.values())
            self._states.clear()
        for state in states:
            for incoming in [*state.completed, *([state.current] if isinstance(state.current, IncomingFile) else [])]:
                incoming.discard()
        self._flusher.shutdown(wait=True)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]
