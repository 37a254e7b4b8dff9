"""The read and admin commands: status, studies list/show, echo, db upgrade/current."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli import app
from node.completion import queue_quiet_studies
from node.db import Database
from node.scp.server import start_listener
from node.tasks.dispatch import InProcessDispatcher
from node.tasks.process import process_study
from tests.support.ports import free_port
from tests.support.study_rows import add_instance, add_study, make_database, make_settings

runner = CliRunner()


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CXR_NODE_DATABASE_URL", "CXR_NODE_BROKER_URL", "CXR_NODE_CONFIG_FILE", "CXR_NODE_AE_TITLE", "CXR_NODE_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CXR_NODE_DATA_DIR", str(tmp_path / "var"))
    return tmp_path


@pytest.fixture()
def populated(env: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A node database with a processed study, a queued one and one still receiving."""
    settings = make_settings(env)
    database = make_database(settings)
    done_id, done_uid = add_study(database, quiet_for=120)
    add_instance(database, settings, done_id, done_uid)
    [queued] = queue_quiet_studies(database, settings)
    dispatcher = InProcessDispatcher(settings, database)
    assert process_study(queued.job_id, context=dispatcher.context) is not None
    dispatcher.shutdown()
    waiting_id, waiting_uid = add_study(database, quiet_for=60)
    queue_quiet_studies(database, settings)
    receiving_id, receiving_uid = add_study(database, quiet_for=0)
    return {"done": done_uid, "queued": waiting_uid, "received": receiving_uid}


def _json(result) -> dict:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_status_json_counts_studies_and_jobs_per_state_and_lists_the_latest(populated) -> None:  # type: ignore[no-untyped-def]
    status = _json(runner.invoke(app, ["status", "--json"]))

    assert status["studies"]["by_state"] == {"received": 1, "queued": 1, "running": 0, "done": 1, "delivered": 0, "failed": 0}
    assert status["jobs"]["by_state"] == {"queued": 1, "running": 0, "done": 1, "failed": 0}
    assert [s["study_instance_uid"] for s in status["latest_studies"]] == [populated["received"], populated["queued"], populated["done"]]
    done = status["latest_studies"][2]
    assert done["state"] == "done" and done["instances"] == 1 and done["latest_job"]["state"] == "done"
    assert status["node"]["transport"] == "in-process" and status["node"]["ae_title"] == "CXRNODE"


def test_status_text_names_the_states_and_studies(populated) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["status", "--latest", "2"])
    assert result.exit_code == 0, result.output
    assert "studies: 3 (received 1, queued 1, running 0, done 1, delivered 0, failed 0)" in result.stdout
    assert populated["received"] in result.stdout and populated["queued"] in result.stdout
    assert populated["done"] not in result.stdout  # only the latest two


def test_status_without_a_database_says_where_it_looked(env: Path) -> None:
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 1
    assert f"no database at {(env / 'var' / 'cxr-node.sqlite3').resolve()}" in result.stderr
    assert not (env / "var" / "cxr-node.sqlite3").exists()  # a read command creates nothing


def test_studies_list_filters_by_state_and_refuses_unknown_states(populated) -> None:  # type: ignore[no-untyped-def]
    listed = _json(runner.invoke(app, ["studies", "list", "--state", "done", "--json"]))
    assert [s["study_instance_uid"] for s in listed["studies"]] == [populated["done"]]
    bad = runner.invoke(app, ["studies", "list", "--state", "finished"])
    assert bad.exit_code == 2 and "unknown study state 'finished'" in bad.stderr


