"""Many jobs at once on the embedded default: no crash, every study processed, every output built.

The in-process transport runs jobs on a thread pool, so SEG encoding, SR building, model
forward passes and database writes of several studies overlap. Each round runs in a child
interpreter, so that a crash of native code (the JPEG 2000 encoder once did) shows up as the
child's signal rather than killing the test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STUDIES = 8
WORKERS = 4
ROUNDS = 2

_CHILD = textwrap.dedent(
    f"""
    import sys
    from pathlib import Path
    from sqlalchemy import select
    from node.completion import queue_quiet_studies
    from node.db import Database, Study
    from node.db.schema import OutputObject
    from node.settings import Settings
    from node.tasks.dispatch import InProcessDispatcher
    from tests.node.test_pipeline import spool
    from training.dicom_export import RadiographIdentity
    from training.phantoms import generate_phantom

    settings = Settings(data_dir=Path(sys.argv[1]), stable_seconds=0, mask_policy="loose,original",
                        inprocess_workers={WORKERS}, device="cpu")
    database = Database(settings.resolved_database_url)
    database.ensure_schema()
    for n in range({STUDIES}):
        phantom = generate_phantom(1024, seed=900 + n, findings=["Mass"] if n % 2 else None)
        spool(settings, database, RadiographIdentity.new().study_instance_uid, phantom.image, phantom.pixel_spacing_mm)
    dispatcher = InProcessDispatcher(settings, database)
    for queued in queue_quiet_studies(database, settings):
        dispatcher.process_study(queued.job_id)
    assert dispatcher.wait_idle(600)
    dispatcher.shutdown()
    with database.session() as session:
        states = sorted(str(s) for s in session.scalars(select(Study.state)))
        kinds = sorted(session.scalars(select(OutputObject.kind)))
    print("STATES", ",".join(states))
    print("KINDS", kinds.count("SEG"), kinds.count("SR"))
    """
)


@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_concurrent_in_process_jobs_all_finish_without_a_crash(round_number: int, tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "var")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900
    )
    assert child.returncode == 0, f"round {round_number}: child ended with {child.returncode}: {child.stderr[-3000:]}"
    assert f"STATES {','.join(['done'] * STUDIES)}" in child.stdout, child.stdout
    assert f"KINDS {STUDIES} {2 * STUDIES}" in child.stdout, child.stdout  # one SEG and one SR per policy
