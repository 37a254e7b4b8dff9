"""Image-and-mask folder readers: lung segmentation sets and phantom folders.

Layouts recognised under a root folder (PA frontal radiographs):

- ``images/`` (or ``CXR_png/``, ``Images/``) with one combined lung mask per image in
  ``masks/`` (or ``mask/``, ``Masks/``), named like the image or ``<stem>_mask`` (Shenzhen);
- ``images/`` with separate ``leftMask/`` and ``rightMask/`` folders, also under
  ``ManualMask/`` (Montgomery), or ``masks/left lung`` and ``masks/right lung`` (JSRT/SCR).

Images are PNG, JPEG, GIF, BMP or TIFF (JSRT's raw ``.IMG`` files must be converted first). A mask
may be a scaled copy of its image's size (SCR's 1024-pixel masks of 2048-pixel images): it is
resized (nearest neighbour) to the image.

Left and right are always assigned by position on the image, whatever the folder names say:
in a PA view the patient's left lung lies on the image's right side. A combined mask is split
into its connected components; each goes to the side of the larger lung it lies nearer to.

:class:`PhantomFolder` reads what :func:`training.phantoms.write_phantom_png` writes
(``images/``, ``leftMask/``, ``rightMask/``, ``labels/<stem>.json``), labels included.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from models.labels import FINDINGS
from training.datasets.images import IMAGE_SUFFIXES, read_grey_image, read_mask, resize_image, resize_mask

logger = logging.getLogger(__name__)

IMAGE_DIR_NAMES = ("images", "CXR_png", "Images")
COMBINED_MASK_DIR_NAMES = ("masks", "mask", "Masks", "ManualMask")
SIDE_MASK_DIR_PAIRS = (
    ("leftMask", "rightMask"),
    ("ManualMask/leftMask", "ManualMask/rightMask"),
    ("masks/left lung", "masks/right lung"),
    ("masks/left", "masks/right"),
)
MASK_NAME_SUFFIXES = ("", "_mask")

#: Components smaller than this fraction of the image are dropped when splitting a mask.
MIN_COMPONENT_FRACTION = 0.001


def split_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a combined ``(H, W)`` bool lung mask into the patient's (left, right) lungs.

    PA display: the patient's left lung is on the image's right. The two largest connected
    components are the lungs; smaller ones (above :data:`MIN_COMPONENT_FRACTION` of the image)
    join the lung whose centroid is nearer in x. A single component (lungs touching) is cut at
    the column with the fewest mask pixels in the middle third of its width.
    """
    if mask.ndim != 2:
        raise ValueError(f"a lung mask is a 2-D (H, W) array; got shape {mask.shape}")
    mask = mask.astype(bool)
    left = np.zeros_like(mask)
    right = np.zeros_like(mask)
    if not mask.any():
        return left, right
    labelled, count = ndimage.label(mask)
    sizes = np.bincount(labelled.ravel())[1:]
    keep = [i + 1 for i in np.argsort(sizes)[::-1] if sizes[i] >= MIN_COMPONENT_FRACTION * mask.size]
    if not keep:
        keep = [int(np.argmax(sizes)) + 1]
    centroids = {k: float(np.nonzero(labelled == k)[1].mean()) for k in keep}
    if len(keep) == 1:
        cols = np.nonzero(mask.any(axis=0))[0]
        lo, hi = cols.min(), cols.max()
        third = max(1, (hi - lo) // 3)
        middle = np.arange(lo + third, hi - third + 1)
        counts = mask[:, middle].sum(axis=0)
        cut = int(middle[np.argmin(counts)]) if len(middle) else (lo + hi) // 2
        component = labelled == keep[0]
        right[:, :cut] = component[:, :cut]  # image left = patient's right
        left[:, cut:] = component[:, cut:]
        return left, right
    big_a, big_b = keep[0], keep[1]
    image_left, image_right = sorted((big_a, big_b), key=lambda k: centroids[k])
    for k in keep:
        component = labelled == k
        nearer_left = abs(centroids[k] - centroids[image_left]) <= abs(centroids[k] - centroids[image_right])
        if nearer_left:
            right |= component
        else:
            left |= component
    return left, right


def assign_sides(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two separate lung masks as the patient's (left, right), by their position on the image."""
    def centroid_x(m: np.ndarray) -> float:
        return float(np.nonzero(m)[1].mean()) if m.any() else float("nan")

    a, b = centroid_x(first), centroid_x(second)
    if np.isnan(a) or np.isnan(b):
        return split_lungs(first | second)
    return (first, second) if a > b else (second, first)


def _fit_mask(mask: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The mask at the image's size: equal, or scaled (nearest) when only the scale differs.

    JSRT's SCR masks, for example, are 1024 x 1024 for 2048 x 2048 images.
    """
    if mask.shape == shape:
        return mask
    (mh, mw), (ih, iw) = mask.shape, shape[:2]
    if abs(mh * iw - mw * ih) <= max(mh, mw):  # same aspect ratio (to a pixel)
        img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize((iw, ih), Image.NEAREST)
        return np.asarray(img) > 127
    raise ValueError(
        f"mask of {name} is {mw}x{mh} but the image is {iw}x{ih}: a mask must match its image's size "
        "or be a scaled copy with the same aspect ratio"
    )


def _find_dir(root: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _index(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }


def _match(index: dict[str, Path], stem: str) -> Path | None:
    for suffix in MASK_NAME_SUFFIXES:
        if stem + suffix in index:
            return index[stem + suffix]
    return None


@dataclass(frozen=True)
class MaskedImage:
    """One image of a folder with its mask file(s)."""

    name: str
    image: Path
    combined_mask: Path | None = None
    first_mask: Path | None = None
    second_mask: Path | None = None


class LungMaskFolder(torch.utils.data.Dataset):
    """A lung segmentation set in an image-and-mask folder layout (see the module docstring).

    ``dataset[i]`` is a dict:

    - ``"image"``: ``(H, W)`` float32 tensor in [0, 1]
    - ``"left_lung"``, ``"right_lung"``: ``(H, W)`` bool tensors, the patient's lungs
    - ``"pixel_spacing_mm"``: ``(2,)`` float32 (row, column), NaN where unknown
    - ``"index"``: int64 scalar

    Images without a mask are skipped (logged with their count). ``image_size`` resizes image
    (bilinear) and masks (nearest) to a square; pixel spacing is scaled with it. ``names``
    restricts to those image stems (e.g. a split), in the given order.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        image_size: int | None = None,
        pixel_spacing_mm: tuple[float, float] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no folder {self.root}")
        if image_size is not None and image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels or None; got {image_size}")
        self.image_size = image_size
        self.pixel_spacing_mm = pixel_spacing_mm
        self.items = self._scan(names)

    def _scan(self, names: Sequence[str] | None) -> list[MaskedImage]:
        image_dir = _find_dir(self.root, IMAGE_DIR_NAMES)
        if image_dir is None:
            raise FileNotFoundError(f"no image folder under {self.root}: expected one of {', '.join(IMAGE_DIR_NAMES)}")
        images = _index(image_dir)
        pair = next(
            ((self.root / a, self.root / b) for a, b in SIDE_MASK_DIR_PAIRS if (self.root / a).is_dir() and (self.root / b).is_dir()),
            None,
        )
        combined_dir = None if pair else _find_dir(self.root, COMBINED_MASK_DIR_NAMES)
        if pair is None and combined_dir is None:
            raise FileNotFoundError(
                f"no mask folder under {self.root}: expected a combined mask folder "
                f"({', '.join(COMBINED_MASK_DIR_NAMES)}) or a left/right pair "
                f"({', '.join(a + ' + ' + b for a, b in SIDE_MASK_DIR_PAIRS)})"
            )
        stems = list(names) if names is not None else sorted(images)
        unknown = [s for s in stems if s not in images]
        if unknown:
            raise ValueError(f"{len(unknown)} requested images are not in {image_dir}, e.g. {unknown[:3]}")
        items: list[MaskedImage] = []
        skipped = 0
        if pair is not None:
            first, second = _index(pair[0]), _index(pair[1])
            for stem in stems:
                a, b = _match(first, stem), _match(second, stem)
                if a is None or b is None:
                    skipped += 1
                    continue
                items.append(MaskedImage(stem, images[stem], first_mask=a, second_mask=b))
        else:
            masks = _index(combined_dir)  # type: ignore[arg-type]
            for stem in stems:
                m = _match(masks, stem)
                if m is None:
                    skipped += 1
                    continue
                items.append(MaskedImage(stem, images[stem], combined_mask=m))
        if skipped:
            logger.info("%s: %d images without masks skipped", self.root, skipped)
        return items

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [item.name for item in self.items]

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image, left_lung, right_lung)`` of item ``index`` at the stored size."""
        item = self.items[index]
        image = read_grey_image(item.image)
        if item.combined_mask is not None:
            left, right = split_lungs(read_mask(item.combined_mask))
            masks = (left, right)
        else:
            masks = assign_sides(read_mask(item.first_mask), read_mask(item.second_mask))  # type: ignore[arg-type]
        return image, _fit_mask(masks[0], image.shape, item.name), _fit_mask(masks[1], image.shape, item.name)

    def _spacing(self, index: int, shape: tuple[int, int]) -> tuple[float, float] | None:
        return self.pixel_spacing_mm

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, left, right = self.read(index)
        height, width = image.shape
        spacing = self._spacing(index, (height, width))
        if self.image_size is not None and image.shape != (self.image_size, self.image_size):
            image = resize_image(image, self.image_size)
            left, right = resize_mask(left, self.image_size), resize_mask(right, self.image_size)
            if spacing is not None:
                spacing = (spacing[0] * height / self.image_size, spacing[1] * width / self.image_size)
        return {
            "image": torch.from_numpy(image),
            "left_lung": torch.from_numpy(left),
            "right_lung": torch.from_numpy(right),
            "pixel_spacing_mm": torch.tensor(spacing if spacing else (float("nan"),) * 2, dtype=torch.float32),
            "index": torch.tensor(index, dtype=torch.int64),
        }


class PhantomFolder(LungMaskFolder):
    """A folder written by :func:`training.phantoms.write_phantom_png`, labels included.

    Items are those of :class:`LungMaskFolder` plus ``"labels"``: ``(len(FINDINGS),)`` float32
    0/1; the pixel spacing comes from each phantom's ``labels/<stem>.json``.
    """

    def __init__(self, root: str | Path, *, image_size: int | None = None, names: Sequence[str] | None = None) -> None:
        super().__init__(root, image_size=image_size, names=names)
        self._meta: dict[str, dict] = {}
        for item in self.items:
            path = self.root / "labels" / f"{item.name}.json"
            if not path.is_file():
                raise FileNotFoundError(f"phantom {item.name} has no label file {path}")
            meta = json.loads(path.read_text())
            missing = [name for name in FINDINGS if name not in meta.get("labels", {})]
            if missing:
                raise ValueError(f"{path} lacks the label(s) {missing}")
            self._meta[item.name] = meta

    def metadata(self, index: int) -> dict:
        """The phantom's JSON description (labels, lesions, pixel spacing, size, seed)."""
        return self._meta[self.items[index].name]

    @property
    def labels(self) -> np.ndarray:
        """``(N, len(FINDINGS))`` float32 label matrix."""
        rows = [[float(bool(self._meta[i.name]["labels"][n])) for n in FINDINGS] for i in self.items]
        return np.array(rows, dtype=np.float32).reshape(-1, len(FINDINGS))

    def _spacing(self, index: int, shape: tuple[int, int]) -> tuple[float, float] | None:
        spacing = self.metadata(index).get("pixel_spacing_mm")
        return (float(spacing[0]), float(spacing[1])) if spacing else None

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # the writer's masks are the patient's sides already: no re-assignment by position
        item = self.items[index]
        return read_grey_image(item.image), read_mask(item.first_mask), read_mask(item.second_mask)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        out = super().__getitem__(index)
        labels = self.metadata(index)["labels"]
        out["labels"] = torch.tensor([float(bool(labels[name])) for name in FINDINGS], dtype=torch.float32)
        return out
