"""The shared CLI kit (node.cli.kit): failing, JSON printing, settings errors that name the variable."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from node.cli import app
from node.cli.kit import EXIT_USAGE, fail, print_json

runner = CliRunner()


def test_fail_prints_the_message_on_stderr_and_exits_with_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as raised:
        fail("no database at /x; set CXR_NODE_DATABASE_URL", EXIT_USAGE)
    assert raised.value.exit_code == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.err == "error: no database at /x; set CXR_NODE_DATABASE_URL\n" and captured.out == ""


def test_print_json_keeps_the_built_order_unless_asked_to_sort_and_writes_unknown_values_as_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    print_json({"b": 1, "a": {"when": when, "path": Path("/var/x")}})
    first = capsys.readouterr().out
    assert first.index('"b"') < first.index('"a"') and first.startswith('{\n  "b": 1,')
    assert json.loads(first)["a"] == {"when": "2026-01-02 03:04:05+00:00", "path": "/var/x"}
    print_json({"b": 1, "a": 2}, sort_keys=True)
    assert capsys.readouterr().out == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_an_admin_command_names_the_invalid_setting_instead_of_a_traceback(tmp_path: Path) -> None:
    env = {"CXR_NODE_DATA_DIR": str(tmp_path / "var"), "CXR_NODE_PORT": "not-a-port", "CXR_NODE_CONFIG_FILE": None}
    result = runner.invoke(app, ["models", "list", "--json"], env=env)
    assert result.exit_code == EXIT_USAGE
    assert "invalid settings" in result.output and "port" in result.output
