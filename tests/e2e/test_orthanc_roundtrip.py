"""End to end: Orthanc sends a study to ``cxr-node serve``; the SEG and SR come back into the study.

The whole way runs for real on loopback: Orthanc 1.10 (the PACS) holds a DX study, is asked
over REST to C-STORE it to a ``cxr-node serve`` subprocess (embedded default: SQLite,
in-process tasks, bundled demo models), and the node sends its outputs back to Orthanc, the
sender, listed in ``CXR_NODE_KNOWN_PACS``. The test then reads what Orthanc holds:

- the SEG and one SR per mask policy are in the SAME study, and each passes ``dciodvfy``;
- dcmqi's ``tid1500reader`` reads every SR, and its probabilities, thresholds and decisions
  equal the database's results (``cxr-node studies show --json``);
- highdicom reads the SEG back, and its masks equal the demo models' masks recomputed in this
  process from the same pixels;
- a lateral view and a hand radiograph in the study are skipped with their reasons;
- sending the study again, re-processing it after a late instance, and ``cxr-node resend``
  leave no duplicate objects in Orthanc (output UIDs are deterministic);
- Orthanc re-sending the WHOLE study, the node's own SEG and SRs included, succeeds, and the
  node stores them without re-opening the study: no new job, no new outputs (no loop).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from models.labels import FINDINGS, NO_FINDING
from node.outputs import codes
from tests.support.dicom_tools import dciodvfy_errors, read_tid1500
from tests.support.node_process import NodeProcess
from tests.support import polling
from tests.support.orthanc import OrthancServer
from tests.support.ports import free_port
from training.dicom_export import RadiographIdentity, write_radiograph
from training.phantoms import generate_phantom

pytestmark = pytest.mark.slow

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
POLICIES = ("loose", "original")
PHANTOM_SIZE = 256
DEADLINE_S = 180.0


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    return polling.wait_for(condition, what, timeout, interval=0.2)


@dataclass
class Roundtrip:
    pacs: OrthancServer
    node: NodeProcess
    study_uid: str
    sources: dict[str, Path]  # "pa", "lateral", "hand" -> file sent
    source_uids: dict[str, str]
    source_ids: list[str]  # Orthanc's identifiers of the source instances
    tmp: Path

    def outputs_in_pacs(self) -> dict[str, list[str]]:
        """SOP Instance UIDs of the node's outputs Orthanc holds in the study, by SOP class."""
        found: dict[str, list[str]] = {SEG_SOP_CLASS: [], COMPREHENSIVE_3D_SR: []}
        sources = set(self.source_uids.values())
        for instance in self.pacs.instances_of_study(self.study_uid):
            uid = instance["MainDicomTags"]["SOPInstanceUID"]
            if uid in sources:
                continue
            ds = self.pacs_dataset(uid)
            found.setdefault(str(ds.SOPClassUID), []).append(uid)
        return found

    def pacs_dataset(self, sop_instance_uid: str) -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(self.pacs.instance_file(sop_instance_uid)))

    def pacs_file(self, sop_instance_uid: str) -> Path:
        path = self.tmp / "from-pacs" / f"{sop_instance_uid}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(self.pacs.instance_file(sop_instance_uid))
        return path


def fresh_process_torch_threads() -> int:
    """``torch.get_num_threads()`` of a new interpreter (what ``cxr-node serve`` runs with)."""
    answer = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True, text=True, timeout=120, check=True
    )
    return int(answer.stdout.strip())


