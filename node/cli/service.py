"""cxr-node commands: serve, worker, status, studies, echo, db (see node/cli/__init__.py).

Read commands take ``--json`` and then print one JSON document on stdout and nothing else.
Nothing here prints patient names or IDs: the database holds none, and the commands show
UIDs, AE titles and states only.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer

from node.cli.kit import (
    EXIT_FAILURE,
    EXIT_USAGE,
    JsonOption,
    LogLevelOption,
    fail,
    open_database,
    print_json,
    settings_or_exit,
)
from node.constants import QUEUE_DELIVERY, QUEUE_INFERENCE, QUEUE_TRAINING
from node.logs import configure_logging
from node.settings import RemoteNode
from node.tasks.interruptions import Interruption, describe_point

KNOWN_QUEUES = (QUEUE_INFERENCE, QUEUE_DELIVERY, QUEUE_TRAINING)
WORKER_POOLS = ("solo", "threads", "prefork")

studies_app = typer.Typer(help="Studies the node has received.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


# --- serve -------------------------------------------------------------------------------------


def serve(
    port: int = typer.Option(None, "--port", help="Listener port (overrides CXR_NODE_PORT)."),
    ae_title: str = typer.Option(None, "--ae-title", help="AE title (overrides CXR_NODE_AE_TITLE)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Data directory (overrides CXR_NODE_DATA_DIR)."),
    log_level: str = LogLevelOption,
) -> None:
    """Run the node: DICOM listener, completion scanner and (without a broker) the task threads."""
    configure_logging(log_level.upper())
    settings = settings_or_exit(port=port, ae_title=ae_title, data_dir=data_dir)
    from node.service import NodeService

    try:
        code = NodeService(settings).run()
    except RuntimeError as exc:  # e.g. an outdated PostgreSQL schema: the message says the fix
        fail(str(exc))
    raise typer.Exit(code)


# --- worker ------------------------------------------------------------------------------------


def worker(
    queues: str = typer.Option(
        QUEUE_INFERENCE, "--queues", "-Q", help=f"Comma-separated queues to consume ({', '.join(KNOWN_QUEUES)})."
    ),
    concurrency: int = typer.Option(None, "--concurrency", "-c", min=1, help="Tasks at once (default: 1 for solo, 4 otherwise)."),
    pool: str = typer.Option(
        None,
        "--pool",
        "-P",
        help="solo (default: CUDA survives it, and so does a broker restart), threads or prefork.",
    ),
    log_level: str = LogLevelOption,
) -> None:
    """Run a Celery worker for the node's tasks (needs CXR_NODE_BROKER_URL)."""
    configure_logging(log_level.upper())
    settings = settings_or_exit()
    if not settings.broker_url:
        fail("CXR_NODE_BROKER_URL is not set: without a broker, `cxr-node serve` runs the tasks itself", EXIT_USAGE)
    queue_list = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in queue_list if q not in KNOWN_QUEUES]
    if not queue_list or unknown:
        fail(f"unknown queue(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(KNOWN_QUEUES)}", EXIT_USAGE)
    # solo by default for every queue: CUDA survives it, and it rode out every Redis kill of the
    # fault-injection suite, where a threads-pool worker (Celery 5.7, kombu 5.7) stopped with
    # "Unrecoverable error" while restoring unacknowledged messages.
    pool = pool or "solo"
    if pool not in WORKER_POOLS:
        fail(f"unknown pool {pool!r}; choose from {', '.join(WORKER_POOLS)}", EXIT_USAGE)
    if pool == "solo":
        if concurrency not in (None, 1):
            fail("the solo pool runs one task at a time; drop --concurrency or pick --pool threads", EXIT_USAGE)
        concurrency = 1
    concurrency = concurrency or 4

    from node.db import Database
    from node.tasks.celery_app import create_celery_app

    try:
        Database(settings.resolved_database_url).ensure_schema()
    except RuntimeError as exc:
        fail(str(exc))
    app = create_celery_app(settings)
    name = "+".join(queue_list)
    argv = [
        "worker",
        f"--queues={','.join(queue_list)}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--loglevel={log_level.upper()}",
        f"--hostname=cxr-node-{name}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    stopped_on_request: list[bool] = []
    from celery.signals import worker_shutting_down

    worker_shutting_down.connect(lambda **_: stopped_on_request.append(True), weak=False)
    app.worker_main(argv)
    if not stopped_on_request:
        # Celery ends its worker after an "Unrecoverable error" with status 0; a supervisor
        # (compose `restart: on-failure`, systemd) must see a failure and start it again.
        fail("the Celery worker stopped without being asked to (see the log above); exit status 1 so that it is restarted")


# --- status and studies ------------------------------------------------------------------------


def status(
    as_json: bool = JsonOption,
    latest: int = typer.Option(10, "--latest", min=0, help="How many of the latest studies to list."),
) -> None:
    """Counts of studies and jobs per state, and the latest studies."""
    configure_logging("WARNING")
    settings = settings_or_exit()
    database = open_database(settings)
    from node.reports import status_report

    with database.session() as session:
        report = status_report(session, latest=latest)
    report = {
        "node": {
            "ae_title": settings.ae_title,
            "port": settings.port,
            "transport": "celery" if settings.broker_url else "in-process",
            "database": database.engine.url.render_as_string(hide_password=True),
        },
        **report,
    }
    if as_json:
        print_json(report)
        return
    node = report["node"]
    typer.echo(f"node {node['ae_title']} port {node['port']}, tasks {node['transport']}, database {node['database']}")
    for what in ("studies", "jobs"):
        counts = report[what]
        parts = ", ".join(f"{state} {n}" for state, n in counts["by_state"].items())
        typer.echo(f"{what}: {counts['total']} ({parts})")
    _print_study_table(report["latest_studies"])


def _print_study_table(studies: list[dict[str, Any]]) -> None:
    if not studies:
        typer.echo("no studies")
        return
    typer.echo(f"{'study instance uid':<64}  {'state':<9}  gen  inst  {'last received (UTC)':<19}  job")
    for s in studies:
        job = s["latest_job"]
        job_text = f"{job['id']} {job['state']}" if job else "-"
        received = (s["last_received_at"] or "")[:19].replace("T", " ")
        typer.echo(
            f"{s['study_instance_uid']:<64}  {s['state']:<9}  {s['generation']:>3}  {s['instances']:>4}  {received:<19}  {job_text}"
        )


@studies_app.command("list")
def studies_list(
    as_json: bool = JsonOption,
    state: str = typer.Option(None, "--state", help="Only studies in this state."),
    limit: int = typer.Option(50, "--limit", min=1),
) -> None:
    """The most recently received studies."""
    configure_logging("WARNING")
    database = open_database(settings_or_exit())
    from node.reports import list_studies

    try:
        with database.session() as session:
            studies = list_studies(session, state=state, limit=limit)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    if as_json:
        print_json({"studies": studies})
    else:
        _print_study_table(studies)


@studies_app.command("show")
def studies_show(
    study_instance_uid: str = typer.Argument(..., help="Study Instance UID."),
    as_json: bool = JsonOption,
) -> None:
    """One study: its state, instances (with what processing found) and jobs."""
    configure_logging("WARNING")
    database = open_database(settings_or_exit())
    from node.reports import study_report

    try:
        with database.session() as session:
            report = study_report(session, study_instance_uid.strip())
    except LookupError as exc:
        fail(str(exc))
    if as_json:
        print_json(report)
        return
    s = report["study"]
    typer.echo(f"study {s['study_instance_uid']}")
    typer.echo(
        f"  state {s['state']}, generation {s['generation']}, from {s['calling_aet'] or '-'} to {s['called_aet'] or '-'}, "
        f"first received {s['first_received_at']}, last {s['last_received_at']}"
    )
    typer.echo(f"instances ({len(report['instances'])}):")
    for i in report["instances"]:
        ins = i["inspection"] or {}
        found = "not inspected yet"
        if ins:
            found = (
                f"{ins.get('modality') or '?'} {ins.get('view_position') or '?'} {ins.get('body_part_examined') or '?'} "
                f"{ins.get('rows')}x{ins.get('columns')} {ins.get('photometric_interpretation') or '?'}, "
                + ("decoded" if ins.get("decoded") else f"NOT decoded: {ins.get('error')}")
            )
        typer.echo(f"  {i['sop_instance_uid']}  ts {i['transfer_syntax_uid']}  {found}")
    typer.echo(f"jobs ({len(report['jobs'])}):")
    for j in report["jobs"]:
        typer.echo(
            f"  job {j['id']} generation {j['generation']}: {j['state']}, attempts {j['attempts']}, "
            f"started {j['started_at'] or '-'}, finished {j['finished_at'] or '-'}"
            + (f", error: {j['error']}" if j["error"] else "")
        )
        for n, cut in enumerate(j["interruptions"], start=1):
            point = describe_point(Interruption.from_json(cut).point)
            typer.echo(
                f"    interruption {n}: attempt {cut['attempt']} on {cut['worker'] or '?'}, noticed {cut['noticed_at']} "
                f"({cut['how']}), {'alone in its process' if cut['alone'] else 'beside other jobs'}, at {point}"
            )
    for name in report:
        if name not in ("study", "instances", "jobs"):
            typer.echo(f"{name}:")
            print_json(report[name])


@studies_app.command("reprocess")
def studies_reprocess(
    study_instance_uid: str = typer.Argument(..., help="Study Instance UID of a done, delivered or failed study."),
    as_json: bool = JsonOption,
) -> None:
    """Process a study again (a new generation): e.g. one given up, once its cause is fixed."""
    configure_logging("WARNING")
    database = open_database(settings_or_exit())
    from node.completion import reprocess_study

    try:
        generation = reprocess_study(database, study_instance_uid.strip())
    except LookupError as exc:
        fail(str(exc))
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    finally:
        database.engine.dispose()
    if as_json:
        print_json({"study_instance_uid": study_instance_uid.strip(), "generation": generation})
    else:
        typer.echo(
            f"study {study_instance_uid.strip()} re-opened as generation {generation}; "
            "the running node queues it at its next completion scan"
        )


# --- echo ----------------------------------------------------------------------------------------


def echo(
    peer: str = typer.Argument(..., help="The peer as AET@host:port."),
    calling_aet: str = typer.Option(None, "--calling-aet", help="Our AE title (default: CXR_NODE_AE_TITLE)."),
    timeout: float = typer.Option(10.0, "--timeout", min=0.1, help="Seconds to wait for each answer."),
    as_json: bool = JsonOption,
) -> None:
    """Send a C-ECHO (Verification) to a DICOM peer and report its answer."""
    configure_logging("WARNING")
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # the outcome is reported below
    try:
        remote = RemoteNode.parse(peer)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    settings = settings_or_exit(ae_title=calling_aet)
    result = c_echo(remote, calling_aet=settings.ae_title, timeout=timeout)
    if as_json:
        print_json(result)
    elif result["ok"]:
        typer.echo(f"{remote}: C-ECHO status 0x{result['status']:04X} (success) in {result['seconds']:.3f} s")
    else:
        typer.echo(f"{remote}: {result['association']}: {result['detail']}", err=True)
    if not result["ok"]:
        raise typer.Exit(EXIT_FAILURE)


def c_echo(remote: RemoteNode, *, calling_aet: str, timeout: float = 10.0) -> dict[str, Any]:
    """C-ECHO ``remote`` as ``calling_aet``; a dict with ``ok``, ``association``, ``status``, ``detail``."""
    from pynetdicom import DEFAULT_TRANSFER_SYNTAXES
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from node.delivery.association import AssociationTimeouts, open_association

    started = time.perf_counter()
    result: dict[str, Any] = {"peer": str(remote), "calling_aet": calling_aet, "ok": False, "status": None}
    assoc = open_association(
        remote,
        [(Verification, DEFAULT_TRANSFER_SYNTAXES)],
        calling_aet=calling_aet,
        timeouts=AssociationTimeouts(acse=timeout, dimse=timeout, network=timeout),
    )
    try:
        if assoc.is_established:
            rsp = assoc.send_c_echo()
            status = getattr(rsp, "Status", None)
            result.update(association="accepted", status=status)
            if status is None:
                result["detail"] = "no C-ECHO response (timed out or aborted)"
            else:
                result["ok"] = status == 0x0000
                result["detail"] = "success" if result["ok"] else f"C-ECHO status 0x{status:04X}"
            assoc.release()
        elif assoc.is_rejected:
            primitive = getattr(assoc.acceptor, "primitive", None)
            reason = getattr(primitive, "reason_str", "") if primitive is not None else ""
            kind = getattr(primitive, "result_str", "") if primitive is not None else ""
            result.update(association="rejected", detail=f"association rejected ({kind}): {reason}".strip())
        elif assoc.is_aborted and getattr(assoc.acceptor, "primitive", None) is not None:
            result.update(association="aborted", detail="association aborted: the peer accepted no Verification context")
        else:
            result.update(association="failed", detail=f"could not connect to {remote.host}:{remote.port} (or no answer)")
    finally:
        if assoc.is_established:
            assoc.abort()
    result["seconds"] = round(time.perf_counter() - started, 4)
    return result


# --- db --------------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    revision: str = typer.Option("head", "--revision", help="Alembic revision to upgrade to."),
    log_level: str = LogLevelOption,
) -> None:
    """Bring the database schema to the latest revision (Alembic upgrade head)."""
    configure_logging(log_level.upper())
    settings = settings_or_exit()
    from node.db import Database

    database = Database(settings.resolved_database_url)
    before = database.current_revision()
    database.upgrade(revision)
    after = database.current_revision()
    typer.echo(f"database {database.engine.url.render_as_string(hide_password=True)}: {before or 'empty'} -> {after}")


@db_app.command("current")
def db_current(as_json: bool = JsonOption) -> None:
    """The schema revision of the database and the one this node needs."""
    configure_logging("WARNING")
    settings = settings_or_exit()
    from node.db import Database

    database = Database(settings.resolved_database_url)
    doc = {"current": database.current_revision(), "head": database.head_revision()}
    doc["up_to_date"] = doc["current"] == doc["head"]
    if as_json:
        print_json(doc)
    else:
        typer.echo(f"current {doc['current'] or 'empty'}, head {doc['head']}" + ("" if doc["up_to_date"] else " (run `cxr-node db upgrade`)"))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.command("status")(status)
    app.command("echo")(echo)
    app.add_typer(studies_app, name="studies")
    app.add_typer(db_app, name="db")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run `cxr-node` instead")
