"""Green-channel (protein) patterns of the 19 HPA classes, drawn cell by cell.

Each pattern is a function ``(view, fields, rng) -> float32 crop`` (peak about 1) evaluated in the
cell's bounding box; the caller keeps only the cell's own pixels, so a cell shows exactly the
classes it is labelled with. Location and texture differ per class:

==  ==========================  ==============================================================
 0  Nucleoplasm                 the whole nucleus, smooth, darker nucleoli
 1  Nuclear membrane            a thin rim along the nuclear outline
 2  Nucleoli                    1-4 bright blobs inside the nucleus
 3  Nucleoli fibrillar center   clusters of tiny dots at the nucleolus positions
 4  Nuclear speckles            10-30 small dots over a faint nucleoplasm
 5  Nuclear bodies              1-6 medium round dots in the nucleus
 6  Endoplasmic reticulum       the yellow reticulum, dense near the nucleus
 7  Golgi apparatus             a compact perinuclear cluster on one side of the nucleus
 8  Intermediate filaments      long wavy filaments through the cytoplasm, perinuclear cage
 9  Actin filaments             straight parallel stress fibres and a bright cortex
10  Microtubules                the red filament texture
11  Mitotic spindle             spindle fibres and poles in a dividing (round) cell
12  Centrosome                  1-2 bright dots next to the nucleus (at the poles in mitosis)
13  Plasma membrane             a rim along the cell outline
14  Mitochondria                many short worm-like segments, denser near the nucleus
15  Aggresome                   one bright perinuclear blob
16  Cytosol                     diffuse cytoplasm fill
17  Vesicles                    many small scattered dots in the cytoplasm
18  Negative                    nothing
==  ==========================  ==============================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from wsss.data.synth_geometry import CellSpec, smooth_noise
from wsss.data.synth_textures import (
    Fields,
    clip_paths_to_cell,
    draw_polylines,
    ellipse_blob,
    nucleoli_map,
    nucleus_radius,
    spindle_geometry,
    spindle_paths,
    walk_paths,
)

logger = logging.getLogger(__name__)


@dataclass
class CellView:
    """Crops of the shared fields around one cell (``sl`` = its box in the image)."""

    cid: int
    spec: CellSpec
    sl: tuple[slice, slice]
    cell: np.ndarray
    nuc: np.ndarray
    cyto: np.ndarray
    dist_edge: np.ndarray
    dist_nuc: np.ndarray
    nuc_depth: np.ndarray
    rho: np.ndarray
    rn: float
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.cell.shape

    @property
    def origin(self) -> tuple[int, int]:
        return self.sl[0].start, self.sl[1].start

    @property
    def centre(self) -> tuple[float, float]:
        """Nucleus centre ``(y, x)`` in crop coordinates."""
        return self.spec.ny - self.sl[0].start, self.spec.nx - self.sl[1].start

    def px(self, length_at_512: float, floor: float = 0.5) -> float:
        """A length given at 512 px, scaled to this image (never below ``floor`` px)."""
        return max(length_at_512 * self.scale, floor)


def make_view(f: Fields, cid: int) -> CellView:
    """Build the :class:`CellView` of cell ``cid``."""
    sl = f.boxes[cid - 1]
    cell = f.cells[sl] == cid
    nuc = (f.nuclei[sl] == cid) & cell
    return CellView(cid=cid, spec=f.specs[cid - 1], sl=sl, cell=cell, nuc=nuc, cyto=cell & ~nuc,
                    dist_edge=f.dist_edge[sl], dist_nuc=f.dist_nuc[sl], nuc_depth=f.nuc_depth[sl],
                    rho=f.rho[sl], rn=nucleus_radius(f, cid), scale=f.scale)


def sample_points(rng: np.random.Generator, weight: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` points ``(ys, xs)`` drawn with probability proportional to ``weight`` (sub-pixel jitter)."""
    flat = np.clip(weight, 0, None).ravel().astype(np.float64)
    total = flat.sum()
    if k <= 0 or total <= 0:
        return np.zeros(0), np.zeros(0)
    idx = rng.choice(flat.size, size=k, p=flat / total)
    ys, xs = np.divmod(idx, weight.shape[1])
    return ys + rng.uniform(-0.5, 0.5, size=k), xs + rng.uniform(-0.5, 0.5, size=k)


