"""Start several "processes" (threads with their own engines) on one database at once."""

from __future__ import annotations

import threading

from node.db import Database


def ensure_schema_concurrently(url: str, starters: int = 4, timeout: float = 120.0) -> list[Database]:
    """Call ``ensure_schema`` from ``starters`` engines released together; return the engines.

    Raises the first error any of them met (an empty list of errors is the assertion).
    """
    errors: list[BaseException] = []
    engines: list[Database] = []
    barrier = threading.Barrier(starters)

    def start() -> None:  # serve and workers each open their own engine
        database = Database(url)
        engines.append(database)
        barrier.wait()
        try:
            database.ensure_schema()
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if errors:
        raise AssertionError(f"{len(errors)} of {starters} concurrent starts failed") from errors[0]
    return engines