def test_studies_show_json_tells_the_study_its_instances_and_jobs(populated) -> None:  # type: ignore[no-untyped-def]
    report = _json(runner.invoke(app, ["studies", "show", populated["done"], "--json"]))

    assert report["study"]["study_instance_uid"] == populated["done"] and report["study"]["state"] == "done"
    [instance] = report["instances"]
    assert instance["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
    assert instance["inspection"]["decoded"] is True and instance["inspection"]["view_position"] == "PA"
    [job] = report["jobs"]
    assert job["state"] == "done" and job["summary"]["decoded"] == 1
    assert "Phantom" not in json.dumps(report) and "PHANTOM" not in json.dumps(report)


def test_studies_show_text_and_unknown_uid(populated) -> None:  # type: ignore[no-untyped-def]
    text = runner.invoke(app, ["studies", "show", populated["done"]])
    assert text.exit_code == 0, text.output
    assert "state done" in text.stdout and "decoded" in text.stdout and "job 1 generation 0: done" in text.stdout
    missing = runner.invoke(app, ["studies", "show", "1.2.3.4.5"])
    assert missing.exit_code == 1 and "no study with Study Instance UID 1.2.3.4.5" in missing.stderr


def test_invalid_settings_stop_a_command_naming_the_variable(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_NODE_PORT", "eleven")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2 and "invalid settings" in result.stderr and "port" in result.stderr


def test_db_upgrade_and_current(env: Path) -> None:
    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    head = Database(f"sqlite:///{(env / 'var' / 'cxr-node.sqlite3').resolve()}").head_revision()
    assert f"empty -> {head}" in upgraded.stdout
    current = _json(runner.invoke(app, ["db", "current", "--json"]))
    assert current == {"current": head, "head": head, "up_to_date": True}


def test_echo_reports_success_from_a_dcmtk_peer(env: Path, tmp_path: Path) -> None:
    port = free_port()
    peer = subprocess.Popen(["storescp", "-aet", "PEER", "--output-directory", str(tmp_path), str(port)])
    try:
        deadline = time.monotonic() + 20
        result = None
        while time.monotonic() < deadline:
            result = runner.invoke(app, ["echo", f"PEER@127.0.0.1:{port}", "--json", "--timeout", "2"])
            if result.exit_code == 0:
                break
            time.sleep(0.1)
        assert result is not None and result.exit_code == 0, result.output
        answer = json.loads(result.stdout)
        assert answer["ok"] is True and answer["status"] == 0 and answer["association"] == "accepted"
        assert answer["calling_aet"] == "CXRNODE"
    finally:
        peer.terminate()
        peer.wait(10)


def test_echo_reports_a_rejection_with_its_reason(env: Path, tmp_path: Path) -> None:
    settings = make_settings(env, port=free_port(), host="127.0.0.1", min_free_disk_bytes=0)
    listener = start_listener(settings, make_database(settings))
    try:
        result = runner.invoke(app, ["echo", f"WRONGAET@127.0.0.1:{listener.port}", "--json"])
        accepted = runner.invoke(app, ["echo", f"CXRNODE@127.0.0.1:{listener.port}"])
    finally:
        listener.shutdown()
    assert result.exit_code == 1
    answer = json.loads(result.stdout)
    assert answer["association"] == "rejected" and "Called AE title not recognised" in answer["detail"]
    assert accepted.exit_code == 0 and "status 0x0000 (success)" in accepted.stdout


def test_echo_to_a_closed_port_and_to_a_malformed_peer(env: Path) -> None:
    closed = runner.invoke(app, ["echo", f"PEER@127.0.0.1:{free_port()}", "--timeout", "2"])
    assert closed.exit_code == 1 and "could not connect" in closed.stderr
    malformed = runner.invoke(app, ["echo", "PEER-at-host"])
    assert malformed.exit_code == 2 and "AET@host:port" in malformed.stderr


def test_studies_reprocess_reopens_a_processed_study_as_a_new_generation_that_the_scanner_queues(populated, env: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(env)
    database = make_database(settings)

    result = runner.invoke(app, ["studies", "reprocess", populated["done"], "--json"])
    assert result.exit_code == 0, result.output
    assert _json(result) == {"study_instance_uid": populated["done"], "generation": 1}
    [queued] = [q for q in queue_quiet_studies(database, settings) if q.study_instance_uid == populated["done"]]
    assert queued.generation == 1

    refused = runner.invoke(app, ["studies", "reprocess", populated["queued"]])
    assert refused.exit_code == 2 and "is queued; only a done, delivered or failed study" in refused.output
    unknown = runner.invoke(app, ["studies", "reprocess", "1.2.3.4"])
    assert unknown.exit_code == 1 and "no study 1.2.3.4" in unknown.output