def dots(shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, amps: np.ndarray | float,
         sigma: float) -> np.ndarray:
    """Gaussian dots of peak ``amps`` at ``(ys, xs)`` (overlapping dots add up)."""
    imp = np.zeros(shape, dtype=np.float32)
    if len(ys) == 0:
        return imp
    yi = np.clip(np.rint(ys).astype(np.int64), 0, shape[0] - 1)
    xi = np.clip(np.rint(xs).astype(np.int64), 0, shape[1] - 1)
    np.add.at(imp, (yi, xi), np.broadcast_to(np.asarray(amps, dtype=np.float32), yi.shape))
    ksize = int(2 * np.ceil(3 * sigma) + 1)
    peak = float(cv2.getGaussianKernel(ksize, sigma).max()) ** 2
    return cv2.GaussianBlur(imp, (ksize, ksize), sigma) / peak


def angle_from_nucleus(v: CellView) -> np.ndarray:
    """Angle of every crop pixel as seen from the nucleus centre."""
    cy, cx = v.centre
    ys, xs = np.mgrid[0:v.shape[0], 0:v.shape[1]]
    return np.arctan2(ys - cy, xs - cx)


def _angular_window(theta: np.ndarray, direction: float, width: float) -> np.ndarray:
    diff = np.angle(np.exp(1j * (theta - direction)))
    return np.exp(-((diff / width) ** 2))


def _texture(rng: np.random.Generator, v: CellView, sigma_at_512: float) -> np.ndarray:
    return smooth_noise(rng, v.shape, v.px(sigma_at_512))


# --- nuclear patterns -------------------------------------------------------------------------

