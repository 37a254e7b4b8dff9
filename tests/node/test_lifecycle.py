"""The transition tables: every legal move applied to a real row, every illegal one refused by name."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import pytest

from node.constants import DeliveryState, JobState, StudyState
from node.db import Database, Job, Study
from node.db.schema import Delivery, OutputObject, utcnow
from node.lifecycle import DELIVERY, JOB, LIFECYCLES, STUDY, IllegalTransition, StudyEvent


@pytest.fixture()
def database(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'node.sqlite3'}")
    db.ensure_schema()
    return db


def _row(session, lifecycle, state):  # type: ignore[no-untyped-def]
    now = utcnow()
    study = Study(study_instance_uid=f"2.25.{uuid.uuid4().int}", state=StudyState.RECEIVED, first_received_at=now, last_received_at=now, generation=0, updated_at=now)
    session.add(study)
    session.flush()
    if lifecycle is STUDY:
        study.state = state
        session.flush()
        return Study, study.id
    job = Job(study_id=study.id, generation=0, state=state if lifecycle is JOB else JobState.DONE, attempts=0)
    session.add(job)
    session.flush()
    if lifecycle is JOB:
        return Job, job.id
    output = OutputObject(job_id=job.id, kind="SR", sop_class_uid="1.2", sop_instance_uid=f"2.25.{uuid.uuid4().int}", series_instance_uid="1.2.4",
                          study_instance_uid=study.study_instance_uid, transfer_syntax_uid="1.2.840.10008.1.2.1", path="x", size_bytes=1, sha256="0" * 64)
    session.add(output)
    session.flush()
    delivery = Delivery(output_object_id=output.id, destination="PACS@h:104", state=state, attempts=0)
    session.add(delivery)
    session.flush()
    return Delivery, delivery.id


@pytest.mark.parametrize("lifecycle", LIFECYCLES, ids=lambda lc: lc.entity)
def test_every_legal_transition_moves_a_row_and_every_other_state_is_left_alone(database: Database, lifecycle) -> None:  # type: ignore[no-untyped-def]
    states = list(type(lifecycle.start))
    events = {event for _, event, _ in lifecycle.transitions()}
    for state, event in itertools.product(states, events):
        with database.session() as session:
            model, row_id = _row(session, lifecycle, state)
            moved = lifecycle.apply(session, model, event, model.id == row_id)
            now_state = session.get(model, row_id, populate_existing=True).state
        if (state, event) in lifecycle.table:
            assert moved == 1 and now_state is lifecycle.next_state(state, event), (state, event)
        else:
            assert moved == 0 and now_state is state, (state, event)
            with pytest.raises(IllegalTransition, match=f"state '{state.value}' cannot take event '{event.value}'"):
                lifecycle.next_state(state, event)


def test_an_illegal_move_names_both_states() -> None:
    with pytest.raises(IllegalTransition, match="a study cannot move from 'delivered' to 'running'"):
        STUDY.check_move(StudyState.DELIVERED, StudyState.RUNNING)
    STUDY.check_move(StudyState.QUEUED, StudyState.RUNNING)
    with pytest.raises(IllegalTransition, match="a delivery cannot move from 'delivered' to 'failed'"):
        DELIVERY.check_move(DeliveryState.DELIVERED, DeliveryState.FAILED)


def test_a_running_study_is_not_moved_by_its_deliveries() -> None:
    # Deliveries are woken only after the job's results and its `done` commit together.
    assert StudyState.RUNNING not in STUDY.sources(StudyEvent.DELIVERIES_SENT)


def test_the_architecture_document_draws_every_transition() -> None:
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    drawn = set(re.findall(r"^\s+(\w+) --> (\w+): (\w+)", text, flags=re.MULTILINE))
    for lifecycle in LIFECYCLES:
        for source, event, target in lifecycle.transitions():
            assert (source.value, target.value, event.value) in drawn, (lifecycle.entity, source, event, target)
