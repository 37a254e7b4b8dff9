"""Reader for the NIH ChestX-ray14 layout.

The layout as NIH distributes it::

    root/
      Data_Entry_2017.csv          (or Data_Entry_2017_v2020.csv; .gz accepted)
      train_val_list.txt           official patient-wise split, one image name a line
      test_list.txt
      images/00000001_000.png ...  or images_001/images/*.png ... images_012/images/*.png

``Data_Entry_2017.csv`` columns: ``Image Index``, ``Finding Labels`` (``|``-separated, or
``No Finding``), ``Follow-up #``, ``Patient ID``, ``Patient Age``, ``Patient Gender``,
``View Position``, ``OriginalImage[Width,Height]``, ``OriginalImagePixelSpacing[x,y]`` (the
last two are two unquoted columns each). Only the labels in :data:`models.labels.FINDINGS` are
kept; the other NIH labels (Cardiomegaly, Effusion, ...) are ignored, so an image with only
those counts as negative for all five.

Splits are by patient: ``test`` is the official test list; ``train`` and ``val`` are carved from
the official train/val list by Patient ID (a seeded shuffle of patients), so that no patient
appears in two splits.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.labels import FINDINGS
from training.datasets.images import IMAGE_SUFFIXES, read_grey_image, resize_image

logger = logging.getLogger(__name__)

#: Label file names looked for under the root, in order.
NIH_CSV_NAMES = (
    "Data_Entry_2017.csv",
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017.csv.gz",
    "Data_Entry_2017_v2020.csv.gz",
)
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
NO_FINDING_LABEL = "No Finding"
SPLITS = ("train", "val", "test")

_REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID")


@dataclass(frozen=True)
class NIHRecord:
    """One row of ``Data_Entry_2017.csv`` joined with its image file.

    Attributes
    ----------
    image_index: file name, e.g. ``00000001_000.png``
    patient_id: the ``Patient ID`` column
    follow_up: the ``Follow-up #`` column
    finding_labels: every NIH label of the image (``()`` for No Finding)
    labels: ``(len(FINDINGS),)`` float32 0/1 in :data:`FINDINGS` order
    view_position: ``PA``, ``AP`` or ``None`` when the column is missing
    original_size: ``(width, height)`` of the original radiograph, or ``None``
    original_spacing_mm: ``(x, y)`` pixel spacing of the original radiograph, or ``None``
    path: the image file, or ``None`` when it was not found
    """

    image_index: str
    patient_id: str
    follow_up: int
    finding_labels: tuple[str, ...]
    labels: np.ndarray
    view_position: str | None
    original_size: tuple[int, int] | None
    original_spacing_mm: tuple[float, float] | None
    path: Path | None = None


def label_vector(finding_labels: Iterable[str], names: Sequence[str] = FINDINGS) -> np.ndarray:
    """``(len(names),)`` float32 0/1: which of ``names`` are among ``finding_labels``."""
    present = {label.strip() for label in finding_labels}
    return np.array([float(name in present) for name in names], dtype=np.float32)


def parse_finding_labels(text: str) -> tuple[str, ...]:
    """``"Mass|Nodule"`` -> ``("Mass", "Nodule")``; ``"No Finding"`` -> ``()``."""
    labels = tuple(part.strip() for part in text.split("|") if part.strip())
    return tuple(label for label in labels if label != NO_FINDING_LABEL)


def find_label_file(root: Path) -> Path:
    """The NIH label CSV under ``root``; FileNotFoundError naming the names looked for."""
    for name in NIH_CSV_NAMES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"no NIH label file under {root}: expected one of {', '.join(NIH_CSV_NAMES)}"
    )


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _pair(row: dict[str, str], first: str, second: str, kind: type) -> tuple | None:
    a, b = row.get(first), row.get(second)
    if not a or not b:
        return None
    try:
        return (kind(float(a)), kind(float(b)))
    except ValueError:
        return None


def read_label_file(path: str | Path) -> list[NIHRecord]:
    """Parse ``Data_Entry_2017.csv`` (also the v2020 file, plain or gzipped) into records.

    Records carry ``path=None``; :func:`load_nih_records` joins them with the image files.
    Raises ValueError naming a missing column or a malformed row (with its line number).
    """
    path = Path(path)
    records: list[NIHRecord] = []
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{path} is empty; expected the NIH header row") from None
        missing = [c for c in _REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path} lacks the NIH column(s) {missing}; its header is {header}")
        for line_no, fields in enumerate(reader, start=2):
            if not fields or not any(f.strip() for f in fields):
                continue
            row = dict(zip(header, (f.strip() for f in fields)))
            name = row.get("Image Index", "")
            if not name:
                raise ValueError(f"{path}:{line_no}: empty 'Image Index'")
            try:
                follow_up = int(row.get("Follow-up #") or 0)
            except ValueError:
                raise ValueError(f"{path}:{line_no}: 'Follow-up #' must be an integer; got {row['Follow-up #']!r}") from None
            patient = row.get("Patient ID", "")
            if not patient:
                raise ValueError(f"{path}:{line_no}: empty 'Patient ID'")
            findings = parse_finding_labels(row.get("Finding Labels", ""))
            size = _pair(row, "OriginalImage[Width", "Height]", int)
            spacing = _pair(row, "OriginalImagePixelSpacing[x", "y]", float)
            records.append(
                NIHRecord(
                    image_index=name,
                    patient_id=str(int(patient)) if patient.isdigit() else patient,
                    follow_up=follow_up,
                    finding_labels=findings,
                    labels=label_vector(findings),
                    view_position=row.get("View Position") or None,
                    original_size=size,  # type: ignore[arg-type]
                    original_spacing_mm=spacing,  # type: ignore[arg-type]
                )
            )
    return records


def find_images(root: str | Path) -> dict[str, Path]:
    """Map image file name -> path for ``root/images/*`` and ``root/images_*/images/*``.

    Also accepts ``root/images_*/*`` (archives unpacked without the inner folder). A name found
    twice raises ValueError naming both files.
    """
    root = Path(root)
    folders = [root / "images"]
    for part in sorted(root.glob("images_*")):
        folders += [part / "images", part]
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                if path.name in found and found[path.name] != path:
                    raise ValueError(f"image {path.name} found twice: {found[path.name]} and {path}")
                found[path.name] = path
    return found


def read_list(path: Path) -> list[str]:
    """Image names of an official split list (one a line, blank lines ignored)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_nih_records(root: str | Path, *, require_images: bool = True) -> list[NIHRecord]:
    """Records of the label file under ``root`` joined with their image files.

    Rows whose image is missing are dropped (with a log line giving the count) when
    ``require_images``; else kept with ``path=None``.
    """
    root = Path(root)
    images = find_images(root)
    out: list[NIHRecord] = []
    missing = 0
    for rec in read_label_file(find_label_file(root)):
        path = images.get(rec.image_index)
        if path is None:
            missing += 1
            if require_images:
                continue
        out.append(_with_path(rec, path))
    if missing:
        logger.info("NIH layout %s: %d labelled images have no file%s", root, missing, " (dropped)" if require_images else "")
    return out


