"""cxr-node commands: admin — ``models``, ``train``, ``evaluate`` (see node/cli/__init__.py).

This is the only module of :mod:`node` that reaches :mod:`training` (imported inside the commands
that need it, so that ``serve`` never loads training code).

The model store is ``CXR_NODE_MODEL_DIR`` or ``<CXR_NODE_DATA_DIR>/models`` (writable), then the
bundled demo store (read-only). Commands::

    cxr-node models list [--json]
    cxr-node models show NAME_OR_VERSION [--json]
    cxr-node models verify [--json]
    cxr-node models promote ROLE NAME:VERSION [--policy P]
    cxr-node models build-demo [--out DIR]
    cxr-node models import-medsam PATH [--version V]
    cxr-node train segmenter [--data phantoms] [--epochs N] ...
    cxr-node train classifier --policy P [--backbone B] [--data phantoms|nih --nih-root DIR] ...
    cxr-node evaluate --classifier NAME:VERSION [--data phantoms|nih] --out DIR
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from models.store import (
    ROLE_CLASSIFIER,
    ROLE_SEGMENTER,
    ModelStore,
    ModelStoreError,
    ModelVersion,
)

logger = logging.getLogger(__name__)

models_app = typer.Typer(help="The model store: list, show, verify, promote, build the demo models, import MedSAM.", no_args_is_help=True)
train_app = typer.Typer(help="Train a segmenter or a classifier into the model store.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.add_typer(models_app, name="models")
    app.add_typer(train_app, name="train")
    app.command("evaluate")(evaluate)


# --------------------------------------------------------------------------------------------
# helpers


def store_root_from_settings() -> Path:
    """The writable model store root: ``CXR_NODE_MODEL_DIR`` or ``<data dir>/models``."""
    from node.settings import load_settings

    settings = load_settings()
    return settings.model_dir if settings.model_dir is not None else settings.data_dir / "models"


def _store() -> ModelStore:
    return ModelStore(store_root_from_settings())


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def _active_refs(store: ModelStore) -> dict[str, list[str]]:
    """ref -> what it is active for, e.g. ``["segmenter"]`` or ``["classifier:loose"]``."""
    active = store.active()
    marks: dict[str, list[str]] = {}
    if active[ROLE_SEGMENTER]:
        marks.setdefault(active[ROLE_SEGMENTER], []).append(ROLE_SEGMENTER)
    for policy, ref in sorted(active[ROLE_CLASSIFIER].items()):
        marks.setdefault(ref, []).append(f"{ROLE_CLASSIFIER}:{policy}")
    return marks


def _describe(version: ModelVersion, marks: dict[str, list[str]]) -> dict[str, Any]:
    return {**version.summary(), "active_for": marks.get(version.ref, [])}


# --------------------------------------------------------------------------------------------
# models


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List every model version (writable store, then the bundled demo store) and what is active."""
    try:
        store = _store()
        versions = store.list_versions()
        marks = _active_refs(store)
    except ModelStoreError as error:
        _fail(str(error))
        return
    if as_json:
        _print_json({"root": str(store.root), "fallback": str(store.fallback), "versions": [_describe(v, marks) for v in versions]})
        return
    typer.echo(f"model store: {store.root} (then bundled demo store {store.fallback})")
    for v in versions:
        m = v.manifest
        active = ", ".join(marks.get(v.ref, [])) or "-"
        flags = ("demo/research" if not m.clinical_use else "clinical") + (", read-only" if v.read_only else "")
        typer.echo(f"  {m.role:<10} {v.ref:<36} {m.architecture:<16} policy={m.policy or '-':<8} active={active:<20} {flags}")


@models_app.command("show")
def models_show(
    ref: str = typer.Argument(..., metavar="NAME_OR_VERSION", help="name:version, a version, or a name (its newest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one model version's manifest."""
    try:
        store = _store()
        version = store.get(ref)
        marks = _active_refs(store)
    except ModelStoreError as error:
        _fail(str(error))
        return
    data = _describe(version, marks)
    if as_json:
        _print_json(data)
        return
    for key in ("ref", "role", "architecture", "policy", "folder", "weights_file", "sha256", "device_uid", "created_at", "clinical_use", "active_for"):
        typer.echo(f"{key:>14}: {data[key]}")
    typer.echo(f"{'input':>14}: {data['input']}")
    typer.echo(f"{'thresholds':>14}: {data['thresholds']}")
    typer.echo(f"{'metrics':>14}: {data['metrics']}")
    typer.echo(f"{'intended_use':>14}: {data['intended_use']}")


@models_app.command("verify")
def models_verify(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Check every version's manifest and weights (sha256) and the active versions; exit 1 on a problem."""
    store = _store()
    report = store.verify()
    bad = [(ref, error) for ref, error in report if error]
    if as_json:
        _print_json({"ok": not bad, "checked": [{"ref": ref, "ok": error is None, "error": error} for ref, error in report]})
    else:
        for ref, error in report:
            typer.echo(f"{'ok  ' if error is None else 'FAIL'} {ref}" + (f": {error}" if error else ""))
    if bad:
        raise typer.Exit(1)


@models_app.command("promote")
def models_promote(
    role: str = typer.Argument(..., help="segmenter or classifier"),
    ref: str = typer.Argument(..., metavar="VERSION", help="name:version (or an unambiguous version or name)"),
    policy: Optional[str] = typer.Option(None, "--policy", help="Mask policy (classifiers; default: the one it was trained under)."),
) -> None:
    """Make a version the active one for its role (classifiers: for its mask policy)."""
    try:
        version = _store().promote(role, ref, policy=policy)
    except (ModelStoreError, ValueError) as error:
        _fail(str(error))
        return
    what = f"classifier for policy {version.manifest.policy}" if role == ROLE_CLASSIFIER else role
    typer.echo(f"{version.ref} is now the active {what}")


@models_app.command("build-demo")
def models_build_demo(
    out: Optional[Path] = typer.Option(None, "--out", help="Store root to write (default: the bundled models/demo_store)."),
    seed: int = typer.Option(0, "--seed", help="Base seed (the committed demo store uses 0)."),
) -> None:
    """Rebuild the demo models deterministically with the project's own training code (NOT FOR CLINICAL USE)."""
    from training.build_demo import build_demo_store

    _configure_logging()
    try:
        root = build_demo_store(out, seed=seed)
    except (ModelStoreError, ValueError) as error:
        _fail(str(error))
        return
    typer.echo(f"demo models written to {root}")


@models_app.command("import-medsam")
def models_import_medsam(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="An official medsam_vit_b.pth."),
    version: Optional[str] = typer.Option(None, "--version", help="Version name (default: date and sha256 prefix)."),
    name: str = typer.Option("medsam_vit_b", "--name", help="Model name in the store."),
    promote: bool = typer.Option(False, "--promote", help="Also make it the active segmenter."),
) -> None:
    """Register an official MedSAM ViT-B checkpoint as a segmenter version (loads strictly first)."""
    from models.analysis import import_medsam

    _configure_logging()
    try:
        registered = import_medsam(_store(), path, name=name, version=version)
        if promote:
            _store().promote(ROLE_SEGMENTER, registered.ref)
    except (ModelStoreError, ValueError, FileNotFoundError) as error:
        _fail(str(error))
        return
    typer.echo(f"imported {registered.ref} (sha256 {registered.manifest.sha256}) into {registered.folder}")


# --------------------------------------------------------------------------------------------
# train / evaluate


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def evaluate() -> None:  # replaced below once training.evaluation lands
    """Evaluate a classifier version."""
