"""Synthetic chest radiographs (PA view) with known lung masks and injected findings.

A phantom is drawn in two steps. First every random choice is made in *normalised* image
coordinates ``(x, y)`` in ``[0, 1]`` (x = column / width, y = row / height), with random texture
fields on fixed, small grids; nothing in this step depends on the output size. Then the scene is
rendered at the requested size. So one seed gives the same "patient" at 64, 256 or 2048 pixels;
only the final pixel noise differs.

Anatomy (display orientation, bright = dense): body outline and soft tissue, shoulders, two lungs
(dark) of varied shape, mediastinum and heart (bright; the heart bulges towards the patient's left,
i.e. the image's right side in a PA view), trachea, hila with branching vessels, hemidiaphragms and
a gastric bubble, spine, posterior ribs (subtle), clavicles, exposure and noise.

Findings, each with its characteristic place (so that the lung-mask policies matter):

- **Mass**: a large round, slightly lobulated opacity, radius 15-30 mm, inside one lung.
- **Nodule**: one to three small round opacities, radius 3-8 mm, inside the lungs.
- **Pneumonia**: patchy lobar consolidation in one lung, mostly the lower zone.
- **Edema**: bilateral perihilar "bat wing" haze around both hila (reaching over the medial lung
  border, partly outside a tight lung mask) with septal (Kerley B) lines at the lateral bases.
- **Fibrosis**: a reticular pattern at the lung periphery and bases, along the pleura.

Pixel spacing is that of a 2048-pixel detector of 0.143 mm pixels scaled to the output size.

Lungs are procedural by default; ``lung_shapes=training.lung_shapes.lung_shape_bank("train")``
draws them from real lung outlines instead (the ``"test"`` split holds shapes out).

Speed (one core): about 20 ms at 256 px, 0.3 s at 2048 px; the scene is rendered at most at
:data:`RENDER_MAX` pixels and upsampled, lung masks are rasterised at the full size.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from models.labels import FINDINGS
from training.lung_shapes import LungShapePair, lung_shape_bank

if TYPE_CHECKING:
    from training.dicom_export import RadiographIdentity

logger = logging.getLogger(__name__)

#: Version of the generator's output: bumped whenever the same seed would draw a different image,
#: so that a model's training-data fingerprint names the phantoms it saw.
GENERATOR_VERSION = "2"

#: Detector the phantoms imitate: 2048 pixels of 0.143 mm (a 293 mm field of view).
DETECTOR_PIXELS = 2048
DETECTOR_SPACING_MM = 0.143
FIELD_OF_VIEW_MM = DETECTOR_PIXELS * DETECTOR_SPACING_MM

#: Accepted output sizes (square images, pixels per side).
MIN_SIZE = 32
MAX_SIZE = 4096

#: The scene is rendered at most at this resolution and upsampled above it (speed at 2048 px).
RENDER_MAX = 512

#: Grid on which lesion positions are chosen (independent of the output size, for determinism).
PLACEMENT_GRID = 128

#: Lesion size ranges (radius, mm).
MASS_RADIUS_MM = (15.0, 30.0)
NODULE_RADIUS_MM = (3.0, 8.0)

#: Fraction of a region finding's peak (envelope) above which a pixel belongs to its lesion mask.
REGION_MASK_FRACTION = 0.3

#: File layout written by :func:`write_phantom_png` (read by ``training.datasets.folders``).
PNG_IMAGE_DIR = "images"
PNG_LEFT_MASK_DIR = "leftMask"
PNG_RIGHT_MASK_DIR = "rightMask"
PNG_LABEL_DIR = "labels"


@dataclass(frozen=True, eq=False)
class Lesion:
    """Where one injected finding is.

    Attributes
    ----------
    kind:
        The finding, one of :data:`models.labels.FINDINGS`.
    center_xy:
        Centre ``(x, y)`` = (column, row) in pixels of the phantom's image; for region findings
        the centroid of ``mask``.
    radius_px:
        Radius in pixels for round lesions (Mass, Nodule); ``None`` for region findings.
    mask:
        ``(H, W)`` bool region of the finding (round lesions too: the disk).
    side:
        ``"left"``, ``"right"`` (the patient's) or ``"both"``.
    """

    kind: str
    center_xy: tuple[float, float]
    radius_px: float | None
    mask: np.ndarray
    side: str


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic PA chest radiograph with its ground truth.

    Attributes
    ----------
    image:
        ``(H, W)`` float32 in [0, 1], display orientation (bright = dense), PA view: the patient's
        left lung is on the image's right side.
    left_lung, right_lung:
        ``(H, W)`` bool masks of the patient's left and right lung (the visible, aerated lung,
        excluding heart and mediastinum).
    labels:
        ``{finding: present}`` for every name in :data:`models.labels.FINDINGS`.
    lesions:
        One :class:`Lesion` per injected lesion (a Nodule label may have several).
    pixel_spacing_mm:
        ``(row, column)`` spacing in mm.
    seed:
        The integer seed it was drawn from, or ``None`` when a Generator was passed.
    """

    image: np.ndarray
    left_lung: np.ndarray
    right_lung: np.ndarray
    labels: dict[str, bool]
    lesions: list[Lesion]
    pixel_spacing_mm: tuple[float, float]
    seed: int | None = None

    @property
    def size(self) -> int:
        """Pixels per side."""
        return int(self.image.shape[0])

    def label_vector(self) -> np.ndarray:
        """``(len(FINDINGS),)`` float32 0/1 vector in :data:`FINDINGS` order."""
        return np.array([float(self.labels[name]) for name in FINDINGS], dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# small geometry helpers (normalised coordinates)


def _chaikin(points: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Smooth a closed polygon ``(K, 2)`` by Chaikin corner cutting."""
    pts = points
    for _ in range(iterations):
        nxt = np.roll(pts, -1, axis=0)
        pts = np.stack([0.75 * pts + 0.25 * nxt, 0.25 * pts + 0.75 * nxt], axis=1).reshape(-1, 2)
    return pts


def _to_pixels(points: np.ndarray, n: int) -> list[tuple[float, float]]:
    """Normalised ``(x, y)`` points to PIL pixel coordinates (pixel centres at integers)."""
    px = points * n - 0.5
    return [(float(x), float(y)) for x, y in px]


def _raster_polygon(points: np.ndarray, n: int) -> np.ndarray:
    """``(n, n)`` bool raster of a closed polygon given in normalised coordinates."""
    canvas = Image.new("L", (n, n), 0)
    ImageDraw.Draw(canvas).polygon(_to_pixels(points, n), fill=255)
    return np.asarray(canvas) > 0


def _resize(array: np.ndarray, n: int, resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize a float array to ``(n, n)`` float32 with PIL."""
    if array.shape == (n, n):
        return array.astype(np.float32, copy=False)
    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize((n, n), resample))


def _resize_mask(mask: np.ndarray, n: int) -> np.ndarray:
    """Resize a bool mask to ``(n, n)`` (nearest neighbour)."""
    if mask.shape == (n, n):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize((n, n), Image.NEAREST)
    return np.asarray(img) > 127


def _noise_field(rng: np.random.Generator, grid: int) -> np.ndarray:
    """A random ``(grid, grid)`` field, zero mean, unit std (drawn size-independently)."""
    f = rng.standard_normal((grid, grid)).astype(np.float32)
    return (f - f.mean()) / (f.std() + 1e-6)


def _field_at(field_: np.ndarray, n: int) -> np.ndarray:
    """A small random field, smoothly upsampled to ``(n, n)`` and re-standardised."""
    up = _resize(field_, n, Image.BICUBIC)
    return (up - up.mean()) / (up.std() + 1e-6)


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates ``(x, y)`` for an ``(n, n)`` image, each (1, n)/(n, 1)."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    return c[None, :], c[:, None]


def _rotate(points: np.ndarray, angle: float, center: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    p = points - np.asarray(center)
    return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1]], axis=1) + np.asarray(center)


