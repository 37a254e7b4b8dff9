"""``cxr-node demo`` runs the whole node on a synthetic study, as the README's first command does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from models.labels import FINDINGS

CLI = Path(sys.executable).parent / "cxr-node"


@pytest.mark.slow
def test_demo_processes_the_frontal_image_skips_the_lateral_and_labels_outputs_not_for_clinical_use(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    env["CXR_NODE_DATA_DIR"] = str(tmp_path / "var")
    result = subprocess.run(
        [str(CLI), "demo", "--json", "--size", "512", "--findings", "Mass"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)

    assert report["study"]["state"] == "done"
    by_status: dict[str, list[dict]] = {}
    for item in report["results"]:
        by_status.setdefault(item["status"], []).append(item)
    assert len(by_status.get("ok", [])) == 1, report["results"]
    assert len(by_status.get("skipped", [])) == 1, report["results"]
    assert "LL" in by_status["skipped"][0]["reason"]

    analysed = by_status["ok"][0]
    assert analysed["policy"] == "loose"
    assert set(analysed["probabilities"]) == set(FINDINGS)
    assert all(0.0 <= p <= 1.0 for p in analysed["probabilities"].values())

    kinds = sorted(output["kind"] for output in report["outputs"])
    assert kinds == ["SEG", "SR"]
    for output in report["outputs"]:
        path = tmp_path / "var" / "outputs" / output["path"]
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == report["study"]["study_instance_uid"]
        assert "NOT FOR CLINICAL USE" in str(ds.SeriesDescription).upper()

    # No patient data in what the node logged.
    assert "Demo^Phantom" not in result.stderr
    assert "DEMO-7" not in result.stderr
