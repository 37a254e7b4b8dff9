"""cxr-node commands: admin — ``models``, ``train``, ``evaluate`` (see node/cli/__init__.py).

With :mod:`node.cli.demo`, this is the only module of :mod:`node` that reaches :mod:`training`
(imported inside the commands that need it, so that ``serve`` never loads training code). The
``train`` and ``evaluate`` commands are thin: they read the options into a spec of
:mod:`training.recipes`, call the recipe, and print what it returns.

The model store is ``CXR_NODE_MODEL_DIR`` or ``<CXR_NODE_DATA_DIR>/models`` (writable), then the
bundled demo store (read-only). Commands::

    cxr-node models list [--json]
    cxr-node models show NAME_OR_VERSION [--json]
    cxr-node models verify [--json]
    cxr-node models promote ROLE NAME:VERSION [--policy P]
    cxr-node models build-demo [--out DIR]
    cxr-node models import-medsam PATH [--version V]
    cxr-node train segmenter [--data phantoms] [--steps N] ...
    cxr-node train classifier --policy P [--backbone B] [--data phantoms|nih --nih-root DIR] ...
    cxr-node evaluate --classifier NAME:VERSION [--data phantoms|nih] --out DIR
"""

from __future__ import annotations

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
from node.cli.kit import fail, print_json, settings_or_exit

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
    settings = settings_or_exit()
    return settings.model_dir if settings.model_dir is not None else settings.data_dir / "models"


def _store() -> ModelStore:
    return ModelStore(store_root_from_settings())


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
        fail(str(error))
    if as_json:
        print_json({"root": str(store.root), "fallback": str(store.fallback), "versions": [_describe(v, marks) for v in versions]}, sort_keys=True)
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
        fail(str(error))
    data = _describe(version, marks)
    if as_json:
        print_json(data, sort_keys=True)
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
        print_json({"ok": not bad, "checked": [{"ref": ref, "ok": error is None, "error": error} for ref, error in report]}, sort_keys=True)
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
        fail(str(error))
    what = f"classifier for policy {version.manifest.policy}" if role == ROLE_CLASSIFIER else role
    typer.echo(f"{version.ref} is now the active {what}")


@models_app.command("build-demo")
def models_build_demo(
    out: Optional[Path] = typer.Option(None, "--out", help="Store root to write (default: the bundled models/demo_store)."),
    seed: int = typer.Option(0, "--seed", help="Base seed (the committed demo store uses 0)."),
    check: bool = typer.Option(False, "--check", help="Build into a temporary folder and compare with --out (exit 1 on a difference)."),
    incoming: Optional[Path] = typer.Option(None, "--incoming", exists=True, file_okay=False, help="Package finished runs of the demo recipes from this folder instead of training."),
) -> None:
    """Rebuild the demo models deterministically with the project's own training code (NOT FOR CLINICAL USE)."""
    import tempfile

    from training.build_demo import build_demo_store, compare_stores
    from models.store import DEMO_STORE_DIR

    _configure_logging()
    try:
        if check:
            with tempfile.TemporaryDirectory(prefix="demo-check-") as tmp:
                problems = compare_stores(build_demo_store(Path(tmp) / "store", seed=seed), out or DEMO_STORE_DIR)
            for problem in problems:
                typer.echo(problem)
            typer.echo("identical to the committed demo store" if not problems else f"{len(problems)} difference(s)")
            if problems:
                raise typer.Exit(1)
            return
        root = build_demo_store(out, seed=seed, incoming=incoming)
    except (ModelStoreError, ValueError) as error:
        fail(str(error))
    typer.echo(f"demo models written to {root}")


@models_app.command("import-medsam")
def models_import_medsam(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="An official medsam_vit_b.pth."),
    version: Optional[str] = typer.Option(None, "--version", help="Version name (default: date and sha256 prefix)."),
    name: str = typer.Option("medsam_vit_b", "--name", help="Model name in the store."),
    promote: bool = typer.Option(False, "--promote", help="Also make it the active segmenter."),
) -> None:
    """Register an official MedSAM ViT-B checkpoint as a segmenter version (loads strictly first)."""
    from models.loading import import_medsam

    _configure_logging()
    try:
        registered = import_medsam(_store(), path, name=name, version=version)
        if promote:
            _store().promote(ROLE_SEGMENTER, registered.ref)
    except (ModelStoreError, ValueError, FileNotFoundError) as error:
        fail(str(error))
    typer.echo(f"imported {registered.ref} (sha256 {registered.manifest.sha256}) into {registered.folder}")


# --------------------------------------------------------------------------------------------
# train / evaluate


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@train_app.command("segmenter")
def train_segmenter_command(
    architecture: str = typer.Option("sam_tiny", "--architecture", help="sam_tiny, sam_small or sam_vit_b."),
    data: str = typer.Option("phantoms", "--data", help="phantoms (generated on the fly)."),
    init: Optional[Path] = typer.Option(None, "--init", exists=True, dir_okay=False, help="State dict to fine-tune from (e.g. medsam_vit_b.pth)."),
    steps: int = typer.Option(1000, "--steps", min=1),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    held_out: int = typer.Option(20, "--held-out", min=1, help="Held-out phantoms for the Dice measured into the manifest."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Checkpoints (resumable); default <store>/_work/..."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name (default segmenter_<architecture>)."),
    version: Optional[str] = typer.Option(None, "--version", help="Version (default: UTC time)."),
    promote: bool = typer.Option(False, "--promote", help="Make it the active segmenter."),
) -> None:
    """Train a segmenter with the MedSAM recipe and register it in the model store."""
    from training.recipes import SegmenterSpec, train_segmenter

    _configure_logging()
    try:
        spec = SegmenterSpec(
            store_root=store_root_from_settings(), architecture=architecture, data=data, init=init, steps=steps,
            batch_size=batch_size, seed=seed, device=device, held_out=held_out, work_dir=work_dir, name=name,
            version=version, promote=promote,
        )
        run = train_segmenter(spec)
    except (ModelStoreError, ValueError) as error:
        fail(str(error))
    typer.echo(f"trained {run.version.ref}: held-out Dice left {run.metrics['mean_dice_left']:.3f}, "
               f"right {run.metrics['mean_dice_right']:.3f}")