def _polyline(draw: ImageDraw.ImageDraw, points: np.ndarray, n: int, width: float, fill: float) -> None:
    draw.line(_to_pixels(points, n), fill=fill, width=max(1, int(round(width * n))), joint="curve")


# ----------------------------------------------------------------------------------------------
# the scene: every random choice, in normalised coordinates


@dataclass
class _Finding:
    kind: str
    side: str
    params: dict[str, object] = field(default_factory=dict)


@dataclass
class _Scene:
    body: np.ndarray
    lungs: dict[str, np.ndarray]  # side -> closed outline (normalised), reaching under the heart
    silhouette: np.ndarray  # mediastinum + heart outline (closed polygon)
    fill_between_lungs: bool  # real lung shapes: the mediastinum also fills the gap between them
    trachea: np.ndarray  # polyline
    hila: dict[str, tuple[float, float]]
    spine_x: float
    spine_width: float
    ribs: list[np.ndarray]
    clavicles: list[np.ndarray]
    vessels: list[tuple[np.ndarray, float, float]]  # polyline, width, strength
    bubble: tuple[float, float, float, float] | None
    fields: dict[str, np.ndarray]
    exposure: dict[str, float]
    findings: list[_Finding]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _lung_polygon(rng: np.random.Generator, side: str, cx: float, rot: float, heart_x: float) -> np.ndarray:
    """A closed lung outline (normalised), the patient's ``side`` lung, drawn on the image.

    The patient's right lung lies on the image's left (smaller x). Control points go apex ->
    lateral wall -> costophrenic angle -> diaphragm dome -> medial border. The medial border runs
    under the mediastinal silhouette (``heart_x`` = the heart border's distance from the midline),
    which later cuts the visible lung.
    """
    sign = -1.0 if side == "right" else 1.0  # direction from the midline towards this lung
    u = lambda lo, hi: _u(rng, lo, hi)  # noqa: E731

    lateral = u(0.33, 0.41)
    apex_y = u(0.09, 0.16)
    cp_y = u(0.70, 0.79) + (0.0 if side == "right" else 0.02)
    dome_y = cp_y - u(0.05, 0.11)
    apex_x = u(0.08, 0.13)
    pts = [
        (apex_x, apex_y),  # apex
        (0.5 * (apex_x + lateral) + u(-0.02, 0.02), apex_y + u(0.0, 0.02)),
        (lateral - u(0.03, 0.06), apex_y + u(0.10, 0.15)),  # upper lateral
        (lateral + u(-0.01, 0.01), 0.45 + u(-0.03, 0.03)),  # mid lateral
        (lateral + u(-0.005, 0.02), cp_y - 0.06),
        (lateral + u(0.0, 0.02), cp_y),  # costophrenic angle
        (lateral + u(0.0, 0.02), cp_y),
        (lateral - 0.04, cp_y - 0.025),
        (0.5 * lateral + 0.5 * heart_x + u(-0.03, 0.03), dome_y),  # dome
        (heart_x - 0.02, dome_y + u(0.0, 0.03)),  # behind the heart
        (0.02, dome_y + 0.02),
        (0.02, 0.45),
        (0.03, 0.25),
        (apex_x - 0.03, apex_y + 0.04),
    ]
    arr = np.array(pts, dtype=np.float64)
    arr[:, 0] += rng.normal(0.0, 0.004, size=len(arr))
    arr[:, 1] += rng.normal(0.0, 0.004, size=len(arr))
    smooth = _chaikin(arr, 3)
    xy = np.stack([cx + sign * smooth[:, 0], smooth[:, 1]], axis=1)
    return _rotate(xy, rot, (0.5, 0.5))


def _silhouette(rng: np.random.Generator, cx: float, rot: float, heart_left: float, heart_right: float) -> np.ndarray:
    """Mediastinum and heart outline (normalised): aortic knob and heart bulge to the patient's left."""
    u = lambda lo, hi: _u(rng, lo, hi)  # noqa: E731
    top = u(0.045, 0.06)
    heart_y = u(0.62, 0.68)
    pts = [
        (cx - top, -0.03),
        (cx + top, -0.03),
        (cx + top + 0.005, 0.18),
        (cx + u(0.085, 0.11), u(0.26, 0.30)),  # aortic knob
        (cx + u(0.06, 0.075), 0.35),
        (cx + u(0.075, 0.09), 0.41),  # pulmonary trunk
        (cx + 0.75 * heart_left, 0.49),
        (cx + heart_left, heart_y),  # left ventricle
        (cx + heart_left - 0.02, 0.76),
        (cx + 0.5 * heart_left, 0.86),
        (cx - 0.5 * heart_right, 0.86),
        (cx - heart_right, 0.74),
        (cx - heart_right, heart_y - 0.02),  # right atrium
        (cx - u(0.055, 0.07), 0.47),
        (cx - u(0.05, 0.065), 0.32),  # superior vena cava
        (cx - top - 0.005, 0.18),
    ]
    arr = np.array(pts, dtype=np.float64)
    arr += rng.normal(0.0, 0.003, size=arr.shape)
    return _rotate(_chaikin(arr, 3), rot, (0.5, 0.5))


