"""Dataset readers on small layouts the tests write: NIH ChestX-ray14, lung-mask folders, phantoms."""

from __future__ import annotations

import csv
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.labels import FINDINGS
from training.datasets import (
    LungMaskFolder,
    NIHChestXray14,
    PhantomFolder,
    nih_splits,
    read_label_file,
    split_lungs,
)
from training.phantoms import generate_phantom, write_phantom_png

# torchxrayvision (test extra) ships NIH's label file; located without importing the package
REAL_NIH_CSV = Path(importlib.util.find_spec("torchxrayvision").origin).parent / "data" / "Data_Entry_2017_v2020.csv.gz"


def _real_header() -> list[str]:
    with gzip.open(REAL_NIH_CSV, "rt", newline="") as handle:
        return next(csv.reader(handle))


# patient -> list of (finding labels, view) per follow-up
_PATIENTS = {
    1: [("Mass|Effusion", "PA"), ("Mass", "PA"), ("No Finding", "AP")],
    2: [("No Finding", "PA")],
    3: [("Nodule|Pneumonia", "AP"), ("Cardiomegaly", "PA")],
    4: [("Edema|Infiltration", "AP")],
    5: [("Fibrosis", "PA"), ("Fibrosis|Nodule", "PA")],
    6: [("No Finding", "PA"), ("Pneumonia", "PA")],
    7: [("Emphysema|Mass|Nodule", "PA")],
    8: [("No Finding", "PA")],
    9: [("Edema", "AP"), ("No Finding", "AP")],
    10: [("Mass", "PA"), ("No Finding", "PA")],
    11: [("Nodule", "PA")],
    12: [("Fibrosis|Edema", "PA")],
}
_TEST_PATIENTS = {10, 11, 12}


def _pixels(patient: int, follow_up: int) -> np.ndarray:
    rng = np.random.default_rng(patient * 100 + follow_up)
    return rng.integers(0, 256, size=(40, 40), dtype=np.uint8)


@pytest.fixture(scope="module")
def nih_root(tmp_path_factory) -> Path:
    """A tiny NIH layout: real CSV header, images in two images_00N/images folders."""
    root = tmp_path_factory.mktemp("nih")
    rows, train_val, test = [], [], []
    for patient, images in _PATIENTS.items():
        for follow_up, (labels, view) in enumerate(images):
            name = f"{patient:08d}_{follow_up:03d}.png"
            folder = root / ("images_001" if patient <= 6 else "images_002") / "images"
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(_pixels(patient, follow_up))
            if patient == 7:  # some NIH PNGs are RGBA
                image = image.convert("RGBA")
            image.save(folder / name)
            rows.append([name, labels, str(follow_up), str(patient), "58", "M", view, "2000", "2000", "0.143", "0.143"])
            (test if patient in _TEST_PATIENTS else train_val).append(name)
    # one labelled row without an image file: dropped
    rows.append(["00000099_000.png", "Mass", "0", "99", "40", "F", "PA", "2000", "2000", "0.143", "0.143"])
    with open(root / "Data_Entry_2017.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(_real_header())
        writer.writerows(rows)
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return root


def test_label_file_parser_reads_the_real_nih_file_format(tmp_path):
    # the first 5000 rows of the real file, gzipped as torchxrayvision ships it
    with gzip.open(REAL_NIH_CSV, "rt", newline="") as handle:
        lines = [line for _, line in zip(range(5001), handle)]
    sample = tmp_path / "Data_Entry_2017_v2020.csv.gz"
    with gzip.open(sample, "wt", newline="") as handle:
        handle.writelines(lines)
    records = read_label_file(sample)
    raw = list(csv.DictReader(lines))
    assert len(records) == len(raw) == 5000
    for k, name in enumerate(FINDINGS):
        expected = sum(name in row["Finding Labels"].split("|") for row in raw)
        assert int(sum(r.labels[k] for r in records)) == expected > 0
    first = records[0]
    assert first.image_index == raw[0]["Image Index"] and first.patient_id == str(int(raw[0]["Patient ID"]))
    assert first.original_size is not None and first.original_spacing_mm is not None


def test_splits_are_patient_disjoint_and_follow_the_official_lists(nih_root):
    splits = nih_splits(nih_root, val_fraction=0.25, seed=1)
    patients = {name: {r.patient_id for r in recs} for name, recs in splits.items()}
    assert patients["test"] == {str(p) for p in _TEST_PATIENTS}
    assert patients["val"] and patients["train"]
    assert not patients["train"] & patients["val"]
    assert not (patients["train"] | patients["val"]) & patients["test"]
    total = sum(len(images) for images in _PATIENTS.values())
    assert sum(len(recs) for recs in splits.values()) == total  # the row without a file is dropped
    # seeded: the same seed gives the same validation patients, another seed may differ
    assert {r.patient_id for r in nih_splits(nih_root, val_fraction=0.25, seed=1)["val"]} == patients["val"]


def test_labels_are_parsed_over_the_five_findings(nih_root):
    train = NIHChestXray14(nih_root, "train", val_fraction=0.0)
    by_name = {r.image_index: r for r in train.records}
    assert by_name["00000001_000.png"].labels.tolist() == [1, 0, 0, 0, 0]  # Mass|Effusion
    assert by_name["00000003_001.png"].labels.tolist() == [0, 0, 0, 0, 0]  # Cardiomegaly only
    assert by_name["00000007_000.png"].labels.tolist() == [1, 1, 0, 0, 0]  # Emphysema|Mass|Nodule
    assert by_name["00000004_000.png"].labels.tolist() == [0, 0, 0, 1, 0]  # Edema|Infiltration
    assert by_name["00000002_000.png"].finding_labels == ()  # No Finding
    assert train.labels.shape == (len(train), len(FINDINGS))


def test_items_are_float_images_with_label_vectors(nih_root):
    test = NIHChestXray14(nih_root, "test")
    item = test[0]
    rec = test.records[0]
    patient, follow_up = int(rec.patient_id), rec.follow_up
    assert item["image"].dtype == torch.float32 and item["image"].shape == (40, 40)
    assert torch.allclose(item["image"], torch.from_numpy(_pixels(patient, follow_up) / 255.0).float())
    assert torch.equal(item["labels"], torch.from_numpy(rec.labels))
    assert item["pixel_spacing_mm"].tolist() == pytest.approx([0.143 * 2000 / 40] * 2)
    resized = NIHChestXray14(nih_root, "test", image_size=20)[0]
    assert resized["image"].shape == (20, 20)
    assert resized["pixel_spacing_mm"].tolist() == pytest.approx([0.143 * 2000 / 20] * 2)
    rgba = NIHChestXray14(nih_root, "train", val_fraction=0.0)
    index = [r.image_index for r in rgba.records].index("00000007_000.png")
    assert rgba[index]["image"].shape == (40, 40)
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=2)))
    assert batch["image"].shape == (2, 40, 40) and batch["labels"].shape == (2, len(FINDINGS))


