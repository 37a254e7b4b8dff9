"""``cxr-node demo``: the whole node on the embedded default, end to end, on a synthetic study.

What it does, in the order a PACS would see it:

1. starts the node in this process (SQLite and spool under the data directory, in-process tasks,
   the bundled demo models) on a free port;
2. makes a synthetic chest study with the project's phantom generator: a PA radiograph with the
   findings asked for, and a copy labelled lateral (which the node must skip, with its reason);
3. sends both by C-STORE, like a PACS would, and waits for the quiet period and the processing;
4. prints what the node recorded: per finding the probability, the operating threshold, the
   decision and the phantom's ground truth; the lung areas; the SEG and SR written under the data
   directory.

The demo models are trained on phantoms only: every output says NOT FOR CLINICAL USE.
The phantom generator belongs to :mod:`training`; the demo is an admin command, the one place
besides training commands where the node reaches into it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import typer

from node.cli.kit import print_json, settings_or_exit
from node.constants import StudyState
from node.logs import configure_logging

log = logging.getLogger(__name__)

_FINISHED = {StudyState.DONE.value, StudyState.DELIVERED.value, StudyState.FAILED.value}


def _send(files: list[Path], ae_title: str, port: int) -> list[int]:
    """C-STORE ``files`` to the node on loopback; return the DIMSE statuses."""
    from pydicom import dcmread

    from node.delivery.association import open_association
    from node.settings import RemoteNode

    datasets = [dcmread(path) for path in files]
    syntax = str(datasets[0].file_meta.TransferSyntaxUID)
    contexts = [(sop_class, [syntax]) for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets})]
    association = open_association(RemoteNode(ae_title, "127.0.0.1", port), contexts, calling_aet="CXRDEMO")
    if not association.is_established:
        raise RuntimeError(f"the node did not accept the association on port {port}")
    try:
        statuses = []
        for ds in datasets:
            status = association.send_c_store(ds)
            statuses.append(int(status.Status) if status else -1)
        return statuses
    finally:
        association.release()


def _wait_for_study(service: Any, study_uid: str, timeout: float) -> dict[str, Any]:
    from node.reports import study_report

    deadline = time.monotonic() + timeout
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with service.database.session() as session:
            report = study_report(session, study_uid)
        if report and report["study"]["state"] in _FINISHED:
            return report
        time.sleep(0.5)
    state = report["study"]["state"] if report else "not received"
    raise RuntimeError(f"study {study_uid} did not finish within {timeout:.0f} s (state: {state})")


def _print_summary(report: dict[str, Any], truth: dict[str, bool], files: list[Path], output_dir: Path) -> None:
    study = report["study"]
    typer.echo("")
    typer.echo("=" * 78)
    typer.echo("cxr-node demo  --  DEMO MODELS TRAINED ON SYNTHETIC PHANTOMS: NOT FOR CLINICAL USE")
    typer.echo("=" * 78)
    typer.echo(f"study {study['study_instance_uid']}: {study['state']}")
    for result in report.get("results", []):
        status = result.get("status")
        if status != "ok":
            typer.echo(f"  instance {result.get('sop_instance_uid')}: {status} ({result.get('reason')})")
            continue
        typer.echo(f"  instance {result.get('sop_instance_uid')}, mask policy {result.get('policy')}:")
        typer.echo(f"    {'finding':<11}{'probability':>12}{'threshold':>11}  {'decision':<10}{'phantom truth':<14}")
        thresholds = result.get("thresholds") or {}
        decisions = result.get("decisions") or {}
        for finding, probability in (result.get("probabilities") or {}).items():
            decision = "POSITIVE" if decisions.get(finding) else "negative"
            actual = "present" if truth.get(finding) else "absent"
            typer.echo(
                f"    {finding:<11}{probability:>12.3f}{thresholds.get(finding, float('nan')):>11.3f}  {decision:<10}{actual:<14}"
            )
        typer.echo(f"    {'No Finding':<11}{result.get('no_finding', float('nan')):>12.3f}")
        areas = result.get("lung_areas_mm2") or {}
        if areas:
            typer.echo("    lung areas: " + ", ".join(f"{side} {area:.0f} mm²" for side, area in areas.items() if area))
    outputs = report.get("outputs", [])
    if outputs:
        typer.echo("  outputs:")
        for output in outputs:
            typer.echo(f"    {output.get('kind')}: {(output_dir / str(output.get('path'))).resolve()}")
    typer.echo(f"  inputs sent: {', '.join(str(f) for f in files)}")
    typer.echo("  full record: cxr-node studies show " + study["study_instance_uid"] + " --json")


def demo(
    findings: str = typer.Option("Mass,Edema", help="Findings to inject into the phantom, comma separated ('' for none)."),
    seed: int = typer.Option(7, help="Phantom seed (the same seed gives the same patient)."),
    size: int = typer.Option(1024, help="Phantom size in pixels per side."),
    policy: str = typer.Option("", help="Mask policies, comma separated (default: the node's setting)."),
    timeout: float = typer.Option(600.0, help="Seconds to wait for the study to be processed."),
    as_json: bool = typer.Option(False, "--json", help="Print the node's full record of the study as JSON."),
) -> None:
    """Run the node on a synthetic chest study end to end (embedded default, demo models)."""
    configure_logging("WARNING" if as_json else "INFO")
    from node.service import NodeService
    from training.dicom_export import RadiographIdentity
    from training.phantoms import generate_phantom, write_phantom_dicom

    overrides: dict[str, Any] = {"port": 0, "host": "127.0.0.1", "stable_seconds": 2.0}
    if policy:
        overrides["mask_policy"] = policy
    settings = settings_or_exit(**overrides)
    wanted = [f.strip() for f in findings.split(",") if f.strip()]

    phantom = generate_phantom(size, seed=seed, findings=wanted)
    inputs = settings.data_dir / "demo-inputs"
    identity = RadiographIdentity.new(patient_id=f"DEMO-{seed}", patient_name="Demo^Phantom")
    frontal = write_phantom_dicom(phantom, inputs / f"phantom-{seed}-pa.dcm", identity=identity)
    lateral_identity = RadiographIdentity.new(identity.study_instance_uid, patient_id=identity.patient_id,
                                              patient_name=identity.patient_name)
    lateral = write_phantom_dicom(phantom, inputs / f"phantom-{seed}-lateral.dcm", identity=lateral_identity,
                                  view_position="LL")

    service = NodeService(settings)
    service.start()
    try:
        port = service.listener.port
        log.info("demo: sending a PA radiograph and a lateral-labelled copy to %s on port %s", settings.ae_title, port)
        statuses = _send([frontal, lateral], settings.ae_title, port)
        if any(status != 0x0000 for status in statuses):
            raise RuntimeError(f"the node answered C-STORE statuses {[hex(s) for s in statuses]}")
        report = _wait_for_study(service, identity.study_instance_uid, timeout)
    finally:
        service.stop()

    if as_json:
        print_json(report)
    else:
        _print_summary(report, phantom.labels, [frontal, lateral], settings.output_dir)
    if report["study"]["state"] == StudyState.FAILED.value:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the top-level app."""
    app.command("demo")(demo)
