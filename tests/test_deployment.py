"""The production-shaped deployment (compose.yaml) agrees with the code it runs.

No Docker engine runs here, so the compose file is validated against the Compose
specification offline, and its settings and commands are checked against the real
settings object and command line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from node.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "compose.yaml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _node_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("image", "").startswith("cxr-node")}


def test_compose_file_validates_against_the_compose_specification() -> None:
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    assert checker, "check-jsonschema is part of the test extra; run scripts/test.sh"
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", ["cxr-node", "worker-gpu", "worker-delivery", "migrate"])
def test_compose_environment_is_accepted_by_the_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _compose()["services"][service]["environment"]
    for key, value in env.items():
        # ${POSTGRES_PASSWORD:-change-me} is interpolated by compose; use its default here.
        monkeypatch.setenv(key, str(value).replace("${POSTGRES_PASSWORD:-change-me}", "change-me"))
    settings = Settings()
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")
    if service != "migrate":
        assert settings.broker_url == "redis://redis:6379/0"


def test_every_compose_command_exists_in_the_command_line() -> None:
    cli = Path(sys.executable).parent / "cxr-node"
    for name, service in _node_services(_compose()).items():
        command = service["command"]
        words = [w for w in command if not w.startswith("-")][:2]
        # "db upgrade" is a two-word command; the others take options after one word.
        probe = words if words[0] == "db" else words[:1]
        result = subprocess.run([str(cli), *probe, "--help"], capture_output=True, text=True)
        assert result.returncode == 0, f"service {name}: `cxr-node {' '.join(probe)}` is not a command:\n{result.stderr}"


def test_orthanc_config_sends_to_the_node_ae_title_of_the_deployment() -> None:
    config = json.loads((REPO / "deploy/orthanc/orthanc.json").read_text())
    node_env = _compose()["services"]["cxr-node"]["environment"]
    aet, host, port = config["DicomModalities"]["cxrnode"]
    assert aet == node_env["CXR_NODE_AE_TITLE"]
    assert port == int(node_env["CXR_NODE_PORT"])
    assert host == "cxr-node"
    assert node_env["CXR_NODE_DESTINATIONS"].startswith(config["DicomAet"] + "@orthanc:")
