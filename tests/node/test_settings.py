"""The one settings object: defaults, parsing of admin-typed lists, failing fast."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from node.settings import RemoteNode, Settings


def test_defaults_are_the_embedded_node(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.ae_title == "CXRNODE"
    assert settings.port == 11112
    assert settings.broker_url is None
    assert settings.mask_policy == ("loose",)
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'cxr-node.sqlite3').resolve()}"


def test_lists_and_mappings_are_read_from_comma_separated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_NODE_DESTINATIONS", "PACS@10.0.0.5:104, ARCHIVE@archive.local:11112")
    monkeypatch.setenv("CXR_NODE_ALLOWED_CALLING_AETS", "PACS,MODALITY1")
    monkeypatch.setenv("CXR_NODE_STABLE_SECONDS_BY_AET", "SLOW=60,FAST=2.5")
    monkeypatch.setenv("CXR_NODE_MASK_POLICY", "loose,original")
    monkeypatch.setenv("CXR_NODE_MASK_POLICY_BY_AET", "RESEARCH=tight+original")
    settings = Settings()
    assert settings.destinations == [RemoteNode("PACS", "10.0.0.5", 104), RemoteNode("ARCHIVE", "archive.local", 11112)]
    assert settings.allowed_calling_aets == ["PACS", "MODALITY1"]
    assert settings.stable_seconds_for("SLOW") == 60
    assert settings.stable_seconds_for("FAST") == 2.5
    assert settings.stable_seconds_for("OTHER") == settings.stable_seconds
    assert settings.policies_for("RESEARCH", "CXRNODE") == ("tight", "original")
    assert settings.policies_for("PACS", "CXRNODE") == ("loose", "original")


def test_called_ae_title_selects_a_policy_when_the_caller_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_NODE_MASK_POLICY_BY_AET", "CXRTIGHT=tight")
    assert Settings().policies_for("PACS", "CXRTIGHT") == ("tight",)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CXR_NODE_MASK_POLICY", "snug", "unknown mask policy 'snug'"),
        ("CXR_NODE_DESTINATIONS", "PACS:104", "write it as AET@host:port"),
        ("CXR_NODE_DESTINATIONS", "PACS@host:99999", "outside 1..65535"),
        ("CXR_NODE_AE_TITLE", "A" * 17, "not a valid AE title"),
        ("CXR_NODE_PORT", "-1", "greater than or equal to 0"),
        ("CXR_NODE_STABLE_SECONDS_BY_AET", "SLOW", "is not KEY=VALUE"),
    ],
)
def test_an_invalid_value_stops_start_up_naming_the_rule(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_unknown_settings_are_refused_rather_than_ignored() -> None:
    with pytest.raises(ValidationError, match="mask_polcy"):
        Settings(mask_polcy="loose")  # type: ignore[call-arg]


def test_toml_file_is_read_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cxr-node.toml"
    config.write_text('ae_title = "FROMTOML"\nport = 104\nstable_seconds = 30\n')
    monkeypatch.setenv("CXR_NODE_CONFIG_FILE", str(config))
    monkeypatch.setenv("CXR_NODE_PORT", "11113")
    settings = Settings()
    assert settings.ae_title == "FROMTOML"
    assert settings.stable_seconds == 30
    assert settings.port == 11113


def test_a_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CXR_NODE_CONFIG_FILE", str(tmp_path / "absent.toml"))
    with pytest.raises(FileNotFoundError, match="absent.toml"):
        Settings()
