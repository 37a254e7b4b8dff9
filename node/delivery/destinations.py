"""Where a study's outputs go: the configured destinations, plus the sender when it is a known PACS."""

from __future__ import annotations

from node.settings import RemoteNode, Settings


def destinations_for(settings: Settings, calling_aet: str | None) -> list[RemoteNode]:
    """Destinations of a study sent by ``calling_aet``.

    ``CXR_NODE_DESTINATIONS`` always; and every ``CXR_NODE_KNOWN_PACS`` entry whose AE title
    is the study's calling AE title (results go back to the PACS that sent the study).
    Duplicates (same ``AET@host:port``) are listed once, in that order.
    """
    found: dict[str, RemoteNode] = {}
    for node in settings.destinations:
        found.setdefault(str(node), node)
    if calling_aet:
        for node in settings.known_pacs:
            if node.ae_title == calling_aet.strip():
                found.setdefault(str(node), node)
    return list(found.values())
