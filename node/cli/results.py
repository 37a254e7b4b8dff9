"""cxr-node commands: resend (see node/cli/__init__.py).

``cxr-node resend STUDY_UID`` sends the study's latest SEG and SR files again, the same
objects with the same UIDs, to every destination of the study, and prints what each
destination answered. Deliveries that fail stay pending with their backoff, for the running
node's sweeps to retry.
"""

from __future__ import annotations

import typer

from node.cli.kit import JsonOption, LogLevelOption, fail, open_database, print_json, settings_or_exit
from node.logs import configure_logging


def resend(
    study_instance_uid: str = typer.Argument(..., help="Study Instance UID whose outputs to send again."),
    as_json: bool = JsonOption,
    log_level: str = LogLevelOption,
) -> None:
    """Send a study's SEG and SR again (same objects, same UIDs) to its destinations."""
    configure_logging(log_level)
    settings = settings_or_exit()
    database = open_database(settings)
    from node.delivery.task import deliver_now, plan_resend

    try:
        plan = plan_resend(database, settings, study_instance_uid)
    except LookupError as exc:
        fail(str(exc))
    outcome: dict[str, object] = {}
    for destination, ids in plan.delivery_ids_by_destination.items():
        outcome[destination] = deliver_now(database, settings, ids)["states"]
    document = {
        "study_instance_uid": plan.study_instance_uid,
        "job_id": plan.job_id,
        "objects": plan.sop_instance_uids,
        "destinations": outcome,
    }
    database.engine.dispose()
    if as_json:
        print_json(document)
    else:
        typer.echo(f"study {plan.study_instance_uid}: {len(plan.sop_instance_uids)} object(s)")
        for destination, states in outcome.items():
            typer.echo(f"  {destination}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items())))  # type: ignore[union-attr]
    failed = any(state != "delivered" for states in outcome.values() for state in states)  # type: ignore[union-attr]
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.command("resend")(resend)