def _branches(
    rng: np.random.Generator,
    start: tuple[float, float],
    direction: float,
    length: float,
    width: float,
    strength: float,
    depth: int,
) -> list[tuple[np.ndarray, float, float]]:
    """A small random vessel tree from ``start`` (normalised), as (polyline, width, strength)."""
    out: list[tuple[np.ndarray, float, float]] = []
    steps = 4
    pts = [np.array(start, dtype=np.float64)]
    ang = direction
    for _ in range(steps):
        ang += rng.normal(0.0, 0.15)
        pts.append(pts[-1] + (length / steps) * np.array([math.cos(ang), math.sin(ang)]))
    line = np.array(pts)
    out.append((line, width, strength))
    if depth > 0:
        for k in (1, 2, 3):
            if rng.random() < 0.65:
                sub_dir = ang + rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.7)
                out += _branches(rng, tuple(line[k]), sub_dir, length * 0.7, width * 0.6, strength * 0.75, depth - 1)
    return out


def _draw_scene(
    rng: np.random.Generator, findings: Sequence[str], lung_shapes: Sequence[LungShapePair] | None = None
) -> _Scene:
    """Make every random choice of one phantom (size-independent)."""
    u = lambda lo, hi: _u(rng, lo, hi)  # noqa: E731

    cx = 0.5 + u(-0.025, 0.025)
    rot = math.radians(u(-3.0, 3.0))

    # body outline: shoulders at the top, chest wall down the sides, abdomen at the bottom
    bw = u(0.42, 0.48)
    sh = u(0.47, 0.53)
    body_pts = np.array(
        [
            (cx - 0.08, -0.05),
            (cx - sh, u(0.0, 0.05)),
            (cx - sh - 0.02, 0.12),
            (cx - bw - 0.01, 0.30),
            (cx - bw, 0.65),
            (cx - bw + u(0.0, 0.04), 1.05),
            (cx + bw - u(0.0, 0.04), 1.05),
            (cx + bw, 0.65),
            (cx + bw + 0.01, 0.30),
            (cx + sh + 0.02, 0.12),
            (cx + sh, u(0.0, 0.05)),
            (cx + 0.08, -0.05),
        ]
    )
    body = _rotate(_chaikin(body_pts, 3), rot, (0.5, 0.5))

    if lung_shapes:
        # a real pair of lung outlines placed in the thorax; the heart and mediastinum fill the
        # gap between them (a small procedural heart only adds its lower bulge)
        pair = lung_shapes[int(rng.integers(len(lung_shapes)))]
        reach_right, reach_left = u(0.33, 0.41), u(0.33, 0.41)
        top, bottom = u(0.09, 0.16), u(0.74, 0.82)

        def place(points: np.ndarray) -> np.ndarray:
            xy = np.stack(
                [cx - reach_right + points[:, 0] * (reach_left + reach_right), top + points[:, 1] * (bottom - top)],
                axis=1,
            )
            return _rotate(xy, rot, (0.5, 0.5))

        lungs = {"right": place(pair.right), "left": place(pair.left)}
        silhouette = _silhouette(rng, cx, rot, u(0.07, 0.11), u(0.04, 0.07))
        medial = {side: poly for side, poly in lungs.items()}
    else:
        heart_left = u(0.14, 0.20)
        heart_right = u(0.08, 0.12)
        lungs = {
            "right": _lung_polygon(rng, "right", cx, rot, heart_right),
            "left": _lung_polygon(rng, "left", cx, rot, heart_left),
        }
        silhouette = _silhouette(rng, cx, rot, heart_left, heart_right)
        medial = {"right": silhouette, "left": silhouette}
    carina_y = u(0.30, 0.35)
    trachea = _rotate(
        np.array([(cx + u(-0.01, 0.01), 0.0), (cx, carina_y * 0.6), (cx + u(-0.008, 0.008), carina_y)]),
        rot,
        (0.5, 0.5),
    )

    hila: dict[str, tuple[float, float]] = {}
    vessels: list[tuple[np.ndarray, float, float]] = []
    for side in ("right", "left"):
        sign = -1.0 if side == "right" else 1.0
        hy = u(0.40, 0.46) if side == "right" else u(0.37, 0.43)
        # the hilum sits at the mediastinal border at that height
        if lung_shapes:
            band = medial[side][np.abs(medial[side][:, 1] - hy) < 0.02]
            side_pts = band[band[:, 0] < cx + 0.1] if side == "right" else band[band[:, 0] > cx - 0.1]
            hx = float(side_pts[:, 0].max() if side == "right" else side_pts[:, 0].min()) if len(side_pts) else cx + sign * 0.08
        else:
            band = silhouette[np.abs(silhouette[:, 1] - hy) < 0.02]
            side_pts = band[band[:, 0] < cx] if side == "right" else band[band[:, 0] > cx]
            hx = float(side_pts[:, 0].min() if side == "right" else side_pts[:, 0].max()) if len(side_pts) else cx + sign * 0.08
        hila[side] = (hx, hy)
        for ang in np.linspace(-1.2, 1.2, 6):
            base = math.pi if side == "right" else 0.0
            direction = base - sign * ang + rng.normal(0, 0.08)
            vessels += _branches(rng, (hx - sign * 0.01, hy), direction, u(0.08, 0.12), u(0.007, 0.010), 1.0, 2)

    ribs: list[np.ndarray] = []
    first_rib = u(0.11, 0.15)
    gap = u(0.062, 0.072)
    for side in ("right", "left"):
        sign = -1.0 if side == "right" else 1.0
        for k in range(10):
            y0 = first_rib + k * gap
            t = np.linspace(0.0, 1.0, 12)
            xs = cx + sign * (0.03 + t * (0.40 + 0.02 * math.sin(k)))
            ys = y0 - 0.03 * np.sin(np.pi * t * 0.8) + 0.09 * t**2 + 0.01 * k * t
            ribs.append(_rotate(np.stack([xs, ys], axis=1), rot, (0.5, 0.5)))

    clavicles = []
    for side in ("right", "left"):
        sign = -1.0 if side == "right" else 1.0
        y0 = u(0.13, 0.17)
        t = np.linspace(0.0, 1.0, 10)
        xs = cx + sign * (0.05 + 0.28 * t)
        ys = y0 - 0.06 * t + 0.012 * np.sin(2 * np.pi * t)
        clavicles.append(_rotate(np.stack([xs, ys], axis=1), rot, (0.5, 0.5)))

    left_poly = lungs["left"]
    bubble = None
    if rng.random() < 0.7:
        lateral = left_poly[left_poly[:, 0] > cx + 0.15]
        bottom = lateral[np.argmax(lateral[:, 1])]
        bubble = (float(bottom[0]) - u(0.04, 0.1), float(bottom[1]) + u(0.04, 0.07), u(0.03, 0.06), u(0.02, 0.035))

    fields = {
        "soft": _noise_field(rng, 6),
        "lung": _noise_field(rng, 10),
        "texture": _noise_field(rng, 48),
        "exposure": _noise_field(rng, 3),
    }
    exposure = {
        "mu": u(1.5, 2.2),
        "lung_air": u(0.46, 0.60),
        "gamma": u(0.85, 1.2),
        "noise": u(0.006, 0.02),
        "bone": u(0.7, 1.3),
        "heel": u(-0.06, 0.06),
        "vessels": u(0.7, 1.3),
    }

    scene = _Scene(
        body=body,
        lungs=lungs,
        silhouette=silhouette,
        fill_between_lungs=bool(lung_shapes),
        trachea=trachea,
        hila=hila,
        spine_x=cx,
        spine_width=u(0.05, 0.065),
        ribs=ribs,
        clavicles=clavicles,
        vessels=vessels,
        bubble=bubble,
        fields=fields,
        exposure=exposure,
        findings=[],
    )
    scene.findings = [_draw_finding(rng, kind, scene) for kind in findings]
    return scene


