"""The operator documentation names every setting the node has."""

from __future__ import annotations

from pathlib import Path

from node.settings import Settings

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_setting_is_documented_in_the_configuration_page() -> None:
    page = (DOCS / "configuration.md").read_text()
    missing = [f"CXR_NODE_{name.upper()}" for name in Settings.model_fields if f"`CXR_NODE_{name.upper()}`" not in page]
    assert not missing, f"docs/configuration.md lacks rows for {missing}"


def test_the_configuration_page_names_no_setting_that_does_not_exist() -> None:
    import re

    page = (DOCS / "configuration.md").read_text()
    documented = set(re.findall(r"`CXR_NODE_([A-Z_]+)`", page)) - {"CONFIG_FILE"}
    known = {name.upper() for name in Settings.model_fields}
    assert documented <= known, f"documented but unknown: {sorted(documented - known)}"