def nucleoplasm(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    profile = np.clip(v.nuc_depth / v.px(1.5) + 0.4, 0.0, 1.0)
    holes = 1.0 - 0.6 * nucleoli_map(f, v.cid, v.sl)
    return (0.75 * v.nuc * profile * holes * (0.85 + 0.12 * _texture(rng, v, 2.0))).astype(np.float32)


def nuclear_membrane(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    signed = np.where(v.nuc, v.nuc_depth, -v.dist_nuc)
    ring = np.exp(-(((signed - 0.5) / v.px(1.3, 0.7)) ** 2))
    near = v.nuc | (v.dist_nuc < v.px(5.0, 2.0))
    return (ring * near * (0.8 + 0.15 * _texture(rng, v, 3.0))).astype(np.float32)


def nucleoli(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    blobs = nucleoli_map(f, v.cid, v.sl)
    return (blobs * v.nuc * (0.95 + 0.1 * _texture(rng, v, 1.0))).astype(np.float32)


def fibrillar_center(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    ys_all, xs_all = [], []
    y0, x0 = v.origin
    for y, x, r, _ in f.nucleoli[v.cid - 1]:
        k = int(rng.integers(2, 6))
        ang = rng.uniform(0, 2 * np.pi, size=k)
        rad = r * 0.75 * np.sqrt(rng.uniform(0, 1, size=k))
        ys_all.append(y - y0 + rad * np.sin(ang))
        xs_all.append(x - x0 + rad * np.cos(ang))
    if not ys_all:
        return np.zeros(v.shape, dtype=np.float32)
    ys, xs = np.concatenate(ys_all), np.concatenate(xs_all)
    return np.minimum(dots(v.shape, ys, xs, rng.uniform(0.7, 1.0, size=len(ys)), v.px(0.9, 0.55)), 1.3) * v.nuc


def speckles(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    k = int(np.clip(v.nuc.sum() / (40.0 * v.scale ** 2), 10, 30))
    weight = (v.nuc_depth > v.px(1.5, 1.0)) * (1.0 - nucleoli_map(f, v.cid, v.sl))
    ys, xs = sample_points(rng, weight * v.nuc, k)
    spots = dots(v.shape, ys, xs, rng.uniform(0.5, 1.0, size=k), v.px(1.3, 0.6))
    return (np.minimum(spots, 1.2) + 0.12 * v.nuc) * v.nuc


def nuclear_bodies(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(1, 7))
    ys, xs = sample_points(rng, (v.nuc_depth > v.px(3.0, 1.5)) * v.nuc, k)
    return dots(v.shape, ys, xs, rng.uniform(0.8, 1.0, size=len(ys)), v.px(2.4, 1.0)) * v.nuc


# --- cytoplasmic patterns ---------------------------------------------------------------------

def reticulum(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    assert f.reticulum is not None
    envelope = np.exp(-((v.dist_nuc / v.px(1.5, 0.8)) ** 2))
    er = (0.1 + 0.8 * f.reticulum[v.sl]) * np.exp(-2.2 * v.rho) + 0.35 * envelope
    return (er * v.cyto).astype(np.float32)


def golgi(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    direction = float(rng.uniform(0, 2 * np.pi))
    theta = angle_from_nucleus(v)
    ring = (v.dist_nuc > v.px(0.5)) & (v.dist_nuc < max(0.5 * v.rn, v.px(5.0)))
    weight = ring * v.cyto * _angular_window(theta, direction, 0.55)
    k = int(rng.integers(6, 11))
    ys, xs = sample_points(rng, weight, k)
    body = dots(v.shape, ys, xs, rng.uniform(0.5, 0.8, size=len(ys)), v.px(2.4, 1.0))
    ys2, xs2 = sample_points(rng, weight, 2 * k)
    grains = dots(v.shape, ys2, xs2, rng.uniform(0.4, 0.8, size=len(ys2)), v.px(1.1, 0.6))
    return np.minimum(body + grains, 1.3) * v.cell


def intermediate_filaments(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    area = int(v.cell.sum())
    k = int(np.clip(area / (450.0 * v.scale ** 2), 6, 18))
    ys, xs = sample_points(rng, v.cyto * (1.2 - v.rho), k)
    y0, x0 = v.origin
    starts = np.column_stack([xs + x0, ys + y0])
    step = v.px(1.5, 0.8)
    n_steps = int(np.ceil(1.6 * v.spec.radius * np.sqrt(v.spec.elong) / step))
    heading = rng.uniform(0, 2 * np.pi, size=k)
    paths: list[np.ndarray] = []
    for sign in (0.0, np.pi):
        walked = walk_paths(rng, starts, heading + sign, step, n_steps, 0.03, wave=0.6)
        paths.extend(clip_paths_to_cell(walked, f.cells, v.cid))
    canvas = np.zeros(v.shape, dtype=np.float32)
    groups = rng.integers(0, 2, size=len(paths))
    for g, value in enumerate((0.65, 1.0)):
        draw_polylines(canvas, [p for p, gg in zip(paths, groups) if gg == g], value, offset=(x0, y0))
    crop = canvas * (1.0 - 0.5 * v.rho)
    return (crop * np.where(v.nuc, 0.3, 1.0) * v.cell).astype(np.float32)


def actin(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    h, w = v.shape
    angle = v.spec.angle + float(rng.normal(0, 0.2))
    spacing = v.px(4.5, 2.0) * float(rng.uniform(0.85, 1.25))
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    centre = np.array([w / 2.0, h / 2.0])
    half = float(np.hypot(h, w))
    layer = np.zeros((h, w), dtype=np.float32)
    for off in np.arange(-half, half, spacing):
        p = centre + normal * (off + rng.normal(0, 0.2 * spacing))
        start = p - direction * half * rng.uniform(0.2, 1.0)
        end = p + direction * half * rng.uniform(0.2, 1.0)
        value = float(rng.uniform(0.35, 1.0))
        tmp = np.zeros((h, w), dtype=np.uint8)
        cv2.line(tmp, tuple(np.rint(start * 16).astype(int)), tuple(np.rint(end * 16).astype(int)), 255, 1,
                 cv2.LINE_AA, shift=4)
        np.maximum(layer, tmp.astype(np.float32) * (value / 255.0), out=layer)
    cortex = np.exp(-((v.dist_edge / v.px(1.6, 0.8)) ** 2))
    fibres = layer * np.where(v.nuc, 0.45, 1.0)
    return (np.maximum(0.8 * fibres, 0.9 * cortex) * v.cell).astype(np.float32)


def microtubules(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    assert f.filaments is not None
    return (np.minimum(f.filaments[v.sl], 1.0) * np.where(v.nuc, 0.3, 1.0) * v.cell
            + 0.08 * v.cyto).astype(np.float32)


def mitotic_spindle(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    if not v.spec.dividing:
        raise ValueError(f"cell {v.cid}: class 11 (mitotic spindle) needs a dividing cell")
    poles, plate, _ = spindle_geometry(v.spec, f)
    y0, x0 = v.origin
    shift = np.array([x0, y0])
    diamond = np.zeros(v.shape, dtype=np.float32)
    quad = np.array([poles[0], plate[0], poles[1], plate[1]]) - shift
    cv2.fillConvexPoly(diamond, np.rint(quad * 16).astype(np.int32), 1.0, cv2.LINE_AA, shift=4)
    diamond = cv2.GaussianBlur(diamond, (0, 0), v.px(2.0, 1.0))
    canvas = np.zeros(v.shape, dtype=np.float32)
    draw_polylines(canvas, spindle_paths(rng, v.spec, f, 12), 1.0, offset=(x0, y0))
    pole_dots = dots(v.shape, poles[:, 1] - y0, poles[:, 0] - x0, 1.0, v.px(2.0, 0.9))
    return (np.maximum(0.45 * diamond + 0.7 * canvas, pole_dots) * v.cell).astype(np.float32)


def centrosome(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    y0, x0 = v.origin
    sigma = v.px(1.7, 0.8)
    if v.spec.dividing:
        poles, _, _ = spindle_geometry(v.spec, f)
        return dots(v.shape, poles[:, 1] - y0, poles[:, 0] - x0, 1.0, sigma) * v.cell
    direction = float(rng.uniform(0, 2 * np.pi))
    near = (v.dist_nuc >= v.px(1.0)) & (v.dist_nuc <= v.px(4.0, 1.5))
    weight = near * v.cyto * _angular_window(angle_from_nucleus(v), direction, 0.5)
    ys, xs = sample_points(rng, weight, 1)
    if len(ys) and rng.random() < 0.6:
        ang = rng.uniform(0, 2 * np.pi)
        d = v.px(2.5, 1.2)
        ys = np.append(ys, ys[0] + d * np.sin(ang))
        xs = np.append(xs, xs[0] + d * np.cos(ang))
    return dots(v.shape, ys, xs, 1.2, sigma) * v.cell


def plasma_membrane(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    rim = np.exp(-((v.dist_edge / v.px(1.4, 0.7)) ** 2))
    return ((rim * (0.95 + 0.15 * _texture(rng, v, 4.0)) + 0.04) * v.cell).astype(np.float32)


def mitochondria(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    area = int(v.cyto.sum())
    k = int(np.clip(area / (28.0 * v.scale ** 2), 25, 180))
    ys, xs = sample_points(rng, v.cyto * (1.15 - v.rho) ** 1.5, k)
    y0, x0 = v.origin
    starts = np.column_stack([xs + x0, ys + y0])
    step = v.px(1.6, 0.8)
    walked = walk_paths(rng, starts, rng.uniform(0, 2 * np.pi, size=k), step, int(rng.integers(3, 6)), 0.45)
    paths = clip_paths_to_cell(walked, f.cells, v.cid)
    canvas = np.zeros(v.shape, dtype=np.float32)
    groups = rng.integers(0, 2, size=len(paths))
    for g, value in enumerate((0.6, 1.0)):
        draw_polylines(canvas, [p for p, gg in zip(paths, groups) if gg == g], value, offset=(x0, y0))
    return (canvas * v.cyto).astype(np.float32)


def aggresome(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    r = max(v.rn * float(rng.uniform(0.3, 0.42)), v.px(3.0, 1.5))
    near = (v.dist_nuc >= 0.6 * r) & (v.dist_nuc <= 0.6 * r + max(0.3 * v.rn, v.px(3.0, 1.5)))
    ys, xs = sample_points(rng, v.cyto * near * (v.dist_edge > 0.8 * r), 1)
    if len(ys) == 0:
        ys, xs = sample_points(rng, v.cyto * v.dist_edge, 1)
    if len(ys) == 0:
        return np.zeros(v.shape, dtype=np.float32)
    blob = ellipse_blob(v.shape, float(ys[0]), float(xs[0]), r * 1.15, r * 0.85, float(rng.uniform(0, np.pi)),
                        softness=v.px(1.5, 0.8))
    return (blob * (0.85 + 0.12 * _texture(rng, v, 1.5)) * v.cyto).astype(np.float32)


def cytosol(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    edge = np.clip(v.dist_edge / v.px(2.0) + 0.5, 0.0, 1.0)
    fill = 0.5 * edge * (0.85 + 0.1 * _texture(rng, v, 4.0))
    return (fill * np.where(v.nuc, 0.1, 1.0) * v.cell).astype(np.float32)


def vesicles(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    area = int(v.cyto.sum())
    k = int(np.clip(area / (90.0 * v.scale ** 2), 12, 70))
    ys, xs = sample_points(rng, v.cyto * (v.dist_edge > v.px(1.0)), k)
    return np.minimum(dots(v.shape, ys, xs, rng.uniform(0.55, 1.0, size=len(ys)), v.px(1.1, 0.6)), 1.2) * v.cell


def negative(v: CellView, f: Fields, rng: np.random.Generator) -> np.ndarray:
    return np.zeros(v.shape, dtype=np.float32)


Pattern = Callable[[CellView, Fields, np.random.Generator], np.ndarray]

PATTERNS: dict[int, Pattern] = {
    0: nucleoplasm, 1: nuclear_membrane, 2: nucleoli, 3: fibrillar_center, 4: speckles, 5: nuclear_bodies,
    6: reticulum, 7: golgi, 8: intermediate_filaments, 9: actin, 10: microtubules, 11: mitotic_spindle,
    12: centrosome, 13: plasma_membrane, 14: mitochondria, 15: aggresome, 16: cytosol, 17: vesicles,
    18: negative,
}

#: Classes whose pattern lies in the nucleus (used by tests and documentation).
NUCLEAR_CLASSES: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
#: Classes whose pattern lies in the cytoplasm or at the cell outline.
CYTOPLASMIC_CLASSES: tuple[int, ...] = (6, 7, 8, 9, 10, 13, 14, 15, 16, 17)