def _silhouette_mask(scene: _Scene, n: int) -> np.ndarray:
    """``(n, n)`` bool heart and mediastinum (with real lung shapes: also the gap between them)."""
    sil = _raster_polygon(scene.silhouette, n)
    if scene.fill_between_lungs:
        right = _raster_polygon(scene.lungs["right"], n)
        left = _raster_polygon(scene.lungs["left"], n)
        both_rows = right.any(axis=1) & left.any(axis=1)
        right_edge = n - 1 - np.argmax(right[:, ::-1], axis=1)
        left_edge = np.argmax(left, axis=1)
        cols = np.arange(n)[None, :]
        sil |= (cols > right_edge[:, None]) & (cols < left_edge[:, None]) & both_rows[:, None]
    return sil


def _lung_masks(scene: _Scene, n: int) -> dict[str, np.ndarray]:
    """The visible lung masks at ``(n, n)``: lung outline minus the mediastinal silhouette."""
    silhouette = _silhouette_mask(scene, n)
    return {side: _raster_polygon(poly, n) & ~silhouette for side, poly in scene.lungs.items()}


def _placement_candidates(scene: _Scene, side: str, margin_norm: float) -> np.ndarray:
    """Normalised ``(x, y)`` cell centres of ``side``'s lung at least ``margin_norm`` from its edge."""
    g = PLACEMENT_GRID
    mask = _lung_masks(scene, g)[side]
    dist = ndimage.distance_transform_edt(mask) / g
    ys, xs = np.nonzero(dist >= margin_norm)
    if len(xs) == 0:  # a very small lung: take its deepest cells
        ys, xs = np.nonzero(dist >= 0.8 * dist.max())
    return np.stack([(xs + 0.5) / g, (ys + 0.5) / g], axis=1)


def _draw_finding(rng: np.random.Generator, kind: str, scene: _Scene) -> _Finding:
    """Random placement and appearance of one finding (normalised units)."""
    mm = 1.0 / FIELD_OF_VIEW_MM
    sides = ("right", "left")
    if kind == "Mass":
        side = sides[int(rng.integers(2))]
        radius = float(rng.uniform(*MASS_RADIUS_MM)) * mm
        cand = _placement_candidates(scene, side, radius * 0.9)
        center = cand[int(rng.integers(len(cand)))]
        return _Finding(
            kind,
            side,
            {
                "centers": [tuple(center)],
                "radii": [radius],
                "density": float(rng.uniform(0.10, 0.28)),
                "lobes": rng.normal(0.0, 0.06, size=4).tolist(),
                "phases": rng.uniform(0, 2 * math.pi, size=4).tolist(),
            },
        )
    if kind == "Nodule":
        count = int(rng.choice([1, 1, 2, 3]))
        centers, radii, lung_sides = [], [], []
        for _ in range(count):
            side = sides[int(rng.integers(2))]
            radius = float(rng.uniform(*NODULE_RADIUS_MM)) * mm
            cand = _placement_candidates(scene, side, radius * 1.5 + 0.01)
            centers.append(tuple(cand[int(rng.integers(len(cand)))]))
            radii.append(radius)
            lung_sides.append(side)
        side = lung_sides[0] if len(set(lung_sides)) == 1 else "both"
        return _Finding(
            kind,
            side,
            {"centers": centers, "radii": radii, "sides": lung_sides, "density": float(rng.uniform(0.16, 0.36))},
        )
    if kind == "Pneumonia":
        side = sides[int(rng.integers(2))]
        lower = rng.random() < 0.7
        mask = _lung_masks(scene, PLACEMENT_GRID)[side]
        rows = np.nonzero(mask.any(axis=1))[0]
        top, bottom = (rows.min() + 0.5) / PLACEMENT_GRID, (rows.max() + 0.5) / PLACEMENT_GRID
        zone_y = bottom - (bottom - top) * (rng.uniform(0.12, 0.3) if lower else rng.uniform(0.45, 0.7))
        cand = _placement_candidates(scene, side, 0.03)
        near = cand[np.abs(cand[:, 1] - zone_y) < 0.05]
        if len(near) == 0:
            near = cand
        center = near[int(rng.integers(len(near)))]
        blobs = [
            (
                float(center[0] + rng.normal(0, 0.035)),
                float(center[1] + rng.normal(0, 0.025)),
                float(rng.uniform(0.025, 0.05)),
            )
            for _ in range(int(rng.integers(3, 7)))
        ]
        return _Finding(
            kind,
            side,
            {"blobs": blobs, "density": float(rng.uniform(0.14, 0.30)), "texture": _noise_field(rng, 24)},
        )
    if kind == "Edema":
        lines = []
        for side in sides:
            poly = scene.lungs[side]
            sign = -1.0 if side == "right" else 1.0
            for _ in range(int(rng.integers(4, 9))):
                y = float(rng.uniform(0.55, 0.72))
                row = poly[np.abs(poly[:, 1] - y) < 0.02]
                lat = (row[:, 0].min() if side == "right" else row[:, 0].max()) if len(row) else None
                if lat is None:
                    continue
                length = float(rng.uniform(8.0, 20.0)) * mm
                x0 = float(lat + sign * 0.01)
                lines.append(np.array([(x0, y), (x0 - sign * length, y + rng.normal(0, 0.003))]))
        return _Finding(
            kind,
            "both",
            {
                "sigma": float(rng.uniform(0.08, 0.12)),
                "density": float(rng.uniform(0.12, 0.26)),
                "lines": lines,
                "line_density": float(rng.uniform(0.05, 0.10)),
                "texture": _noise_field(rng, 24),
            },
        )
    if kind == "Fibrosis":
        return _Finding(
            kind,
            "both",
            {
                "density": float(rng.uniform(0.12, 0.26)),
                "reach": float(rng.uniform(0.03, 0.055)),
                "net": _noise_field(rng, int(rng.integers(44, 60))),
                "basal": float(rng.uniform(0.45, 0.6)),
            },
        )
    raise ValueError(f"unknown finding {kind!r}; findings are {', '.join(FINDINGS)}")


