"""The phantom generator: determinism, ground-truth consistency, orientation, writers."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from models.labels import FINDINGS
from training.phantoms import (
    FIELD_OF_VIEW_MM,
    MASS_RADIUS_MM,
    NODULE_RADIUS_MM,
    PhantomDataset,
    generate_phantom,
    phantom_metadata,
    write_phantom_dicom,
    write_phantom_png,
)


def _centroid_x(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[1].mean())


def test_same_seed_gives_the_same_phantom():
    a = generate_phantom(128, seed=7)
    b = generate_phantom(128, seed=7)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.left_lung, b.left_lung)
    assert np.array_equal(a.right_lung, b.right_lung)
    assert a.labels == b.labels


def test_different_seeds_give_different_anatomy():
    a = generate_phantom(128, seed=1, findings=[])
    b = generate_phantom(128, seed=2, findings=[])
    assert not np.array_equal(a.left_lung, b.left_lung)
    assert np.abs(a.image - b.image).mean() > 0.01


def test_a_generator_seed_is_consumed_and_reproducible():
    a = generate_phantom(64, seed=np.random.default_rng(5))
    b = generate_phantom(64, seed=np.random.default_rng(5))
    assert np.array_equal(a.image, b.image)
    assert a.seed is None


@pytest.mark.parametrize("size", [64, 97, 256, 512])
def test_image_and_masks_have_the_requested_size_and_types(size):
    ph = generate_phantom(size, seed=3)
    assert ph.image.shape == ph.left_lung.shape == ph.right_lung.shape == (size, size)
    assert ph.image.dtype == np.float32 and ph.left_lung.dtype == bool and ph.right_lung.dtype == bool
    assert 0.0 <= ph.image.min() and ph.image.max() <= 1.0
    assert ph.pixel_spacing_mm == pytest.approx((FIELD_OF_VIEW_MM / size,) * 2)


def test_the_same_seed_draws_the_same_patient_at_every_size():
    small = generate_phantom(128, seed=11, findings=["Mass"])
    large = generate_phantom(512, seed=11, findings=["Mass"])
    down = np.asarray(Image.fromarray(large.left_lung.astype(np.uint8)).resize((128, 128), Image.NEAREST)) > 0
    overlap = (down & small.left_lung).sum() / (down | small.left_lung).sum()
    assert overlap > 0.9
    (m_small,), (m_large,) = small.lesions, large.lesions
    assert m_large.center_xy[0] / 512 == pytest.approx(m_small.center_xy[0] / 128, abs=0.01)
    assert m_large.radius_px / 512 == pytest.approx(m_small.radius_px / 128, rel=1e-6)


def test_patient_left_lung_is_on_the_image_right_and_lungs_do_not_overlap():
    for seed in range(5):
        ph = generate_phantom(128, seed=seed)
        assert _centroid_x(ph.left_lung) > 64 > _centroid_x(ph.right_lung)
        assert not (ph.left_lung & ph.right_lung).any()
        # each lung is plausible: 8-30 % of the image
        for mask in (ph.left_lung, ph.right_lung):
            assert 0.08 < mask.mean() < 0.30


def test_lungs_are_darker_than_the_heart_and_soft_tissue():
    ph = generate_phantom(256, seed=4, findings=[])
    lungs = ph.left_lung | ph.right_lung
    mid_rows = slice(int(0.55 * 256), int(0.65 * 256))
    centre = ph.image[mid_rows, 120:136]  # heart and spine between the lungs
    assert ph.image[lungs].mean() + 0.2 < centre.mean()


def test_no_findings_means_all_labels_false_and_no_lesions():
    ph = generate_phantom(128, seed=9, findings=[])
    assert set(ph.labels) == set(FINDINGS)
    assert not any(ph.labels.values())
    assert ph.lesions == []
    assert ph.label_vector().tolist() == [0.0] * len(FINDINGS)


def test_finding_probability_zero_and_one():
    assert not any(generate_phantom(64, seed=1, finding_probability=0.0).labels.values())
    assert all(generate_phantom(64, seed=1, finding_probability=1.0).labels.values())


def test_requested_findings_set_their_labels_and_lesions():
    ph = generate_phantom(256, seed=21, findings=["Mass", "Edema"])
    assert ph.labels == {"Mass": True, "Nodule": False, "Pneumonia": False, "Edema": True, "Fibrosis": False}
    assert {lesion.kind for lesion in ph.lesions} == {"Mass", "Edema"}
    assert ph.label_vector().tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("seed", range(6))
def test_round_lesions_lie_inside_a_lung_with_their_documented_size(seed):
    ph = generate_phantom(256, seed=seed, findings=["Mass", "Nodule"])
    mm_per_px = ph.pixel_spacing_mm[0]
    lungs = {"left": ph.left_lung, "right": ph.right_lung}
    for lesion in ph.lesions:
        x, y = lesion.center_xy
        assert 0 <= x < 256 and 0 <= y < 256
        assert lesion.side in lungs
        assert lungs[lesion.side][int(round(y)), int(round(x))], f"{lesion.kind} centre outside its lung"
        inside = (lesion.mask & lungs[lesion.side]).sum() / lesion.mask.sum()
        assert inside > 0.9
        low, high = MASS_RADIUS_MM if lesion.kind == "Mass" else NODULE_RADIUS_MM
        assert low <= lesion.radius_px * mm_per_px <= high


def test_findings_brighten_their_region():
    for kind in FINDINGS:
        sick = generate_phantom(256, seed=31, findings=[kind])
        well = generate_phantom(256, seed=31, findings=[])
        (lesion, *_) = sick.lesions
        region = lesion.mask
        assert region.any()
        gain = float((sick.image[region] - well.image[region]).mean())
        assert gain > 0.02, f"{kind} adds only {gain:.3f} in its region"


def test_region_findings_have_their_characteristic_place():
    ph = generate_phantom(256, seed=5, findings=["Edema", "Fibrosis", "Pneumonia"])
    lungs = ph.left_lung | ph.right_lung
    by_kind = {lesion.kind: lesion for lesion in ph.lesions}
    # edema: perihilar, reaching over the medial lung border (partly outside the lung mask)
    edema = by_kind["Edema"].mask
    assert (edema & ~lungs).sum() > 0.1 * edema.sum()
    assert abs(by_kind["Edema"].center_xy[0] - 128) < 40
    # fibrosis: inside the lungs, near their edges
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(lungs)
    fibrosis = by_kind["Fibrosis"].mask & lungs
    assert np.median(depth[fibrosis]) < np.median(depth[lungs])
    # pneumonia: within one lung
    pneumonia = by_kind["Pneumonia"]
    side_mask = ph.left_lung if pneumonia.side == "left" else ph.right_lung
    assert (pneumonia.mask & side_mask).sum() == pneumonia.mask.sum()


def test_unknown_finding_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="Cardiomegaly"):
        generate_phantom(64, seed=0, findings=["Cardiomegaly"])
    with pytest.raises(ValueError, match="size"):
        generate_phantom(8, seed=0)
    with pytest.raises(ValueError, match="seed"):
        generate_phantom(64, seed="zero")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finding_probability"):
        generate_phantom(64, seed=0, finding_probability=1.5)


def test_dataset_items_are_deterministic_and_collate():
    ds = PhantomDataset(6, 64, seed=3)
    again = PhantomDataset(6, 64, seed=3)
    item = ds[4]
    assert torch.equal(item["image"], again[4]["image"])
    assert item["image"].shape == (64, 64) and item["image"].dtype == torch.float32
    assert item["labels"].shape == (len(FINDINGS),)
    assert item["left_lung"].dtype == torch.bool
    assert torch.equal(item["labels"], torch.from_numpy(ds.phantom(4).label_vector()))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 64, 64)
    assert not torch.equal(ds[0]["image"], PhantomDataset(6, 64, seed=4)[0]["image"])
    with pytest.raises(IndexError):
        ds[6]


def test_dataset_finding_rate_follows_the_probability():
    ds = PhantomDataset(100, 32, seed=0, finding_probability=0.3)
    rng_labels = np.stack([ds.phantom(i).label_vector() for i in range(len(ds))])
    assert 0.2 < rng_labels.mean() < 0.4


def test_png_writer_round_trips(tmp_path):
    ph = generate_phantom(96, seed=12, findings=["Nodule"])
    path = write_phantom_png(ph, tmp_path)
    image = np.asarray(Image.open(path)).astype(np.float32) / 65535.0
    assert np.abs(image - ph.image).max() < 1e-4
    left = np.asarray(Image.open(tmp_path / "leftMask" / path.name)) > 0
    assert np.array_equal(left, ph.left_lung)
    meta = json.loads((tmp_path / "labels" / f"{path.stem}.json").read_text())
    assert meta == json.loads(json.dumps(phantom_metadata(ph)))
    assert meta["labels"]["Nodule"] is True


def test_dicom_writer_keeps_pixels_spacing_and_view(tmp_path):
    ph = generate_phantom(128, seed=13)
    path = write_phantom_dicom(ph, tmp_path / "ph.dcm")
    ds = pydicom.dcmread(path)
    assert ds.Modality == "DX" and ds.ViewPosition == "PA"
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx(ph.pixel_spacing_mm, rel=1e-5)
    stored = ds.pixel_array.astype(np.float32) / ((1 << ds.BitsStored) - 1)
    assert np.abs(stored - ph.image).max() < 1e-3


# ---------------------------------------------------------------------------------------------
# real lung shapes (torchxrayvision's mask archive)


def _ellipse_pair(shift: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:200, 0:240]
    right = ((xx - 70 - shift) / 40.0) ** 2 + ((yy - 100) / 70.0) ** 2 <= 1.0
    left = ((xx - 170 - shift) / 38.0) ** 2 + ((yy - 105) / 72.0) ** 2 <= 1.0
    return right | left


def test_shape_bank_reads_an_archive_and_splits_by_name(tmp_path):
    import io
    import zipfile

    from training.lung_shapes import lung_shape_bank, split_of

    archive = tmp_path / "masks.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for k in range(6):
            buf = io.BytesIO()
            Image.fromarray(_ellipse_pair(k).astype(np.uint8) * 255).save(buf, format="PNG")
            zf.writestr(f"masks/case_{k}.png", buf.getvalue())
        buf = io.BytesIO()
        Image.fromarray(np.zeros((50, 50), np.uint8)).save(buf, format="PNG")
        zf.writestr("masks/empty.png", buf.getvalue())  # unusable: skipped
    pairs = lung_shape_bank("all", archive=archive)
    assert sorted(p.name for p in pairs) == [f"case_{k}.png" for k in range(6)]
    train, test = lung_shape_bank("train", archive=archive), lung_shape_bank("test", archive=archive)
    assert len(train) + len(test) == 6 and not {p.name for p in train} & {p.name for p in test}
    assert all(p.split == split_of(p.name) for p in pairs)
    pair = pairs[0]
    # patient's left lung = the image's right ellipse, outlines normalised to the pair's box
    assert pair.left[:, 0].mean() > 0.5 > pair.right[:, 0].mean()
    assert pair.left.min() >= -0.01 and pair.left.max() <= 1.01

    ph = generate_phantom(128, seed=3, lung_shapes=pairs)
    assert _centroid_x(ph.left_lung) > 64 > _centroid_x(ph.right_lung)
    assert 0.05 < ph.left_lung.mean() < 0.3 and 0.05 < ph.right_lung.mean() < 0.3
    with pytest.raises(ValueError, match="split"):
        lung_shape_bank("validation", archive=archive)


def test_real_masks_of_the_shipped_archive_become_shape_pairs():
    import io
    import zipfile

    from training.lung_shapes import default_archive, shape_pair_from_mask

    with zipfile.ZipFile(default_archive()) as zf:
        members = [m for m in sorted(zf.namelist()) if not m.endswith("/")][:8]
        pairs = []
        for member in members:
            with Image.open(io.BytesIO(zf.read(member))) as img:
                img.draft("L", (512, 512))
                grey = img.convert("L")
                grey.thumbnail((512, 512))
            pair = shape_pair_from_mask(np.asarray(grey) > 127, member)
            if pair is not None:
                pairs.append(pair)
    assert len(pairs) >= 4
    ph = generate_phantom(128, seed=5, findings=["Mass"], lung_shapes=pairs)
    (mass,) = ph.lesions
    lung = ph.left_lung if mass.side == "left" else ph.right_lung
    assert lung[int(round(mass.center_xy[1])), int(round(mass.center_xy[0]))]


def test_command_line_writes_a_png_folder_and_a_dicom_folder(tmp_path):
    from training.datasets import PhantomFolder
    from training.phantoms import main

    assert main(["--out", str(tmp_path / "png"), "--count", "3", "--size", "48", "--seed", "9"]) == 0
    folder = PhantomFolder(tmp_path / "png")
    assert len(folder) == 3
    expected = PhantomDataset(3, 48, seed=9)
    for i in range(3):
        assert torch.equal(folder[i]["labels"], expected[i]["labels"])
        assert torch.equal(folder[i]["left_lung"], expected[i]["left_lung"])
    assert main(["--out", str(tmp_path / "dcm"), "--count", "2", "--size", "48", "--format", "dicom"]) == 0
    files = sorted((tmp_path / "dcm").glob("*.dcm"))
    assert len(files) == 2
    assert pydicom.dcmread(files[0]).Rows == 48
    assert (tmp_path / "dcm" / "labels" / f"{files[0].stem}.json").is_file()