def _write_sources(directory: Path, study_uid: str) -> tuple[dict[str, Path], dict[str, str]]:
    phantom = generate_phantom(PHANTOM_SIZE, seed=4242, findings=["Nodule"])
    spacing = phantom.pixel_spacing_mm
    cases = {
        "pa": {"view_position": "PA", "body_part": "CHEST"},
        "lateral": {"view_position": "LL", "body_part": "CHEST"},
        "hand": {"view_position": "PA", "body_part": "HAND"},
    }
    paths: dict[str, Path] = {}
    uids: dict[str, str] = {}
    for name, kwargs in cases.items():
        identity = RadiographIdentity.new(study_uid)
        paths[name] = write_radiograph(directory / f"{name}.dcm", phantom.image, identity, pixel_spacing_mm=spacing, **kwargs)
        uids[name] = identity.sop_instance_uid
    return paths, uids


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Roundtrip]:
    tmp = tmp_path_factory.mktemp("e2e")
    node_port = free_port()
    pacs = OrthancServer(tmp / "orthanc", aet="ORTHANC", modalities={"CXRNODE": ("CXRNODE", "127.0.0.1", node_port)})
    pacs.start()
    node = NodeProcess(
        tmp / "var",
        port=node_port,
        env={
            "CXR_NODE_KNOWN_PACS": f"ORTHANC@127.0.0.1:{pacs.dicom_port}",
            "CXR_NODE_MASK_POLICY_BY_AET": "ORTHANC=" + "+".join(POLICIES),
            "CXR_NODE_DEVICE": "cpu",
            "CXR_NODE_DELIVERY_BACKOFF_SECONDS": "0.5",
            # A model store of one's own may be tested instead of the bundled demo models.
            **({"CXR_NODE_MODEL_DIR": os.environ["CXR_NODE_MODEL_DIR"]} if "CXR_NODE_MODEL_DIR" in os.environ else {}),
        },
    )
    node.start()
    study_uid = RadiographIdentity.new().study_instance_uid
    sources, source_uids = _write_sources(tmp / "sources", study_uid)
    try:
        source_ids = []
        for path in sources.values():
            answer = pacs.upload(path)
            assert answer["Status"] == "Success"
            source_ids.append(answer["ID"])
        pacs.store_to_modality("CXRNODE", pacs.study_id(study_uid))
        yield Roundtrip(pacs, node, study_uid, sources, source_uids, source_ids, tmp)
    finally:
        node.stop()
        pacs.stop(graceful=False)


@pytest.fixture(scope="module")
def delivered(roundtrip: Roundtrip) -> dict[str, Any]:
    """The node's report once the study is delivered, and the outputs Orthanc then holds."""
    report = roundtrip.node.wait_for_study(roundtrip.study_uid, "delivered", timeout=DEADLINE_S)
    return report


def _ok_results(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["results"] if r["status"] == "ok"]


def test_seg_and_one_sr_per_policy_arrive_back_in_the_same_study(roundtrip: Roundtrip, delivered: dict[str, Any]) -> None:
    in_pacs = roundtrip.outputs_in_pacs()
    assert len(in_pacs[SEG_SOP_CLASS]) == 1
    assert len(in_pacs[COMPREHENSIVE_3D_SR]) == len(POLICIES)
    recorded = {o["sop_instance_uid"]: o for o in delivered["outputs"]}
    assert set(recorded) == set(in_pacs[SEG_SOP_CLASS]) | set(in_pacs[COMPREHENSIVE_3D_SR])
    for uid in recorded:
        ds = roundtrip.pacs_dataset(uid)
        assert ds.StudyInstanceUID == roundtrip.study_uid
        assert ds.SeriesInstanceUID != pydicom.dcmread(roundtrip.sources["pa"]).SeriesInstanceUID  # a new series
    for output in delivered["outputs"]:
        (delivery,) = output["deliveries"]
        assert delivery["destination"] == f"ORTHANC@127.0.0.1:{roundtrip.pacs.dicom_port}"
        assert delivery["state"] == "delivered" and delivery["last_status"] == 0
        assert delivery["attempt_log"][-1]["status"] == 0
    assert delivered["delivery"]["by_state"] == {"delivered": 1 + len(POLICIES)}


def test_every_output_in_the_pacs_passes_dciodvfy_and_equals_the_kept_file(
    roundtrip: Roundtrip, delivered: dict[str, Any]
) -> None:
    for output in delivered["outputs"]:
        from_pacs = roundtrip.pacs_file(output["sop_instance_uid"])
        assert dciodvfy_errors(from_pacs) == [], output["kind"]
        kept = roundtrip.node.data_dir / "outputs" / output["path"]
        assert pydicom.dcmread(kept) == pydicom.dcmread(from_pacs)