# ----------------------------------------------------------------------------------------------
# rendering


def _window(n: int, center: tuple[float, float], reach: float) -> tuple[slice, slice]:
    """Row and column slices of an ``(n, n)`` image covering ``center`` +- ``reach`` (normalised)."""
    lo_x = max(0, int(math.floor((center[0] - reach) * n)))
    hi_x = min(n, int(math.ceil((center[0] + reach) * n)) + 1)
    lo_y = max(0, int(math.floor((center[1] - reach) * n)))
    hi_y = min(n, int(math.ceil((center[1] + reach) * n)) + 1)
    return slice(lo_y, hi_y), slice(lo_x, hi_x)


def _disk_profile(
    out: np.ndarray, center: tuple[float, float], radius: float, lobes=None, phases=None
) -> None:
    """Max-blend a soft-edged (optionally lobulated) disk, peak 1, into the square ``out``."""
    n = out.shape[0]
    rows, cols = _window(n, center, radius * 1.4 + 2.0 / n)
    x, y = _grid(n)
    dx, dy = x[:, cols] - center[0], y[rows, :] - center[1]
    r = np.sqrt(dx * dx + dy * dy)
    rad = np.full_like(r, radius)
    if lobes:
        theta = np.arctan2(dy, dx)
        for k, (a, p) in enumerate(zip(lobes, phases), start=2):
            rad = rad * (1.0 + a * np.cos(k * theta + p))
    edge = max(radius * 0.15, 0.75 / n)
    t = np.clip((rad - r) / edge, -1.0, 1.0)
    core = np.sqrt(np.clip(1.0 - (r / np.maximum(rad, 1e-6)) ** 2, 0.0, 1.0))
    disk = np.clip(0.5 + 0.5 * t, 0.0, 1.0) * (0.45 + 0.55 * core)
    np.maximum(out[rows, cols], disk, out=out[rows, cols])


