"""A real pynetdicom Storage SCP for tests: records proposed presentation contexts, answers a chosen status.

Used where Orthanc cannot show what the node's SCU asked for (the contexts it proposed),
cannot be made to answer a warning status (0xB000, 0xB007, 0xB006), or cannot be made slow
(``delay_seconds`` before each answer, to catch a sender mid-association). It answers C-ECHO.
"""

from __future__ import annotations

import threading
import time

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.orthanc import free_port


class RecordingSCP:
    """A real pynetdicom Storage SCP on a free loopback port that answers a chosen status.

    It records the presentation contexts each association proposed and the SOP Instance
    UIDs it received, so tests can check what the node's SCU asked for. ``arrivals`` has one
    ``(time.monotonic(), association number, SOP Instance UID)`` per C-STORE request as it
    arrives, before the ``delay_seconds`` wait; ``received`` gets the UID after the wait.
    """

    def __init__(self, ae_title: str = "RECORDER", status: int = 0x0000, delay_seconds: float = 0.0) -> None:
        self.ae_title = ae_title
        self.status = status
        self.delay_seconds = delay_seconds
        self.port = free_port()
        self.proposed: list[list[tuple[str, tuple[str, ...]]]] = []
        self.received: list[str] = []
        self.arrivals: list[tuple[float, int, str]] = []
        self._lock = threading.Lock()
        self._associations: list[object] = []
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = True
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(
                context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless]
            )
        ae.add_supported_context(Verification)
        self._ae = ae
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_REQUESTED, self._on_requested)],
        )

    def _on_requested(self, event) -> None:  # type: ignore[no-untyped-def]
        contexts = [(str(cx.abstract_syntax), tuple(str(ts) for ts in cx.transfer_syntax)) for cx in event.assoc.requestor.requested_contexts]
        with self._lock:
            self.proposed.append(contexts)

    def _on_store(self, event) -> int:  # type: ignore[no-untyped-def]
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            number = next((n for n, seen in enumerate(self._associations) if seen is event.assoc), None)
            if number is None:  # kept referenced, so that no later association reuses its id
                number = len(self._associations)
                self._associations.append(event.assoc)
            self.arrivals.append((time.monotonic(), number, uid))
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        with self._lock:
            self.received.append(uid)
        return self.status

    @property
    def node(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
