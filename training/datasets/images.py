"""Reading and resizing grey images for the dataset readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: Image file suffixes the folder readers accept (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff")


def read_grey_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W)`` float32 in [0, 1].

    8-bit images are divided by 255 and 16-bit ones by 65535; colour or alpha images (some NIH
    PNGs are RGBA) are converted to grey first. Raises ValueError for an unreadable file.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.float32)
                top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
                return np.clip(arr / top, 0.0, 1.0)
            if img.mode == "F":
                arr = np.asarray(img).astype(np.float32)
                return np.clip(arr, 0.0, 1.0)
            if img.mode != "L":
                img = img.convert("L")
            return np.array(img, dtype=np.float32) / 255.0
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as ``(H, W)`` bool (any non-zero grey value is inside)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("1", "L", "I", "I;16", "F"):
                img = img.convert("L")
            return np.asarray(img) > 0
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read mask {path}: {exc}") from exc


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(H, W)`` float32 to ``(size, size)`` (bilinear, with PIL's antialiasing)."""
    return np.array(Image.fromarray(image.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(H, W)`` bool to ``(size, size)`` bool (nearest neighbour)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize((size, size), Image.NEAREST)
    return np.array(img) > 127
