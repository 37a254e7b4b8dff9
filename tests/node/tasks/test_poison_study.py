"""Crash-safe attempts with real process deaths: a poison image is given up, its neighbours are not.

The child node (:mod:`tests.support.crashing_node`) kills itself with SIGKILL whenever it
builds the outputs of the poison image, and is started again after each death, as a service
manager would. The poison study must end ``failed`` with the evidence (its process died alone
at the same point each time); the studies processed beside it must end ``done``, however
often they were cut short with it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from node.constants import JobState
from node.db import Database, Job, Study
from node.reports import study_report
from tests.node.test_pipeline import spool
from tests.support.crashing_node import settings_for
from training.dicom_export import RadiographIdentity
from training.phantoms import generate_phantom

pytestmark = pytest.mark.slow

#: Child runs allowed: one death beside the others, three alone, one that ends cleanly, and slack.
MAX_RUNS = 8


def test_a_poison_image_is_given_up_as_the_cause_and_the_studies_beside_it_finish(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "var")
    database = Database(settings.resolved_database_url)
    database.ensure_schema()
    studies = [RadiographIdentity.new().study_instance_uid for _ in range(4)]
    poison = None
    for n, study_uid in enumerate(studies):
        phantom = generate_phantom(256, seed=40 + n)
        sop_uid = spool(settings, database, study_uid, phantom.image, phantom.pixel_spacing_mm)
        poison = poison or sop_uid  # the first study's image

    exits = []
    for _ in range(MAX_RUNS):
        run = subprocess.run(
            [sys.executable, "-m", "tests.support.crashing_node", str(settings.data_dir), poison],
            capture_output=True,
            text=True,
            timeout=300,
        )
        exits.append(run.returncode)
        if run.returncode == 0:
            break
    assert exits[-1] == 0, (exits, run.stderr[-3000:])
    assert exits.count(-9) >= settings.job_blame_after_crashes, exits

    with database.session() as session:
        reports = {uid: study_report(session, uid) for uid in studies}
        states = dict(session.execute(select(Study.study_instance_uid, Study.state)).all())
        job_states = set(session.scalars(select(Job.state)))
    [poison_job] = reports[studies[0]]["jobs"]
    assert states[studies[0]] == "failed" and poison_job["state"] == "failed"
    assert "the study is to blame" in poison_job["error"]
    assert poison_job["summary"]["blame"] == "study"
    alone = [cut for cut in poison_job["interruptions"] if cut["alone"]]
    assert len(alone) == settings.job_blame_after_crashes
    assert {(cut["progress"]["image"], cut["progress"]["stage"]) for cut in alone} == {(1, "analyse")}
    for study_uid in studies[1:]:
        [job] = reports[study_uid]["jobs"]
        assert (states[study_uid], job["state"]) == ("done", "done"), job
        assert all(not cut["alone"] for cut in job["interruptions"])  # cut short only beside the poison
    assert JobState.RUNNING not in job_states and JobState.QUEUED not in job_states
