"""The hostile-input corpus: every generated case, with the settings of the node it is aimed at.

:data:`NODE_ENV` is what the corpus node runs with (short time limits so slow attacks finish in
seconds, a 64 KiB maximum PDU, a 4 MiB instance limit, four connections per peer);
:func:`corpus` builds the cases for those settings. Each case's expected answer is part of it
(:mod:`tests.hostile.cases`); the categories are documented in docs/testing.md.
"""

from __future__ import annotations

from collections import Counter

from tests.hostile.cases import CATEGORIES, HostileCase
from tests.hostile.disk import disk_cases
from tests.hostile.encoding import encoding_cases
from tests.hostile.protocol import pdu_cases, slow_cases
from tests.hostile.races import race_cases

ACSE_TIMEOUT = 3.0
NETWORK_TIMEOUT = 3.0
PDU_TIMEOUT = 5.0
MAX_PDU_SIZE = 65536
MAX_INSTANCE_BYTES = 4 * 1024 * 1024
MAX_CONNECTIONS_PER_PEER = 4

#: ``CXR_NODE_*`` settings of the node the corpus attacks (besides NodeProcess's test defaults).
NODE_ENV = {
    "CXR_NODE_ACSE_TIMEOUT": str(ACSE_TIMEOUT),
    "CXR_NODE_NETWORK_TIMEOUT": str(NETWORK_TIMEOUT),
    "CXR_NODE_PDU_TIMEOUT": str(PDU_TIMEOUT),
    "CXR_NODE_MAX_PDU_SIZE": str(MAX_PDU_SIZE),
    "CXR_NODE_MAX_INSTANCE_BYTES": str(MAX_INSTANCE_BYTES),
    "CXR_NODE_MAX_CONNECTIONS_PER_PEER": str(MAX_CONNECTIONS_PER_PEER),
    "CXR_NODE_MAX_ASSOCIATIONS": "64",
}


def corpus(categories: tuple[str, ...] = CATEGORIES) -> list[HostileCase]:
    """Every case of ``categories``, slow ones first (they mostly wait, so they start first)."""
    cases = [
        *slow_cases(acse_timeout=ACSE_TIMEOUT, network_timeout=NETWORK_TIMEOUT, pdu_timeout=PDU_TIMEOUT),
        *encoding_cases(max_instance_bytes=MAX_INSTANCE_BYTES, network_timeout=NETWORK_TIMEOUT),
        *pdu_cases(MAX_PDU_SIZE, NETWORK_TIMEOUT),
        *race_cases(),
        *disk_cases(),
    ]
    names = Counter(c.id for c in cases)
    duplicated = [name for name, count in names.items() if count > 1]
    if duplicated:
        raise ValueError(f"case names must be unique: {duplicated}")
    return [c for c in cases if c.category in categories]


def counts(cases: list[HostileCase]) -> dict[str, int]:
    """Cases per category, in :data:`CATEGORIES` order."""
    found = Counter(c.category for c in cases)
    return {category: found[category] for category in CATEGORIES if found[category]}
