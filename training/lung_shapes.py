"""Real lung outlines for the phantom generator, from torchxrayvision's lung-mask archive.

torchxrayvision (a test extra of this project) ships ``semantic_masks_v7labs_lungs.zip``: 517
lung masks drawn on real chest radiographs, no images. This module turns the usable ones (two
lungs side by side) into pairs of outline polygons, normalised to the pair's bounding box, that
:func:`training.phantoms.generate_phantom` can use instead of its procedural lungs
(``lung_shapes=lung_shape_bank("train")``).

Each pair is assigned to the ``train`` or the ``test`` split by a hash of its file name (20 %
test), so that a model trained on ``train`` shapes can be tested on lung shapes it never saw.
Nothing is copied into this repository; the archive is read where torchxrayvision installed it
(or from a path given), once per process.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

logger = logging.getLogger(__name__)

LUNG_MASK_ARCHIVE = "semantic_masks_v7labs_lungs.zip"

#: Side of the grid a mask is reduced to before its outline is traced.
SHAPE_GRID = 128

#: Fraction of the shapes held out for testing (by a hash of the file name).
TEST_FRACTION = 0.2

#: The smaller lung must have at least this fraction of the larger one's area.
MIN_LUNG_RATIO = 0.25

#: Most points kept per outline.
MAX_OUTLINE_POINTS = 160

SPLITS = ("train", "test", "all")


@dataclass(frozen=True, eq=False)
class LungShapePair:
    """Outlines of one radiograph's two lungs.

    ``left`` and ``right`` (the patient's; ``left`` lies on the image's right) are closed
    ``(K, 2)`` float arrays of ``(x, y)`` in [0, 1], relative to the bounding box of both lungs.
    """

    name: str
    left: np.ndarray
    right: np.ndarray
    split: str


def default_archive() -> Path:
    """Where torchxrayvision installed the lung-mask archive (without importing it)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the real lung shapes come from torchxrayvision's {LUNG_MASK_ARCHIVE}: install "
            "torchxrayvision (pip install -e '.[test]') or pass the archive's path"
        )
    path = Path(spec.origin).parent / "data" / LUNG_MASK_ARCHIVE
    if not path.is_file():
        raise FileNotFoundError(f"torchxrayvision is installed but {path} is missing")
    return path


def split_of(name: str) -> str:
    """``"test"`` for about :data:`TEST_FRACTION` of the names (stable hash), else ``"train"``."""
    digest = hashlib.sha256(name.encode()).digest()
    return "test" if int.from_bytes(digest[:4], "big") / 2**32 < TEST_FRACTION else "train"


def _outline(mask: np.ndarray) -> np.ndarray | None:
    """The longest closed outline of a ``(G, G)`` bool mask, ``(K, 2)`` (x, y) in [0, 1]."""
    import contourpy

    g = mask.shape[0]
    smooth = ndimage.gaussian_filter(mask.astype(np.float64), 1.0)
    padded = np.pad(smooth, 1)
    lines = contourpy.contour_generator(z=padded).lines(0.5)
    if not lines:
        return None
    line = max(lines, key=len)
    if len(line) < 12:
        return None
    step = max(1, len(line) // MAX_OUTLINE_POINTS)
    pts = np.asarray(line[::step], dtype=np.float64) - 1.0  # undo the padding
    return (pts + 0.5) / g


def shape_pair_from_mask(mask: np.ndarray, name: str) -> LungShapePair | None:
    """A :class:`LungShapePair` from a combined ``(H, W)`` bool mask, or ``None`` if unusable.

    Usable: two lungs side by side (the two largest components, the smaller at least
    :data:`MIN_LUNG_RATIO` of the larger, overlapping in height, apart in width).
    """
    from training.datasets.folders import split_lungs

    labelled, count = ndimage.label(mask)
    if count < 2:
        return None
    sizes = np.bincount(labelled.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    if sizes[order[1]] < MIN_LUNG_RATIO * sizes[order[0]]:
        return None
    both = (labelled == order[0] + 1) | (labelled == order[1] + 1)
    left, right = split_lungs(both)
    if not left.any() or not right.any():
        return None
    rows_l, cols_l = np.nonzero(left)
    rows_r, cols_r = np.nonzero(right)
    if cols_r.max() >= cols_l.min() + 0.1 * (cols_l.max() - cols_r.min()):
        return None  # not side by side
    if min(rows_l.max(), rows_r.max()) <= max(rows_l.min(), rows_r.min()):
        return None  # no overlap in height
    rows, cols = np.nonzero(both)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crops = []
    for side in (left, right):
        crop = Image.fromarray(side[y0:y1, x0:x1].astype(np.uint8) * 255)
        crops.append(np.asarray(crop.resize((SHAPE_GRID, SHAPE_GRID), Image.BILINEAR)) > 127)
    outlines = [_outline(c) for c in crops]
    if outlines[0] is None or outlines[1] is None:
        return None
    return LungShapePair(name, outlines[0], outlines[1], split_of(name))


@functools.lru_cache(maxsize=4)
def _load(archive: str) -> tuple[LungShapePair, ...]:
    pairs: list[LungShapePair] = []
    skipped = 0
    with zipfile.ZipFile(archive) as zf:
        for member in sorted(zf.namelist()):
            if member.endswith("/"):
                continue
            try:
                with Image.open(io.BytesIO(zf.read(member))) as img:
                    img.draft("L", (4 * SHAPE_GRID, 4 * SHAPE_GRID))
                    grey = img.convert("L")
                    grey.thumbnail((4 * SHAPE_GRID, 4 * SHAPE_GRID))
                    mask = np.asarray(grey) > 127
            except (OSError, SyntaxError):
                skipped += 1
                continue
            pair = shape_pair_from_mask(mask, Path(member).name)
            if pair is None:
                skipped += 1
                continue
            pairs.append(pair)
    logger.info("lung shapes: %d usable pairs from %s (%d skipped)", len(pairs), archive, skipped)
    return tuple(pairs)


def lung_shape_bank(split: str = "train", archive: str | Path | None = None) -> tuple[LungShapePair, ...]:
    """The usable real lung-shape pairs of ``split`` (``train``, ``test`` or ``all``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    path = Path(archive) if archive is not None else default_archive()
    pairs = _load(str(path.resolve()))
    return pairs if split == "all" else tuple(p for p in pairs if p.split == split)