def test_view_filter_and_bad_arguments(nih_root):
    pa = nih_splits(nih_root, view_positions=["PA"])
    assert all(r.view_position == "PA" for recs in pa.values() for r in recs)
    with pytest.raises(ValueError, match="split"):
        NIHChestXray14(nih_root, "training")
    with pytest.raises(FileNotFoundError, match="Data_Entry_2017"):
        nih_splits(nih_root / "images_001")


def test_missing_official_lists_are_named(tmp_path):
    (tmp_path / "Data_Entry_2017.csv").write_text(",".join(_real_header()) + "\n")
    with pytest.raises(FileNotFoundError, match="train_val_list.txt"):
        nih_splits(tmp_path)


# ---------------------------------------------------------------------------------------------
# lung mask folders


def _two_lungs(height: int = 60, width: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image plus (patient's left, right) lung masks: left lung on the image's right."""
    image = np.full((height, width), 200, np.uint8)
    right = np.zeros((height, width), bool)
    left = np.zeros((height, width), bool)
    right[10:50, 8:34] = True
    left[12:52, 46:74] = True
    left[40:44, 70:72] = False
    image[right | left] = 60
    return image, left, right


def _save_mask(mask: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def test_split_lungs_assigns_sides_by_image_position():
    _, left, right = _two_lungs()
    speck = np.zeros_like(left)
    speck[55:58, 60:63] = True  # a small separate piece near the left lung
    got_left, got_right = split_lungs(left | right | speck)
    assert np.array_equal(got_left, left | speck)
    assert np.array_equal(got_right, right)


def test_split_lungs_cuts_touching_lungs_between_them():
    _, left, right = _two_lungs()
    bridge = np.zeros_like(left)
    bridge[28:32, 34:46] = True
    got_left, got_right = split_lungs(left | right | bridge)
    assert got_left[:, :34].sum() == 0 and got_right[:, 46:].sum() == 0
    assert (got_left & left).sum() == left.sum() and (got_right & right).sum() == right.sum()


def test_combined_mask_folder_shenzhen_style(tmp_path):
    image, left, right = _two_lungs()
    (tmp_path / "CXR_png").mkdir()
    Image.fromarray(image).save(tmp_path / "CXR_png" / "CHNCXR_0001_0.png")
    _save_mask(left | right, tmp_path / "mask" / "CHNCXR_0001_0_mask.png")
    Image.fromarray(image).save(tmp_path / "CXR_png" / "CHNCXR_0002_0.png")  # no mask: skipped
    ds = LungMaskFolder(tmp_path, pixel_spacing_mm=(0.2, 0.2))
    assert ds.names == ["CHNCXR_0001_0"]
    item = ds[0]
    assert torch.equal(item["left_lung"], torch.from_numpy(left))
    assert torch.equal(item["right_lung"], torch.from_numpy(right))
    assert torch.allclose(item["image"], torch.from_numpy(image / 255.0).float())
    small = LungMaskFolder(tmp_path, image_size=40, pixel_spacing_mm=(0.2, 0.2))[0]
    assert small["left_lung"].shape == (40, 40)
    assert small["pixel_spacing_mm"].tolist() == pytest.approx([0.2 * 60 / 40, 0.2 * 80 / 40])


def test_montgomery_left_right_folders_are_assigned_by_position(tmp_path):
    image, left, right = _two_lungs()
    (tmp_path / "CXR_png").mkdir()
    Image.fromarray(image).save(tmp_path / "CXR_png" / "MCUCXR_0001_0.png")
    # folder names say "left"/"right" from the viewer's side here: the reader goes by position
    _save_mask(right, tmp_path / "ManualMask" / "leftMask" / "MCUCXR_0001_0.png")
    _save_mask(left, tmp_path / "ManualMask" / "rightMask" / "MCUCXR_0001_0.png")
    item = LungMaskFolder(tmp_path)[0]
    assert torch.equal(item["left_lung"], torch.from_numpy(left))
    assert torch.equal(item["right_lung"], torch.from_numpy(right))
    assert torch.isnan(item["pixel_spacing_mm"]).all()


def test_folder_errors_name_the_rule(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder"):
        LungMaskFolder(tmp_path)
    image, left, right = _two_lungs()
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    with pytest.raises(FileNotFoundError, match="mask folder"):
        LungMaskFolder(tmp_path)
    _save_mask((left | right)[:30, :60], tmp_path / "masks" / "a.png")
    with pytest.raises(ValueError, match="must match"):
        LungMaskFolder(tmp_path)[0]


def test_half_resolution_masks_are_scaled_to_their_image(tmp_path):
    image, left, right = _two_lungs()
    big = np.kron(image, np.ones((2, 2), np.uint8))  # 120 x 160 image, masks at 60 x 80 (SCR style)
    (tmp_path / "images").mkdir()
    Image.fromarray(big).save(tmp_path / "images" / "JPCLN001.png")
    _save_mask(left, tmp_path / "masks" / "left lung" / "JPCLN001.gif")
    _save_mask(right, tmp_path / "masks" / "right lung" / "JPCLN001.gif")
    item = LungMaskFolder(tmp_path)[0]
    assert item["image"].shape == item["left_lung"].shape == (120, 160)
    assert torch.equal(item["left_lung"], torch.from_numpy(np.kron(left, np.ones((2, 2), bool))))
    assert torch.equal(item["right_lung"], torch.from_numpy(np.kron(right, np.ones((2, 2), bool))))


def test_phantom_folder_round_trip(tmp_path):
    phantoms = [generate_phantom(64, seed=s, findings=f) for s, f in ((1, ["Mass"]), (2, []), (3, ["Edema", "Nodule"]))]
    for ph in phantoms:
        write_phantom_png(ph, tmp_path)
    ds = PhantomFolder(tmp_path)
    assert len(ds) == 3
    for i, ph in enumerate(phantoms):
        item = ds[i]
        assert torch.equal(item["left_lung"], torch.from_numpy(ph.left_lung))
        assert torch.equal(item["right_lung"], torch.from_numpy(ph.right_lung))
        assert torch.equal(item["labels"], torch.from_numpy(ph.label_vector()))
        assert np.abs(item["image"].numpy() - ph.image).max() < 1e-4
        assert item["pixel_spacing_mm"].tolist() == pytest.approx(ph.pixel_spacing_mm)
    assert ds.labels.tolist() == [ph.label_vector().tolist() for ph in phantoms]
    # a plain lung-mask reader sees the same masks
    plain = LungMaskFolder(tmp_path)[2]
    assert torch.equal(plain["left_lung"], torch.from_numpy(phantoms[2].left_lung))