def _finding_density(
    f: _Finding, scene: _Scene, n: int, lungs: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Added density ``(n, n)`` float32 of one finding rendered at ``n``, and its region.

    The region is an ``(n, n)`` bool mask for region findings, ``None`` for round lesions.
    """
    x, y = _grid(n)
    p = f.params
    if f.kind in ("Mass", "Nodule"):
        out = np.zeros((n, n), np.float32)
        for center, radius in zip(p["centers"], p["radii"]):  # type: ignore[call-overload]
            _disk_profile(out, center, radius, p.get("lobes"), p.get("phases"))
        return out * float(p["density"]), None  # type: ignore[arg-type]
    if f.kind == "Pneumonia":
        blob = np.zeros((n, n), np.float32)
        for bx, by, br in p["blobs"]:  # type: ignore[attr-defined]
            blob = np.maximum(blob, np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * br * br)))
        tex = _field_at(p["texture"], n)  # type: ignore[arg-type]
        patchy = np.clip(1.6 * blob * (0.8 + 0.3 * tex) - 0.3, 0.0, 1.0)
        lung = ndimage.gaussian_filter(lungs[f.side].astype(np.float32), max(0.6, n / 512))
        region = (blob > 0.45) & lungs[f.side]
        return (patchy * lung * float(p["density"])).astype(np.float32), region  # type: ignore[arg-type]
    if f.kind == "Edema":
        haze = np.zeros((n, n), np.float32)
        sigma = float(p["sigma"])  # type: ignore[arg-type]
        for side, (hx, hy) in scene.hila.items():
            sign = -1.0 if side == "right" else 1.0
            # a wing spreading laterally and downwards from the hilum, sparing the periphery
            d2 = ((x - hx - sign * 0.03) / 1.3) ** 2 + ((y - hy - 0.03) / 1.0) ** 2
            haze = np.maximum(haze, np.exp(-d2 / (2 * sigma * sigma)))
        tex = _field_at(p["texture"], n)  # type: ignore[arg-type]
        haze = haze * (0.85 + 0.15 * tex)
        canvas = Image.new("F", (n, n), 0.0)
        draw = ImageDraw.Draw(canvas)
        for line in p["lines"]:  # type: ignore[attr-defined]
            _polyline(draw, line, n, 1.0 / FIELD_OF_VIEW_MM, 1.0)
        septal = np.asarray(canvas) * (lungs["left"] | lungs["right"])
        region = (haze > REGION_MASK_FRACTION) | (septal > 0)
        density = haze * float(p["density"]) + septal * float(p["line_density"])  # type: ignore[arg-type]
        return density.astype(np.float32), region
    if f.kind == "Fibrosis":
        g = PLACEMENT_GRID * 2
        small = _lung_masks(scene, g)
        both = small["left"] | small["right"]
        dist = ndimage.distance_transform_edt(both) / g
        reach = float(p["reach"])  # type: ignore[arg-type]
        ys = (np.arange(g) + 0.5) / g
        basal = 1.0 / (1.0 + np.exp(-(ys - float(p["basal"])) / 0.06))  # type: ignore[arg-type]
        weight = np.where(both, np.exp(-dist / reach), 0.0) * (0.3 + 0.7 * basal[:, None])
        weight = _resize(weight.astype(np.float32), n)
        net = _field_at(p["net"], n)  # type: ignore[arg-type]
        reticular = np.exp(-((net / 0.3) ** 2))
        lung = (lungs["left"] | lungs["right"]).astype(np.float32)
        region = (weight > REGION_MASK_FRACTION * float(weight.max())) & (lung > 0)
        density = weight * (0.2 + 0.8 * reticular) * lung * float(p["density"])  # type: ignore[arg-type]
        return density.astype(np.float32), region
    raise ValueError(f"unknown finding {f.kind!r}")


def _lines_canvas(n: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    canvas = Image.new("F", (n, n), 0.0)
    return canvas, ImageDraw.Draw(canvas)


def _abdomen(lung_or_heart: np.ndarray) -> np.ndarray:
    """``(n, n)`` float32 in [0, 1]: the region below the lungs and heart.

    Columns lateral to the lungs continue the costophrenic level and fade out over 6 % of the width.
    """
    n = lung_or_heart.shape[0]
    has = lung_or_heart.any(axis=0)
    if not has.any():
        return np.zeros((n, n), np.float32)
    cols = np.arange(n)
    bottom = n - np.argmax(lung_or_heart[::-1, :], axis=0)
    rows = np.rint(np.interp(cols, cols[has], bottom[has]))
    inside = cols[has]
    gap = np.maximum(inside.min() - cols, cols - inside.max()).clip(0) / n
    fade = np.clip(1.0 - gap / 0.06, 0.0, 1.0)
    return ((np.arange(n)[:, None] >= rows[None, :]) * fade[None, :]).astype(np.float32)


#: Density at which the display reaches white (before the exposure's gamma).
_WHITE_DENSITY = 1.25


def _render(scene: _Scene, n: int) -> tuple[np.ndarray, dict[str, np.ndarray], list[np.ndarray | None]]:
    """Render at ``n``: returns the image (before noise), the lung masks, each finding's region.

    Sharp anatomy is summed into one density map and blurred once (the detector's blur); smooth
    random fields and the findings are added after that.
    """
    x, y = _grid(n)
    ex = scene.exposure
    lungs = _lung_masks(scene, n)
    lung_mask = lungs["left"] | lungs["right"]
    lung_any = lung_mask.astype(np.float32)
    blur = max(0.5, n / 400)
    bone = ex["bone"]

    body = _raster_polygon(scene.body, n)
    # soft tissue is thicker in the middle of the chest
    thickness = np.clip(1.0 - ((x - scene.spine_x) / 0.6) ** 2, 0.2, 1.0)
    sharp = body * (0.45 + 0.2 * thickness)

    apical = np.clip((y - 0.08) / 0.25, 0.45, 1.0)
    air = ex["lung_air"] * 0.62 * apical * (0.92 + 0.08 * _field_at(scene.fields["lung"], n))

    behind = np.zeros((n, n), bool)
    for poly in scene.lungs.values():
        behind |= _raster_polygon(poly, n)
    sil_mask = _silhouette_mask(scene, n)
    # heart and mediastinum; below the hemidiaphragms the abdomen is as dense as the heart
    sharp += 0.22 * np.maximum(sil_mask, _abdomen(behind | sil_mask)) * body
    # aerated lung, and (faintly) the lung behind the heart
    sharp -= air * (lung_any + 0.16 * (behind & sil_mask))

    canvas, draw = _lines_canvas(n)
    _polyline(draw, scene.trachea, n, 0.026, 1.0)
    sharp -= 0.10 * np.asarray(canvas)

    # bones: spine (with vertebral bodies), ribs, clavicles
    vert = 0.75 + 0.25 * np.cos(np.pi * y / 0.045) ** 2
    spine = np.clip(1.0 - np.abs(x - scene.spine_x) / scene.spine_width, 0.0, 1.0) ** 0.5
    sharp += 0.10 * bone * spine * vert
    canvas, draw = _lines_canvas(n)
    for rib in scene.ribs:
        _polyline(draw, rib, n, 0.022, 0.035 * bone)
    for clavicle in scene.clavicles:
        _polyline(draw, clavicle, n, 0.028, 0.12 * bone)
    sharp += np.asarray(canvas) * body

    # hilar vessels, visible inside the lungs, fading towards the periphery
    canvas, draw = _lines_canvas(n)
    for line, width, strength in scene.vessels:
        _polyline(draw, line, n, width, strength)
    sharp += 0.09 * ex["vessels"] * np.asarray(canvas) * lung_any

    density = ndimage.gaussian_filter(sharp.astype(np.float32), blur, truncate=3.0)
    density += 0.03 * _field_at(scene.fields["soft"], n) * density
    density += 0.012 * _field_at(scene.fields["texture"], n) * lung_any
    if scene.bubble is not None:
        bx, by, rx, ry = scene.bubble
        rows, cols = _window(n, (bx, by), max(rx, ry) + 2.0 / n)
        inside = np.clip(1.0 - ((x[:, cols] - bx) / rx) ** 2 - ((y[rows, :] - by) / ry) ** 2, 0.0, 1.0)
        density[rows, cols] -= 0.16 * np.sqrt(inside) * (1.0 - lung_any[rows, cols])

    rendered = [_finding_density(f, scene, n, lungs) for f in scene.findings]
    for fd, _ in rendered:
        density += fd

    # detector response (saturating), exposure, heel effect, gamma
    mu = ex["mu"]
    image = (1.0 - np.exp(-mu * np.clip(density, 0.0, None))) / (1.0 - math.exp(-mu * _WHITE_DENSITY))
    image *= 1.0 + ex["heel"] * (y - 0.5) + 0.02 * _field_at(scene.fields["exposure"], n)
    image = np.clip(image, 0.0, 1.0) ** ex["gamma"]
    return image.astype(np.float32), lungs, [region for _, region in rendered]


def _lesions(scene: _Scene, regions: list[np.ndarray | None], n: int, out: int) -> list[Lesion]:
    """Lesion records at the output size ``out`` from findings rendered at ``n``."""
    scale = out / n
    lesions: list[Lesion] = []
    for f, region in zip(scene.findings, regions):
        p = f.params
        if f.kind in ("Mass", "Nodule"):
            sides = p.get("sides", [f.side] * len(p["centers"]))  # type: ignore[arg-type]
            for center, radius, side in zip(p["centers"], p["radii"], sides):  # type: ignore[arg-type]
                cx, cy = center[0] * out - 0.5, center[1] * out - 0.5
                r = radius * out
                mask = np.zeros((out, out), bool)
                rows, cols = _window(out, center, radius + 2.0 / out)
                xs, ys = _grid(out)
                mask[rows, cols] = (xs[:, cols] - center[0]) ** 2 + (ys[rows, :] - center[1]) ** 2 <= radius * radius
                lesions.append(Lesion(f.kind, (float(cx), float(cy)), float(r), mask, side))
        else:
            small = region if region is not None else np.zeros((n, n), bool)
            mask = _resize_mask(small, out)
            ys, xs = np.nonzero(small)
            if len(xs):
                center = (float((xs.mean() + 0.5) * scale - 0.5), float((ys.mean() + 0.5) * scale - 0.5))
            else:
                center = (out / 2.0, out / 2.0)
            lesions.append(Lesion(f.kind, center, None, mask, f.side))
    return lesions


def pixel_spacing_for(size: int) -> tuple[float, float]:
    """``(row, column)`` pixel spacing in mm of a ``size``-pixel phantom."""
    s = FIELD_OF_VIEW_MM / size
    return (s, s)


def _choose_findings(
    rng: np.random.Generator, findings: Iterable[str] | None, finding_probability: float
) -> list[str]:
    if findings is not None:
        chosen = list(dict.fromkeys(findings))
        unknown = [f for f in chosen if f not in FINDINGS]
        if unknown:
            raise ValueError(f"unknown findings {unknown}; each finding must be one of {', '.join(FINDINGS)}")
        # drawn anyway so that the stream of random numbers does not depend on `findings`
        rng.random(len(FINDINGS))
        return [f for f in FINDINGS if f in chosen]
    if not 0.0 <= finding_probability <= 1.0:
        raise ValueError(f"finding_probability must lie in [0, 1]; got {finding_probability}")
    draws = rng.random(len(FINDINGS))
    return [f for f, d in zip(FINDINGS, draws) if d < finding_probability]


def generate_phantom(
    size: int = 256,
    *,
    seed: int | np.random.Generator,
    findings: Iterable[str] | None = None,
    finding_probability: float = 0.3,
    lung_shapes: Sequence[LungShapePair] | None = None,
) -> Phantom:
    """Draw one synthetic PA chest radiograph.

    Parameters
    ----------
    size:
        Pixels per side of the square image (32..4096). The same seed gives the same anatomy and
        findings at every size.
    seed:
        An integer (reproducible) or a ``numpy.random.Generator`` (consumed).
    findings:
        Exactly these findings (names from :data:`models.labels.FINDINGS`); ``None`` draws each
        finding independently with ``finding_probability``. An empty iterable gives a normal
        ("No Finding") phantom.
    finding_probability:
        Probability of each finding when ``findings`` is ``None``.
    lung_shapes:
        Real lung outlines to draw from (:func:`training.lung_shapes.lung_shape_bank`, e.g. its
        ``"train"`` or held-out ``"test"`` split); ``None`` draws procedural lungs.

    Returns
    -------
    Phantom
        ``image`` ``(size, size)`` float32 in [0, 1]; masks ``(size, size)`` bool.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer number of pixels in {MIN_SIZE}..{MAX_SIZE}; got {size!r}")
    size = int(size)
    int_seed: int | None = None
    if isinstance(seed, np.random.Generator):
        rng = seed
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        int_seed = int(seed)
        rng = np.random.default_rng(int_seed)
    else:
        raise ValueError(f"seed must be an int or a numpy.random.Generator; got {type(seed).__name__}")
    chosen = _choose_findings(rng, findings, finding_probability)
    scene = _draw_scene(rng, chosen, lung_shapes)
    noise_rng = np.random.default_rng(rng.integers(0, 2**63))

    n = min(size, RENDER_MAX)
    image, lungs_n, regions = _render(scene, n)
    if n != size:
        image = _resize(image, size)
        lungs = _lung_masks(scene, size)
    else:
        lungs = lungs_n
    sigma = scene.exposure["noise"] * math.sqrt(size / 512.0)
    image = image + noise_rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    np.clip(image, 0.0, 1.0, out=image)

    labels = {name: name in chosen for name in FINDINGS}
    return Phantom(
        image=image.astype(np.float32, copy=False),
        left_lung=lungs["left"],
        right_lung=lungs["right"],
        labels=labels,
        lesions=_lesions(scene, regions, n, size),
        pixel_spacing_mm=pixel_spacing_for(size),
        seed=int_seed,
    )


# ----------------------------------------------------------------------------------------------
# dataset


class PhantomDataset(torch.utils.data.Dataset):
    """``n`` phantoms, each a pure function of ``(seed, index)``.

    Item ``i`` is ``generate_phantom(size, seed=SeedSequence([seed, i]))``; the same arguments
    always give the same items, in any order, in any worker process.

    ``dataset[i]`` is a dict of tensors (collates with the default DataLoader):

    - ``"image"``: ``(size, size)`` float32 in [0, 1]
    - ``"labels"``: ``(len(FINDINGS),)`` float32 0/1 in :data:`FINDINGS` order
    - ``"left_lung"``, ``"right_lung"``: ``(size, size)`` bool
    - ``"pixel_spacing_mm"``: ``(2,)`` float32 (row, column)
    - ``"index"``: int64 scalar

    ``dataset.phantom(i)`` gives the :class:`Phantom` itself (with its lesions).

    ``lung_shapes``: ``None`` (procedural lungs) or ``"train"``/``"test"``/``"all"``: real lung
    outlines of that split of :func:`training.lung_shapes.lung_shape_bank` (loaded once per
    process; needs torchxrayvision's archive).
    """

    def __init__(
        self,
        n: int,
        size: int = 256,
        *,
        seed: int = 0,
        finding_probability: float = 0.3,
        findings: Iterable[str] | None = None,
        cache: bool = False,
        lung_shapes: str | None = None,
    ) -> None:
        if lung_shapes not in (None, "procedural", "train", "test", "all"):
            raise ValueError(
                f"lung_shapes must be None/'procedural' or a real-shape split 'train', 'test' or 'all'; got {lung_shapes!r}"
            )
        if n < 0:
            raise ValueError(f"n must be >= 0; got {n}")
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"size must lie in {MIN_SIZE}..{MAX_SIZE}; got {size}")
        self.n = int(n)
        self.size = int(size)
        self.seed = int(seed)
        self.finding_probability = float(finding_probability)
        self.findings = None if findings is None else tuple(findings)
        self.lung_shapes = None if lung_shapes in (None, "procedural") else lung_shapes
        self._cache: dict[int, Phantom] | None = {} if cache else None

    def __len__(self) -> int:
        return self.n

    def phantom(self, index: int) -> Phantom:
        """The phantom at ``index`` (0 <= index < len)."""
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} phantoms")
        index %= self.n
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        shapes = lung_shape_bank(self.lung_shapes) if self.lung_shapes else None
        ph = generate_phantom(
            self.size,
            seed=rng,
            findings=self.findings,
            finding_probability=self.finding_probability,
            lung_shapes=shapes,
        )
        if self._cache is not None:
            self._cache[index] = ph
        return ph

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ph = self.phantom(index)
        return {
            "image": torch.from_numpy(ph.image),
            "labels": torch.from_numpy(ph.label_vector()),
            "left_lung": torch.from_numpy(ph.left_lung.copy()),
            "right_lung": torch.from_numpy(ph.right_lung.copy()),
            "pixel_spacing_mm": torch.tensor(ph.pixel_spacing_mm, dtype=torch.float32),
            "index": torch.tensor(index % self.n, dtype=torch.int64),
        }


