"""The dependency direction of the house plan, checked on every import statement.

``models`` imports neither ``node``, ``training`` nor any DICOM library; ``training`` never
imports ``node``; ``node`` reaches ``training`` only from its admin commands (the ``cxr-node``
command modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DICOM_LIBRARIES = {"pydicom", "highdicom", "pynetdicom"}
NODE_MODULES_ALLOWED_TO_IMPORT_TRAINING = {"node/cli/admin.py", "node/cli/demo.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for item in ast.walk(tree):
        if isinstance(item, ast.Import):
            names.update(alias.name.split(".")[0] for alias in item.names)
        elif isinstance(item, ast.ImportFrom) and item.module and item.level == 0:
            names.add(item.module.split(".")[0])
    return names


def _sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("forbidden", ["node", "training", *sorted(DICOM_LIBRARIES)])
def test_models_imports_neither_the_node_nor_training_nor_dicom(forbidden: str) -> None:
    offenders = [str(p.relative_to(REPO)) for p in _sources("models") if forbidden in _imports(p)]
    assert not offenders, f"models must not import {forbidden}: {offenders}"


def test_training_never_imports_the_node() -> None:
    offenders = [str(p.relative_to(REPO)) for p in _sources("training") if "node" in _imports(p)]
    assert not offenders, f"training must not import node: {offenders}"


def test_node_reaches_training_only_from_admin_commands() -> None:
    offenders = [
        rel for p in _sources("node")
        if "training" in _imports(p) and (rel := str(p.relative_to(REPO))) not in NODE_MODULES_ALLOWED_TO_IMPORT_TRAINING
    ]
    assert not offenders, f"only {sorted(NODE_MODULES_ALLOWED_TO_IMPORT_TRAINING)} may import training: {offenders}"


#: The one import by name allowed: the lazy attributes of the ``models`` package (PEP 562), which
#: keep ``import models`` from loading torch for commands that never run a model.
STRING_IMPORTS_ALLOWED = {"models/__init__.py"}


def _string_imports(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    lines: list[int] = []
    for item in ast.walk(tree):
        if isinstance(item, ast.Call):
            func = item.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in {"import_module", "__import__"}:
                lines.append(item.lineno)
    return lines


@pytest.mark.parametrize("package", ["node", "models", "training"])
def test_no_module_is_imported_from_a_string(package: str) -> None:
    offenders = [
        f"{rel}:{line}"
        for p in _sources(package)
        if (rel := str(p.relative_to(REPO))) not in STRING_IMPORTS_ALLOWED
        for line in _string_imports(p)
    ]
    assert not offenders, f"import modules by name in code a reader can follow, not from strings: {offenders}"