def _with_path(rec: NIHRecord, path: Path | None) -> NIHRecord:
    return NIHRecord(**{**rec.__dict__, "path": path})


def split_by_patient(
    records: Sequence[NIHRecord], *, val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[NIHRecord], list[NIHRecord]]:
    """Split records into (train, val) by Patient ID: a seeded shuffle of the patients.

    About ``val_fraction`` of the patients (at least one when there are two or more) go to val.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1); got {val_fraction}")
    patients = sorted({r.patient_id for r in records})
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(patients))
    n_val = int(round(val_fraction * len(patients)))
    if val_fraction > 0 and n_val == 0 and len(patients) >= 2:
        n_val = 1
    val_patients = {patients[i] for i in order[:n_val]}
    train = [r for r in records if r.patient_id not in val_patients]
    val = [r for r in records if r.patient_id in val_patients]
    return train, val


def nih_splits(
    root: str | Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    view_positions: Iterable[str] | None = None,
) -> dict[str, list[NIHRecord]]:
    """The ``train``, ``val`` and ``test`` records of an NIH layout, patient-disjoint.

    ``test`` = the official ``test_list.txt``; ``train``/``val`` = the official
    ``train_val_list.txt`` split by patient (:func:`split_by_patient`). A patient found in both
    official lists (not the case in the NIH release) is kept in test only, with a warning.
    ``view_positions`` (e.g. ``("PA",)``) keeps only those views.
    """
    root = Path(root)
    find_label_file(root)
    for name in (TRAIN_VAL_LIST, TEST_LIST):
        if not (root / name).is_file():
            raise FileNotFoundError(f"no {name} under {root}: the NIH official split lists are required")
    records = load_nih_records(root)
    if view_positions is not None:
        wanted = {v.upper() for v in view_positions}
        records = [r for r in records if (r.view_position or "").upper() in wanted]
    by_name = {r.image_index: r for r in records}
    test_names = read_list(root / TEST_LIST)
    test = [by_name[n] for n in test_names if n in by_name]
    test_patients = {r.patient_id for r in test}
    train_val = [by_name[n] for n in read_list(root / TRAIN_VAL_LIST) if n in by_name]
    overlap = {r.patient_id for r in train_val} & test_patients
    if overlap:
        logger.warning("%d patients appear in both official lists; kept in test only", len(overlap))
        train_val = [r for r in train_val if r.patient_id not in overlap]
    train, val = split_by_patient(train_val, val_fraction=val_fraction, seed=seed)
    return {"train": train, "val": val, "test": test}


def effective_spacing_mm(rec: NIHRecord, width: int, height: int) -> tuple[float, float] | None:
    """``(row, column)`` spacing in mm of the stored image, from the original size and spacing."""
    if rec.original_size is None or rec.original_spacing_mm is None:
        return None
    (orig_w, orig_h), (sx, sy) = rec.original_size, rec.original_spacing_mm
    if min(orig_w, orig_h, width, height) <= 0 or sx <= 0 or sy <= 0:
        return None
    return (sy * orig_h / height, sx * orig_w / width)


class NIHChestXray14(torch.utils.data.Dataset):
    """One split of an NIH ChestX-ray14 layout as a torch Dataset.

    ``dataset[i]`` is a dict:

    - ``"image"``: ``(H, W)`` float32 tensor in [0, 1] (``(image_size, image_size)`` if given;
      bilinear resize, aspect not kept: the NIH PNGs are square)
    - ``"labels"``: ``(len(FINDINGS),)`` float32 0/1 in :data:`FINDINGS` order
    - ``"pixel_spacing_mm"``: ``(2,)`` float32 (row, column) of the returned image, NaN if unknown
    - ``"index"``: int64 scalar

    Parameters
    ----------
    root: the layout's root folder
    split: ``train``, ``val`` or ``test``
    image_size: side of the returned square image; ``None`` keeps the stored size
    val_fraction, seed: how ``val`` is carved from the official train/val list (by patient)
    view_positions: keep only these views (e.g. ``("PA", "AP")``); ``None`` keeps all
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        image_size: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        view_positions: Iterable[str] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        if image_size is not None and image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels or None; got {image_size}")
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.records: list[NIHRecord] = nih_splits(
            self.root, val_fraction=val_fraction, seed=seed, view_positions=view_positions
        )[split]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        """``(N, len(FINDINGS))`` float32 label matrix of the split."""
        if not self.records:
            return np.zeros((0, len(FINDINGS)), np.float32)
        return np.stack([r.labels for r in self.records])

    @property
    def patient_ids(self) -> set[str]:
        return {r.patient_id for r in self.records}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rec = self.records[index]
        if rec.path is None:
            raise FileNotFoundError(f"NIH image {rec.image_index} has no file under {self.root}")
        image = read_grey_image(rec.path)
        height, width = image.shape
        spacing = effective_spacing_mm(rec, width, height)
        if self.image_size is not None and image.shape != (self.image_size, self.image_size):
            image = resize_image(image, self.image_size)
            if spacing is not None:
                spacing = (spacing[0] * height / self.image_size, spacing[1] * width / self.image_size)
        return {
            "image": torch.from_numpy(image),
            "labels": torch.from_numpy(rec.labels.copy()),
            "pixel_spacing_mm": torch.tensor(spacing if spacing else (float("nan"),) * 2, dtype=torch.float32),
            "index": torch.tensor(index % len(self.records), dtype=torch.int64),
        }