# ----------------------------------------------------------------------------------------------
# writers


def _lesion_record(lesion: Lesion) -> dict[str, object]:
    return {
        "kind": lesion.kind,
        "center_xy": [round(v, 3) for v in lesion.center_xy],
        "radius_px": None if lesion.radius_px is None else round(lesion.radius_px, 3),
        "side": lesion.side,
        "area_px": int(lesion.mask.sum()),
    }


def phantom_metadata(phantom: Phantom) -> dict[str, object]:
    """JSON-ready description: labels, lesions, pixel spacing, size, seed."""
    return {
        "labels": dict(phantom.labels),
        "lesions": [_lesion_record(lesion) for lesion in phantom.lesions],
        "pixel_spacing_mm": list(phantom.pixel_spacing_mm),
        "size": phantom.size,
        "seed": phantom.seed,
        "view_position": "PA",
        "generator_version": GENERATOR_VERSION,
    }


def write_phantom_png(phantom: Phantom, directory: str | Path, name: str | None = None) -> Path:
    """Write a phantom as PNG files in an image-and-mask folder layout.

    ``directory/images/<name>.png`` (16-bit grey), ``directory/leftMask/<name>.png`` and
    ``directory/rightMask/<name>.png`` (8-bit, 0/255; the patient's left and right lung),
    ``directory/labels/<name>.json`` (:func:`phantom_metadata`). ``name`` defaults to
    ``phantom_<seed>``. Returns the image path. ``training.datasets.folders`` reads it back.
    """
    if name is None:
        if phantom.seed is None:
            raise ValueError("a phantom drawn from a Generator has no seed: pass name=")
        name = f"phantom_{phantom.seed:06d}"
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"name must be a plain file stem; got {name!r}")
    root = Path(directory)
    for sub in (PNG_IMAGE_DIR, PNG_LEFT_MASK_DIR, PNG_RIGHT_MASK_DIR, PNG_LABEL_DIR):
        (root / sub).mkdir(parents=True, exist_ok=True)
    image_path = root / PNG_IMAGE_DIR / f"{name}.png"
    pixels = np.clip(np.rint(phantom.image * 65535.0), 0, 65535).astype(np.uint16)
    Image.fromarray(pixels).save(image_path)
    for sub, mask in ((PNG_LEFT_MASK_DIR, phantom.left_lung), (PNG_RIGHT_MASK_DIR, phantom.right_lung)):
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(root / sub / f"{name}.png")
    (root / PNG_LABEL_DIR / f"{name}.json").write_text(json.dumps(phantom_metadata(phantom), indent=1))
    return image_path