@train_app.command("classifier")
def train_classifier_command(
    policy: str = typer.Option(..., "--policy", help="original, loose or tight."),
    backbone: str = typer.Option("resnet50", "--backbone", help="resnet50, densenet121, efficientnet_b0, resnet18, cxr_tiny."),
    data: str = typer.Option("phantoms", "--data", help="phantoms or nih."),
    nih_root: Optional[Path] = typer.Option(None, "--nih-root", help="NIH ChestX-ray14 folder (Data_Entry_2017.csv, images, split lists)."),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    input_size: int = typer.Option(224, "--input-size", min=32),
    image_size: int = typer.Option(256, "--image-size", min=32, help="Side the images are read at (phantoms: generated at)."),
    count: int = typer.Option(2400, "--count", min=10, help="Training phantoms (phantoms only; val/test get a sixth each)."),
    seed: int = typer.Option(0, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: CUDA when available)."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Checkpoints (resumable)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name (default classifier_<backbone>_<policy>)."),
    version: Optional[str] = typer.Option(None, "--version", help="Version (default: UTC time)."),
    promote: bool = typer.Option(False, "--promote", help="Make it the active classifier of its policy."),
) -> None:
    """Train a classifier under one mask policy and register it in the model store."""
    from training.recipes import ClassifierSpec, train_classifier

    _configure_logging()
    try:
        spec = ClassifierSpec(
            store_root=store_root_from_settings(), policy=policy, backbone=backbone, data=data, nih_root=nih_root,
            epochs=epochs, batch_size=batch_size, input_size=input_size, image_size=image_size, count=count,
            seed=seed, device=device, work_dir=work_dir, name=name, version=version, promote=promote,
        )
        run = train_classifier(spec)
    except (ModelStoreError, ValueError, FileNotFoundError) as error:
        fail(str(error))
    macro = run.metrics.get("test.macro_auroc")
    typer.echo(f"trained {run.version.ref} (policy {spec.policy})" + (f": held-out macro AUROC {macro:.3f}" if macro is not None else ""))


def evaluate(
    classifier: str = typer.Option(..., "--classifier", help="Classifier version (name:version); its mask policy is evaluated."),
    out: Path = typer.Option(..., "--out", file_okay=False, help="Folder for report.json and the ROC PNGs."),
    segmenter: Optional[str] = typer.Option(None, "--segmenter", help="Segmenter version (default: the active one)."),
    data: str = typer.Option("phantoms", "--data", help="phantoms or nih."),
    nih_root: Optional[Path] = typer.Option(None, "--nih-root", help="NIH ChestX-ray14 folder (official test list)."),
    count: Optional[int] = typer.Option(200, "--count", min=1, help="Images (phantoms; for nih: the first N of the test list)."),
    image_size: int = typer.Option(256, "--image-size", min=32, help="Phantom side / NIH read size in pixels."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=10, help="Bootstrap resamples for the AUROC intervals."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Evaluate a classifier version end to end (segmenter masks, policy, classifier): AUROC with CIs, Dice, ROC PNGs."""
    from training.model_evaluation import REPORT_NAME
    from training.recipes import EvaluationSpec, evaluate_models

    _configure_logging()
    try:
        report = evaluate_models(EvaluationSpec(
            store_root=store_root_from_settings(), classifier=classifier, out=out, segmenter=segmenter, data=data,
            nih_root=nih_root, count=count, image_size=image_size, bootstrap=bootstrap, seed=seed, device=device,
            progress=not as_json,
        ))
    except (ModelStoreError, ValueError, FileNotFoundError) as error:
        fail(str(error))
    if as_json:
        typer.echo((out / REPORT_NAME).read_text())
        return
    cls = report["classification"]
    macro = cls["macro_auroc"]
    typer.echo(f"{report['classifier']['ref']} ({report['policy']}) on {cls['n_images']} images; report in {out / REPORT_NAME}")
    for label, estimate in cls["labels"].items():
        if estimate["auroc"] is None:
            typer.echo(f"  {label:<10} AUROC undefined ({estimate['reason']})")
        else:
            typer.echo(f"  {label:<10} AUROC {estimate['auroc']:.3f} [{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]")
    if macro["auroc"] is not None:
        typer.echo(f"  macro      AUROC {macro['auroc']:.3f} [{macro['ci_low']:.3f}, {macro['ci_high']:.3f}]")
    nf = cls["no_finding"]
    if nf["auroc"] is not None:
        typer.echo(f"  No Finding AUROC {nf['auroc']:.3f}")
    if "segmentation" in report:
        seg = report["segmentation"]
        typer.echo(f"  lung Dice  left {seg['left']['mean']:.3f}, right {seg['right']['mean']:.3f} (mean)")
    typer.echo(f"  not classified (failed segmentation): {report['not_classified']['count']}")
