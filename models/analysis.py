"""The node's one entry point into the ML core: :func:`analyze` and :func:`analyze_policies`.

For one radiograph the work is:

1. **Segment once.** MedSAM (or a small SAM variant) embeds the image ONCE; both lungs are
   decoded from that one embedding with automatic box prompts (see :mod:`models.segmenter`).
2. **Per policy:** apply the mask policy (:func:`models.policies.apply_policy`), classify with
   the policy's active classifier (policies that share a classifier version are classified in one
   batch), derive No Finding (:func:`models.classifier.no_finding_score`), decide each finding with
   the operating thresholds stored with the classifier, and locate the findings at or above
   threshold (class activation maps -> :class:`models.result.FindingRegion`). Probabilities and
   activation maps come from one forward pass of the classifier.

Failed segmentation
-------------------
When the segmenter rejects its masks (``result.segmentation.ok is False``; the reason is in
``result.segmentation.failure_reason``, the masks are empty), a result is still returned for every
policy, so that the failure is recorded. For the masked policies (``loose``, ``tight``) the
classifier is NOT run: ``probabilities``, ``decisions`` and ``regions`` are empty dicts and
``no_finding`` is ``nan``; :func:`classifier_skipped` tells such a result apart and
:data:`SKIP_REASON_SEGMENTATION_FAILED` is the reason to record. The ``original`` policy needs no
masks and is classified as usual.

Timings
-------
``result.timings`` holds seconds per stage: ``preprocess``, ``image_encoder``, ``mask_decoder``
(prompt encoder, mask decoder over the box refinement rounds, post-processing and the plausibility
check) — these three are per image, shared by every policy of one call, and repeated in each
result — then ``policy``, ``classifier`` and ``regions`` for that policy (a batched forward pass is
split evenly among the policies it served; ``regions`` is the turning of its activation maps into
ellipses, no second forward pass).

Example::

    import models
    result = models.analyze(image, (0.143, 0.143), "loose")   # embedded demo models
    bundle = models.load_models(Path("var/models"), "auto")     # once per worker
    results = models.analyze_policies(image, None, ["loose", "original"], bundle=bundle)
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence

import numpy as np

from models.classifier import decide, no_finding_score, regions_from_maps
from models.labels import FINDINGS
from models.loading import ModelBundle, load_models
from models.policies import MaskPolicy, apply_policy, parse_policy
from models.result import AnalysisResult, FindingRegion

logger = logging.getLogger(__name__)

#: Why a policy's classifier was not run (to be recorded by the node).
SKIP_REASON_SEGMENTATION_FAILED = "lung segmentation failed; masked policies are not classified"

#: Stages reported in ``AnalysisResult.timings``, in pipeline order.
STAGES: tuple[str, ...] = ("preprocess", "image_encoder", "mask_decoder", "policy", "classifier", "regions")

_default_bundle: ModelBundle | None = None
_default_lock = threading.Lock()


def default_bundle() -> ModelBundle:
    """The bundled demo models on the best device, loaded on first use and kept for the process."""
    global _default_bundle
    with _default_lock:
        if _default_bundle is None:
            _default_bundle = load_models(None, "auto")
        return _default_bundle


def classifier_skipped(result: AnalysisResult) -> bool:
    """True when the classifier was not run for this result (failed segmentation, masked policy)."""
    return not result.probabilities


def _check_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"analyze takes one grey radiograph of shape (H, W); got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"analyze takes a float image scaled to [0, 1] (node.processing turns pixel data into it); got dtype {array.dtype}"
        )
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError("image holds NaN or infinite pixels; replace them before analysis")
    low, high = float(array.min()), float(array.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(f"image must be scaled to [0, 1]; got values in [{low:.4g}, {high:.4g}]")
    return array


def analyze_policies(
    image: np.ndarray,
    pixel_spacing_mm: tuple[float, float] | None,
    policies: Sequence[str],
    *,
    bundle: ModelBundle | None = None,
) -> list[AnalysisResult]:
    """Analyse one radiograph under several mask policies from ONE segmentation.

    Parameters
    ----------
    image : (H, W) float32 in [0, 1]
        Grey radiograph in display orientation (PA: the patient's left lung on the image's right);
        dense = bright (MONOCHROME2 after the modality and VOI LUTs).
    pixel_spacing_mm : (row_mm, column_mm) or None
        Spacing of the image's pixels; ``None`` uses the policies' documented fallback.
    policies : sequence of ``"original"``, ``"loose"``, ``"tight"`` (duplicates are dropped).
    bundle : the loaded models; default the bundled demo models (:func:`default_bundle`).

    Returns
    -------
    list of AnalysisResult, one per policy, in the order given. See the module docstring for a
    failed segmentation and for ``timings``.

    Raises
    ------
    ValueError
        A bad image, spacing or policy name.
    models.store.ModelNotFoundError
        No active classifier for a requested policy.
    """
    wanted = [parse_policy(p).value for p in dict.fromkeys(policies)]
    if not wanted:
        raise ValueError("give at least one mask policy (original, loose, tight)")
    grey = _check_image(image)
    if pixel_spacing_mm is not None and len(pixel_spacing_mm) != 2:
        raise ValueError(f"pixel spacing must be (row_mm, column_mm) or None; got {pixel_spacing_mm!r}")
    bundle = bundle or default_bundle()
    classifiers = {policy: bundle.classifier_for(policy) for policy in wanted}

    segmentation, seg_timings = bundle.segment(grey)
    segmenter_info = bundle.segmenter_version.info()

    prepared: dict[str, np.ndarray] = {}
    policy_time: dict[str, float] = {}
    for policy in wanted:
        if not segmentation.ok and policy != MaskPolicy.ORIGINAL.value:
            continue
        start = time.perf_counter()
        prepared[policy] = apply_policy(grey, segmentation.left, segmentation.right, policy, pixel_spacing_mm)
        policy_time[policy] = time.perf_counter() - start

    # One batch per classifier version (policies that share a version share a forward pass); the
    # same pass gives the probabilities and the class activation maps of the regions.
    probabilities: dict[str, np.ndarray] = {}
    activation_maps: dict[str, np.ndarray] = {}
    classifier_time: dict[str, float] = {}
    groups: dict[str, list[str]] = {}
    for policy in prepared:
        groups.setdefault(classifiers[policy][1].ref, []).append(policy)
    for members in groups.values():
        classifier = classifiers[members[0]][0]
        start = time.perf_counter()
        batch, cams = classifier.predict_with_maps([prepared[p] for p in members])
        elapsed = time.perf_counter() - start
        for row, maps, policy in zip(batch, cams, members):
            probabilities[policy] = row
            activation_maps[policy] = maps
            classifier_time[policy] = elapsed / len(members)

    results: list[AnalysisResult] = []
    for policy in wanted:
        classifier, version = classifiers[policy]
        thresholds = dict(version.manifest.thresholds)
        timings = dict(seg_timings)
        probs: dict[str, float] = {}
        decisions: dict[str, bool] = {}
        regions: dict[str, FindingRegion] = {}
        no_finding = math.nan
        regions_time = 0.0
        if policy in probabilities:
            probs = {label: float(p) for label, p in zip(classifier.labels, probabilities[policy])}
            probs = {label: probs[label] for label in FINDINGS}
            no_finding = float(no_finding_score(probs))
            decisions = decide(probs, thresholds)
            positive = [label for label in FINDINGS if decisions[label]]
            start = time.perf_counter()
            if positive:
                regions = regions_from_maps(
                    activation_maps[policy], classifier.labels, classifier.config.input_size, grey.shape, positive
                )
            regions_time = time.perf_counter() - start
        else:
            logger.info("policy %s not classified: %s (%s)", policy, SKIP_REASON_SEGMENTATION_FAILED, segmentation.failure_reason)
        timings.update(
            policy=policy_time.get(policy, 0.0), classifier=classifier_time.get(policy, 0.0), regions=regions_time
        )
        results.append(
            AnalysisResult(
                policy=policy,
                segmentation=segmentation,
                probabilities=probs,
                no_finding=no_finding,
                thresholds=thresholds,
                decisions=decisions,
                regions=regions,
                segmenter=segmenter_info,
                classifier=version.info(),
                timings=timings,
            )
        )
    return results


def analyze(
    image: np.ndarray,
    pixel_spacing_mm: tuple[float, float] | None,
    policy: str,
    *,
    bundle: ModelBundle | None = None,
) -> AnalysisResult:
    """Analyse one radiograph under one mask policy.

    Same as ``analyze_policies(image, pixel_spacing_mm, [policy], bundle=bundle)[0]``; see
    :func:`analyze_policies` for the parameters, and the module docstring for a failed
    segmentation and the timings.
    """
    return analyze_policies(image, pixel_spacing_mm, [policy], bundle=bundle)[0]
