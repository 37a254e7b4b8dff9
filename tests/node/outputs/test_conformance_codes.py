"""The conformance statement lists every code the outputs use (no silent drift)."""

from __future__ import annotations

from pathlib import Path

from pydicom.sr.coding import Code

from node.outputs import codes

PAGE = Path(__file__).resolve().parents[3] / "docs" / "dicom-conformance.md"


def test_every_code_constant_appears_in_the_conformance_statement() -> None:
    page = PAGE.read_text()
    constants = [value for value in vars(codes).values() if isinstance(value, Code)]
    assert len(constants) >= 25
    missing = [f"{c.scheme_designator} {c.value} ({c.meaning})" for c in constants if c.value not in page]
    assert not missing, f"docs/dicom-conformance.md lacks {missing}"


def test_every_finding_probability_is_a_private_code_named_after_its_label() -> None:
    for label, code in codes.PROBABILITY_CODES.items():
        assert code.scheme_designator == codes.PRIVATE_SCHEME
        assert code.meaning == f"{label} probability"
        assert len(code.value) <= 16  # SH
    assert set(codes.PROBABILITY_CODES) == set(codes.FINDING_CODES)