def write_phantom_dicom(
    phantom: Phantom, path: str | Path, identity: RadiographIdentity | None = None, **dicom_kwargs: object
) -> Path:
    """Write a phantom as a DICOM DX (PA) instance with :mod:`training.dicom_export`.

    ``identity`` is a :class:`training.dicom_export.RadiographIdentity` (fresh UIDs when
    ``None``); ``dicom_kwargs`` go to :func:`training.dicom_export.radiograph_dataset`
    (``pixel_spacing_mm`` defaults to the phantom's spacing, ``view_position`` to ``"PA"``).
    """
    from training.dicom_export import RadiographIdentity, write_radiograph

    if identity is None:
        identity = RadiographIdentity.new()
    dicom_kwargs.setdefault("pixel_spacing_mm", phantom.pixel_spacing_mm)
    dicom_kwargs.setdefault("view_position", "PA")
    return write_radiograph(Path(path), phantom.image, identity, **dicom_kwargs)


# ----------------------------------------------------------------------------------------------
# command line: python -m training.phantoms --out DIR --count N [--size S] [--seed K] [--format png|dicom]


def write_phantom_folder(
    directory: str | Path,
    count: int,
    *,
    size: int = 256,
    seed: int = 0,
    file_format: str = "png",
    finding_probability: float = 0.3,
    lung_shapes: str | None = None,
) -> list[Path]:
    """Write ``count`` phantoms of :class:`PhantomDataset` ``(count, size, seed)`` to a folder.

    ``png``: the :func:`write_phantom_png` layout (``images/``, ``leftMask/``, ``rightMask/``,
    ``labels/``), named ``phantom_<seed>_<index>``. ``dicom``: one DX file per phantom,
    ``<name>.dcm``, each its own study, with the same ``labels/<name>.json`` beside.
    Returns the image (or DICOM) paths.
    """
    if file_format not in ("png", "dicom"):
        raise ValueError(f"file_format must be 'png' or 'dicom'; got {file_format!r}")
    dataset = PhantomDataset(
        count, size, seed=seed, finding_probability=finding_probability, lung_shapes=lung_shapes
    )
    root = Path(directory)
    paths = []
    for index in range(len(dataset)):
        phantom = dataset.phantom(index)
        name = f"phantom_{seed}_{index:06d}"
        if file_format == "png":
            paths.append(write_phantom_png(phantom, root, name))
        else:
            (root / PNG_LABEL_DIR).mkdir(parents=True, exist_ok=True)
            (root / PNG_LABEL_DIR / f"{name}.json").write_text(json.dumps(phantom_metadata(phantom), indent=1))
            paths.append(write_phantom_dicom(phantom, root / f"{name}.dcm"))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.phantoms``: write a folder of phantoms (PNG layout or DICOM)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.phantoms", description=main.__doc__)
    parser.add_argument("--out", required=True, type=Path, help="folder to write into")
    parser.add_argument("--count", required=True, type=int, help="number of phantoms")
    parser.add_argument("--size", type=int, default=256, help="pixels per side (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--format", choices=("png", "dicom"), default="png")
    parser.add_argument("--finding-probability", type=float, default=0.3)
    parser.add_argument(
        "--lung-shapes", choices=("procedural", "train", "test", "all"), default="procedural",
        help="procedural lungs, or real outlines of that split (needs torchxrayvision)",
    )
    args = parser.parse_args(argv)
    paths = write_phantom_folder(
        args.out, args.count, size=args.size, seed=args.seed, file_format=args.format,
        finding_probability=args.finding_probability, lung_shapes=args.lung_shapes,
    )
    print(f"wrote {len(paths)} phantoms to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