def test_tid1500reader_findings_and_probabilities_equal_the_database(
    roundtrip: Roundtrip, delivered: dict[str, Any]
) -> None:
    results = {r["policy"]: r for r in _ok_results(delivered) if r["sop_instance_uid"] == roundtrip.source_uids["pa"]}
    assert set(results) == set(POLICIES)
    srs = [o for o in delivered["outputs"] if o["kind"] == "SR"]
    assert {o["policy"] for o in srs} == set(POLICIES)
    for output in srs:
        result = results[output["policy"]]
        report = read_tid1500(roundtrip.pacs_file(output["sop_instance_uid"]), roundtrip.tmp / f"{output['policy']}.json")
        by_finding = {group["Finding"]["CodeValue"]: group for group in report["Measurements"]}
        for label in (*FINDINGS, NO_FINDING):
            group = by_finding[codes.FINDING_CODES[label].value]
            items = {item["quantity"]["CodeMeaning"]: item for item in group["measurementItems"]}
            expected = result["no_finding"] if label == NO_FINDING else result["probabilities"][label]
            assert float(items[f"{label} probability"]["value"]) / 100 == pytest.approx(expected, abs=1e-6)
            if label != NO_FINDING:
                assert float(items["Threshold Value"]["value"]) / 100 == pytest.approx(result["thresholds"][label], abs=1e-6)
                decision = next(
                    e["conceptValue"]["CodeMeaning"]
                    for e in group["qualitativeEvaluations"]
                    if e["conceptCode"]["CodeValue"] == codes.ABOVE_OPERATING_THRESHOLD.value
                )
                assert decision == ("Yes" if result["decisions"][label] else "No")
        observer = report["observerContext"]
        assert observer["DeviceObserverUID"] == result["model_versions"]["classifier"]["device_uid"]


def test_the_seg_masks_read_back_equal_the_models_masks(roundtrip: Roundtrip, delivered: dict[str, Any]) -> None:
    import models
    from node.processing.pixels import model_input

    (seg_output,) = [o for o in delivered["outputs"] if o["kind"] == "SEG"]
    seg = hd.seg.segread(roundtrip.pacs_file(seg_output["sop_instance_uid"]))
    source = pydicom.dcmread(roundtrip.sources["pa"])
    prepared = model_input(source)
    model_dir = Path(roundtrip.node.env.get("CXR_NODE_MODEL_DIR", roundtrip.node.data_dir / "models"))
    bundle = models.load_models(model_dir, "cpu")
    # The node computed with torch's default thread count (a fresh process); do the same, since
    # float reductions may round differently with another count.
    threads = torch.get_num_threads()
    torch.set_num_threads(fresh_process_torch_threads())
    try:
        (expected,) = models.analyze_policies(prepared.image, prepared.pixel_spacing_mm, ["original"], bundle=bundle)
    finally:
        torch.set_num_threads(threads)
    versions = next(r for r in _ok_results(delivered))["model_versions"]
    assert expected.segmenter.device_uid == versions["segmenter"]["device_uid"]
    for number, side in ((1, "left"), (2, "right")):
        mask = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[number]
        )[0, :, :, 0].astype(bool)
        want = getattr(expected.segmentation, side)
        assert mask.shape == want.shape
        assert np.array_equal(mask, want), f"{side} lung differs in {int((mask != want).sum())} pixels"
        assert mask.sum() > 0


def test_lateral_and_non_chest_images_are_skipped_with_their_reasons(roundtrip: Roundtrip, delivered: dict[str, Any]) -> None:
    by_image: dict[str, set[tuple[str, str | None]]] = {}
    for result in delivered["results"]:
        by_image.setdefault(result["sop_instance_uid"], set()).add((result["status"], result["reason"]))
    (lateral,) = by_image[roundtrip.source_uids["lateral"]]
    (hand,) = by_image[roundtrip.source_uids["hand"]]
    assert lateral[0] == "skipped" and "view position LL" in (lateral[1] or "")
    assert hand[0] == "skipped" and "body part HAND" in (hand[1] or "")
    assert by_image[roundtrip.source_uids["pa"]] == {("ok", None)}
    pa = [r for r in delivered["results"] if r["sop_instance_uid"] == roundtrip.source_uids["pa"]]
    for result in pa:
        assert set(result["probabilities"]) == set(FINDINGS)
        assert {"decode", "image_encoder", "mask_decoder", "classifier", "build_sr", "record"} <= set(result["timings"])
        assert result["model_versions"]["classifier"]["clinical_use"] is False


