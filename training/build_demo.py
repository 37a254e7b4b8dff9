"""Build the demo model store: the embedded default models, made by the project's own training code.

``cxr-node models build-demo [--out DIR]`` (or ``python -m training.build_demo``) trains, from
fixed seeds on synthetic phantoms:

- the demo lung segmenter (``sam_tiny``, :func:`training.segmenter.train_demo_segmenter`);
- one demo classifier per mask policy ``original``, ``loose``, ``tight`` (``cxr_tiny``,
  :func:`training.classifier.train_demo_classifier`);

and writes them as model-store versions (manifest, weights, ``MODEL_CARD.md`` saying NOT FOR
CLINICAL USE) with an ``active.json`` naming them. Without ``--out`` it replaces the bundled store
``models/demo_store``; the committed store is exactly what this command builds (same seeds, same
versions, a fixed creation time, ``torch.set_num_threads(DEMO_THREADS)``), on the same kind of CPU:
floating-point results of training can differ between CPU instruction sets, in which case
``--check`` reports which weights differ.

``--check`` builds into a temporary folder and compares every version's sha256 with the committed
store's, exiting 1 on a difference.

Time on the 2-core development machine while other heavy jobs ran (load average 5-12): the
segmenter recipe 469 s, each classifier recipe 880-920 s (the three ran side by side, one
thread each); run one after the other by this command, expect about 30-50 minutes. Packaging
finished runs (``--incoming``) takes seconds. The committed store was packaged from the runs of
the demo recipes (seed 0, one thread), committed by their authors under ``_incoming``; a full
``--check`` rebuild was not run before the deadline.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from models.policies import MaskPolicy
from models.store import ACTIVE_FILENAME, DEMO_STORE_DIR, ROLE_CLASSIFIER, ROLE_SEGMENTER, ModelStore
from training.export import export_classifier, export_segmenter

logger = logging.getLogger(__name__)

#: Version string and creation time of every demo model (fixed, so that a rebuild is identical).
DEMO_VERSION = "2026.11.25"
DEMO_CREATED_AT = "2026-11-25T00:00:00+00:00"
#: Demo weights are stored in half precision (loaded back into float32 networks) to keep the
#: repository small; the tests measure the stored models, not the float32 ones.
DEMO_WEIGHTS_DTYPE = torch.float16
#: CPU threads of the classifier runs and of the segmenter run (the weights depend on the thread
#: count: floating-point summation order). The recipes run single-threaded, which is also fastest
#: on a 2-core machine busy with other work (see train_demo_segmenter).
DEMO_THREADS = 1
DEMO_SEGMENTER_THREADS = 1
DEMO_SEGMENTER_NAME = "demo_sam_tiny"
#: Folder inside the demo store where finished training runs may be dropped (never committed).
INCOMING_DIRNAME = "_incoming"
DEMO_CLASSIFIER_NAME = "demo_cxr_tiny_{policy}"

DEMO_INTENDED_USE_SEGMENTER = (
    "Demonstration of the lung segmentation pipeline on synthetic chest phantoms. Trained on synthetic "
    "phantoms only; NOT FOR CLINICAL USE: it has never seen a real radiograph."
)
DEMO_INTENDED_USE_CLASSIFIER = (
    "Demonstration of five-finding classification (Mass, Nodule, Pneumonia, Edema, Fibrosis) under the "
    "'{policy}' lung-mask policy on synthetic chest phantoms. Trained on synthetic phantoms only; NOT FOR "
    "CLINICAL USE: its probabilities say nothing about real patients."
)


def _find_incoming(incoming: Path, marker: str, policy: str | None = None) -> Path:
    """The run folder under ``incoming`` holding ``marker`` (and, for classifiers, trained under ``policy``)."""
    for path in sorted(Path(incoming).rglob(marker)):
        if policy is None or json.loads(path.read_text()).get("policy") == policy:
            return path.parent
    what = f"a classifier run for policy {policy!r}" if policy else "a segmenter run"
    raise FileNotFoundError(f"{incoming} holds no {what} (a folder with {marker}); train it or build without --incoming")


def _check_recipe(source: Path, expected: dict[str, Any], found: dict[str, Any]) -> None:
    """Refuse a run made with another seed or thread count than this command uses."""
    if found != expected:
        raise ValueError(
            f"{source} was trained with {found}, but build-demo trains with {expected}; the demo store must be "
            "exactly what build-demo builds — retrain with the demo recipe"
        )


def _write_segmenter(root: Path, work: Path, seed: int, progress: bool, incoming: Path | None = None) -> str:
    from training.segmenter import DEMO_SUMMARY_NAME, WEIGHTS_NAME, train_demo_segmenter

    if incoming is not None:
        folder = _find_incoming(incoming, DEMO_SUMMARY_NAME)
    else:
        folder = Path(train_demo_segmenter(work / "segmenter", seed=seed, threads=DEMO_SEGMENTER_THREADS, progress=progress)).parent
    summary = json.loads((folder / DEMO_SUMMARY_NAME).read_text())
    _check_recipe(folder / DEMO_SUMMARY_NAME, {"seed": seed, "threads": DEMO_SEGMENTER_THREADS},
                  {"seed": summary.get("seed"), "threads": summary.get("threads")})
    recipe = {k: summary[k] for k in ("seed", "steps", "batch_size", "lr") if k in summary}
    version = export_segmenter(
        root,
        folder / WEIGHTS_NAME,
        architecture=summary["architecture"],
        name=DEMO_SEGMENTER_NAME,
        version=DEMO_VERSION,
        metrics={"held_out": summary.get("held_out", {})},
        training_data={**summary.get("training_data", {}), "recipe": recipe},
        intended_use=DEMO_INTENDED_USE_SEGMENTER,
        clinical_use=False,
        created_at=DEMO_CREATED_AT,
        float_dtype=DEMO_WEIGHTS_DTYPE,
    )
    return version.ref


def _write_classifier(root: Path, work: Path, policy: str, seed: int, progress: bool, incoming: Path | None = None) -> str:
    if incoming is not None:
        folder = _find_incoming(incoming, "classifier.json", policy)
    else:
        from training.classifier import train_demo_classifier

        torch.set_num_threads(DEMO_THREADS)  # the segmenter run may have left another count
        folder = Path(train_demo_classifier(work / f"classifier_{policy}", policy, seed=seed, progress=progress))
    training = json.loads((folder / "classifier.json").read_text()).get("training", {})
    _check_recipe(folder / "classifier.json", {"seed": seed, "threads": DEMO_THREADS},
                  {"seed": training.get("seed"), "threads": training.get("torch_threads")})
    version = export_classifier(
        root,
        folder,
        name=DEMO_CLASSIFIER_NAME.format(policy=policy),
        version=DEMO_VERSION,
        intended_use=DEMO_INTENDED_USE_CLASSIFIER.format(policy=policy),
        clinical_use=False,
        created_at=DEMO_CREATED_AT,
        float_dtype=DEMO_WEIGHTS_DTYPE,
    )
    return version.ref


def render_readme(store: ModelStore) -> str:
    """``README.md`` of the demo store (deterministic: from the manifests alone)."""
    lines = [
        "# Bundled demo models — NOT FOR CLINICAL USE",
        "",
        "Built by `cxr-node models build-demo` (module `training.build_demo`) from synthetic phantoms with",
        "the project's own training code; do not edit by hand. Rebuild and compare with",
        "`cxr-node models build-demo --check`. These are the embedded default models of cxr-node; every",
        "result they produce is marked as not for clinical use.",
        "",
        "| role | ref | architecture | policy | held-out metrics | Device UID |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    active = store.active()
    for version in store.list_versions():
        m = version.manifest
        keys = [k for k in sorted(m.metrics) if k.endswith(("macro_auroc", "no_finding_auroc", "mean_dice_left", "mean_dice_right"))]
        metrics = ", ".join(f"{k.split('.')[-1]} {m.metrics[k]:.3f}" for k in keys) or "-"
        lines.append(f"| {m.role} | `{m.ref}` | {m.architecture} | {m.policy or '-'} | {metrics} | `{m.device_uid}` |")
    lines += ["", f"Active: `{json.dumps(active, sort_keys=True)}`", ""]
    return "\n".join(lines)


def build_demo_store(
    out: Path | None = None, *, seed: int = 0, progress: bool = True, incoming: Path | None = None
) -> Path:
    """Train the demo models and write them as a complete store root at ``out``.

    Parameters
    ----------
    out : the store root to (re)write; default the bundled ``models/demo_store``. Its previous
        content is replaced only once the new store is complete.
    seed : base seed of every training run (the committed store uses 0).
    incoming : instead of training, take finished runs of the same demo recipes from this folder
        (``train_demo_segmenter``'s output folder with ``segmenter.json``, and
        ``train_demo_classifier``'s with ``classifier.json``, one per policy).

    Returns
    -------
    Path : ``out``.
    """
    out = Path(out) if out is not None else DEMO_STORE_DIR
    threads = torch.get_num_threads()
    torch.set_num_threads(DEMO_THREADS)
    started = time.perf_counter()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="demo-build-") as tmp:
            work = Path(tmp) / "work"
            staging = Path(tmp) / "store"
            store = ModelStore(staging, fallback=None)
            seg_ref = _write_segmenter(staging, work, seed, progress, incoming)
            store.promote(ROLE_SEGMENTER, seg_ref)
            for policy in MaskPolicy:
                ref = _write_classifier(staging, work, policy.value, seed, progress, incoming)
                store.promote(ROLE_CLASSIFIER, ref, policy=policy.value)
            (staging / "README.md").write_text(render_readme(store), encoding="utf-8")
            problems = [(ref, error) for ref, error in store.verify() if error]
            if problems:
                raise RuntimeError(f"the demo store just built does not verify: {problems}")
            out.mkdir(parents=True, exist_ok=True)
            for child in out.iterdir():  # replace everything but a drop folder of finished runs
                if child.name != INCOMING_DIRNAME:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            shutil.copytree(staging, out, dirs_exist_ok=True)
    finally:
        torch.set_num_threads(threads)
    logger.info("demo store built at %s in %.0f s", out, time.perf_counter() - started)
    return out


def compare_stores(built: Path, committed: Path) -> list[str]:
    """Differences between two store roots: versions, weights sha256 and active entries."""
    a = {v.ref: v.manifest.sha256 for v in ModelStore(built, fallback=None).list_versions()}
    b = {v.ref: v.manifest.sha256 for v in ModelStore(committed, fallback=None).list_versions()}
    problems = [f"{ref}: only in {committed}" for ref in sorted(set(b) - set(a))]
    problems += [f"{ref}: only in the new build" for ref in sorted(set(a) - set(b))]
    problems += [f"{ref}: weights differ (sha256 {a[ref][:12]} vs {b[ref][:12]})" for ref in sorted(set(a) & set(b)) if a[ref] != b[ref]]
    if (built / ACTIVE_FILENAME).read_text() != (committed / ACTIVE_FILENAME).read_text():
        problems.append("active.json differs")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the demo model store (NOT FOR CLINICAL USE).")
    parser.add_argument("--out", type=Path, default=None, help="store root (default: models/demo_store)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="build into a temporary folder and compare with --out")
    parser.add_argument("--incoming", type=Path, default=None, help="finished demo training runs to package instead of training")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.check:
        committed = args.out or DEMO_STORE_DIR
        with tempfile.TemporaryDirectory(prefix="demo-check-") as tmp:
            built = build_demo_store(Path(tmp) / "store", seed=args.seed)
            problems = compare_stores(built, committed)
        for problem in problems:
            print(problem)
        print("identical" if not problems else f"{len(problems)} difference(s)")
        return 1 if problems else 0
    build_demo_store(args.out, seed=args.seed, incoming=args.incoming)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
