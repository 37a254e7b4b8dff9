"""The DICOM listener (Verification and Storage SCP); see :mod:`node.scp.server`."""

from node.scp.server import ListenerHandle, build_application_entity, start_listener

__all__ = ["ListenerHandle", "build_application_entity", "start_listener"]