def test_sending_again_reprocessing_and_resend_leave_no_duplicates_in_the_pacs(
    roundtrip: Roundtrip, delivered: dict[str, Any], tmp_path: Path
) -> None:
    pacs, node = roundtrip.pacs, roundtrip.node
    first_outputs = roundtrip.outputs_in_pacs()
    count = pacs.instance_count()

    # 1. The same study sent again: duplicates of stored instances change nothing. (Only the
    #    radiographs here; the whole study, with the node's SEG and SRs, is re-sent in the next test.)
    pacs.store_to_modality("CXRNODE", roundtrip.source_ids)
    report = node.study(roundtrip.study_uid)
    assert report["study"]["generation"] == 0 and report["study"]["state"] == "delivered"
    assert pacs.instance_count() == count

    # 2. A late frontal image re-opens the study: both images are processed again (generation 1);
    #    the first image's SEG and SRs come back with the same UIDs, so only the new image's are added.
    late = RadiographIdentity.new(roundtrip.study_uid)
    phantom = generate_phantom(PHANTOM_SIZE, seed=4343)
    late_path = write_radiograph(tmp_path / "late.dcm", phantom.image, late, pixel_spacing_mm=phantom.pixel_spacing_mm)
    uploaded = pacs.upload(late_path)
    pacs.store_to_modality("CXRNODE", uploaded["ID"])
    wait_for(
        lambda: (r := node.study(roundtrip.study_uid)) and r["study"]["generation"] == 1 and r["study"]["state"] == "delivered",
        "the re-opened study to be delivered again",
    )
    report = node.study(roundtrip.study_uid)
    jobs = {job["generation"]: job["id"] for job in report["jobs"]}
    second_job = [o for o in report["outputs"] if o["job_id"] == jobs[1]]
    first_job = [o for o in report["outputs"] if o["job_id"] == jobs[0]]
    assert {o["sop_instance_uid"] for o in first_job} <= {o["sop_instance_uid"] for o in second_job}
    assert len(second_job) == 2 * (1 + len(POLICIES))
    now = roundtrip.outputs_in_pacs()
    assert set(first_outputs[SEG_SOP_CLASS]) <= set(now[SEG_SOP_CLASS])
    assert len(now[SEG_SOP_CLASS]) == 2 and len(now[COMPREHENSIVE_3D_SR]) == 2 * len(POLICIES)
    count = pacs.instance_count()
    assert count == len(roundtrip.sources) + 1 + 2 * (1 + len(POLICIES))

    # 3. cxr-node resend: the same objects again, nothing new in the PACS.
    resent = node.cli("resend", roundtrip.study_uid, "--json")
    assert resent.returncode == 0, resent.stderr
    document = json.loads(resent.stdout)
    assert sorted(document["objects"]) == sorted(o["sop_instance_uid"] for o in second_job)
    assert document["destinations"] == {f"ORTHANC@127.0.0.1:{pacs.dicom_port}": {"delivered": len(second_job)}}
    assert pacs.instance_count() == count
    report = node.study(roundtrip.study_uid)
    for output in (o for o in report["outputs"] if o["job_id"] == jobs[1]):
        (delivery,) = output["deliveries"]
        assert [a["status"] for a in delivery["attempt_log"]][-2:] == [0, 0]


def test_the_whole_study_with_the_nodes_outputs_sent_back_is_stored_and_not_reprocessed(
    roundtrip: Roundtrip, delivered: dict[str, Any]
) -> None:
    pacs, node = roundtrip.pacs, roundtrip.node
    before = node.study(roundtrip.study_uid)
    assert before["study"]["state"] == "delivered"
    outputs_in_pacs = roundtrip.outputs_in_pacs()
    returned = set(outputs_in_pacs[SEG_SOP_CLASS]) | set(outputs_in_pacs[COMPREHENSIVE_3D_SR])
    assert outputs_in_pacs[SEG_SOP_CLASS] and outputs_in_pacs[COMPREHENSIVE_3D_SR]
    assert not returned & {i["sop_instance_uid"] for i in before["instances"]}
    count = pacs.instance_count()

    # What a PACS that forwards whole studies does: every instance, SEG and SR included. Orthanc
    # raises (HTTP error) when the receiver refuses any of them; synchronous, so every instance
    # has been answered (and therefore committed by the node) when it returns.
    pacs.store_to_modality("CXRNODE", pacs.study_id(roundtrip.study_uid))

    after = node.study(roundtrip.study_uid)
    stored = {i["sop_instance_uid"]: i for i in after["instances"]}
    assert returned <= set(stored), "the node's own SEG and SRs were not stored"
    assert {stored[uid]["sop_class_uid"] for uid in returned} == {SEG_SOP_CLASS, COMPREHENSIVE_3D_SR}
    # Stored, but no re-opening: same state, generation, jobs and outputs; nothing new in the PACS.
    assert (after["study"]["state"], after["study"]["generation"]) == ("delivered", before["study"]["generation"])
    assert [j["id"] for j in after["jobs"]] == [j["id"] for j in before["jobs"]]
    assert sorted(o["sop_instance_uid"] for o in after["outputs"]) == sorted(o["sop_instance_uid"] for o in before["outputs"])
    assert pacs.instance_count() == count
