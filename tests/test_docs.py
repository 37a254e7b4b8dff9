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


def test_conformance_statement_lists_every_accepted_sop_class_and_transfer_syntax() -> None:
    from node.scp.contexts import COMPANION_SOP_CLASSES, STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES

    page = (DOCS / "dicom-conformance.md").read_text()
    accepted = (*STORAGE_SOP_CLASSES, *COMPANION_SOP_CLASSES, *TRANSFER_SYNTAXES)
    missing = [uid for uid in accepted if f"| {uid} |" not in page]
    assert not missing, f"docs/dicom-conformance.md does not list {missing}"


def test_conformance_statement_lists_every_c_store_status_the_listener_returns() -> None:
    from node.scp import statuses

    page = (DOCS / "dicom-conformance.md").read_text()
    returned = [value for name, value in vars(statuses).items() if name.isupper() and isinstance(value, int)
                and (name.startswith(("OUT_OF_RESOURCES", "DATASET_", "CANNOT_UNDERSTAND")) or name == "SUCCESS")]
    missing = [f"0x{value:04X}" for value in returned if f"| 0x{value:04X} |" not in page]
    assert not missing, f"docs/dicom-conformance.md does not explain statuses {missing}"
