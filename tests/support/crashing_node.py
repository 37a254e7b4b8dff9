"""A node process whose output builders kill it on one poison image: ``python -m tests.support.crashing_node``.

Run as a child process by tests of crash-safe attempts. It is the in-process node's job path
(start-up sweep, completion, the in-process dispatcher with two workers) with one extra output
builder that sends SIGKILL to its own process when it is given the poison SOP Instance UID, as
a decoder or model crash that the image triggers every time would. It exits 0 once every job
it could run has ended; killed, it exits -9 and is started again by the test, like a service
manager restarts a node.

Usage: ``python -m tests.support.crashing_node DATA_DIR POISON_SOP_INSTANCE_UID``
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from pydicom.dataset import Dataset

from node.completion import queue_quiet_studies
from node.db import Database
from node.outputs.builders import DEFAULT_BUILDERS, BuildInput, OutputBuilder
from node.settings import Settings
from node.tasks.dispatch import InProcessDispatcher
from node.tasks.jobs import requeue_unfinished


class KillOnPoison(OutputBuilder):
    """Kills its process while building for the poison image; builds nothing for the others."""

    kind = "POISON"
    sop_class_uid = "1.2.840.10008.5.1.4.1.1.7"
    transfer_syntaxes = ()
    per_policy = False

    def __init__(self, poison_sop_instance_uid: str) -> None:
        self.poison = poison_sop_instance_uid

    def skip_reason(self, given: BuildInput) -> str | None:
        if str(given.source.SOPInstanceUID) != self.poison:
            return "not the poison image"
        os.kill(os.getpid(), signal.SIGKILL)
        return None  # pragma: no cover - the process is gone

    def build(self, given: BuildInput) -> Dataset:  # pragma: no cover - never reached
        raise AssertionError("unreachable")


def settings_for(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, stable_seconds=0, device="cpu", inprocess_workers=2)


def main(data_dir: str, poison: str) -> int:
    settings = settings_for(Path(data_dir))
    database = Database(settings.resolved_database_url)
    database.ensure_schema()
    dispatcher = InProcessDispatcher(settings, database)
    dispatcher.context.builders = (*DEFAULT_BUILDERS, KillOnPoison(poison))
    wake = requeue_unfinished(database, settings, running_are_dead=True)
    wake += [queued.job_id for queued in queue_quiet_studies(database, settings)]
    for job_id in wake:
        dispatcher.process_study(job_id)
    idle = dispatcher.wait_idle(timeout=300)
    dispatcher.shutdown()
    return 0 if idle else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
