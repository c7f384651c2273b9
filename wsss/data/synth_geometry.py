"""Cell and nucleus layout of a synthetic HPA-like field of view.

Cells grow from seed points as a multiplicatively weighted, anisotropic, noisy Voronoi
tessellation: every cell ``i`` has a normalised distance ``D_i(p)`` (an elliptic metric around
its centre divided by an angle-dependent radius, plus a smooth per-cell noise field); a pixel
belongs to the cell with the smallest ``D_i`` provided that value is below 1. Neighbours whose
extents overlap therefore share an irregular border, isolated groups leave background gaps, and
cells whose centre lies near the edge of the image are cut by it. Dividing (mitotic) cells are
round, take precedence over their neighbours inside their circle and have a condensed nucleus
(a metaphase plate or two anaphase sets of chromosomes).

All lengths are expressed relative to the image size (``scale = size / 512``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Typical cell radius in pixels at 512 px (times ``cell_scale``).
BASE_CELL_RADIUS: float = 46.0


@dataclass
class CellSpec:
    """Geometry parameters of one planned cell (pixel units of the rendered image)."""

    cx: float
    cy: float
    radius: float
    elong: float
    angle: float
    harmonics: np.ndarray
    noise_index: int
    nx: float
    ny: float
    nuc_a: float
    nuc_b: float
    nuc_angle: float
    nuc_harmonics: np.ndarray
    dividing: bool = False
    anaphase: bool = False


@dataclass
class Layout:
    """Rendered geometry: label maps plus the per-cell specs of the cells kept (index = id - 1)."""

    cells: np.ndarray
    nuclei: np.ndarray
    specs: list[CellSpec] = field(default_factory=list)
    planned_index: list[int] = field(default_factory=list)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation (float32)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    sigma = max(float(sigma), 0.5)
    out = cv2.GaussianBlur(white, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    std = float(out.std())
    return out / std if std > 0 else out


def _angular_profile(theta: np.ndarray, harmonics: np.ndarray) -> np.ndarray:
    """``1 + sum_k a_k cos(k theta + phi_k)`` for rows ``(k, a_k, phi_k)`` of ``harmonics``."""
    theta = np.asarray(theta, dtype=np.float32)
    out = np.ones_like(theta)
    for k, amp, phase in harmonics:
        out += np.float32(amp) * np.cos(np.float32(k) * theta + np.float32(phase))
    return np.maximum(out, np.float32(0.45))


def _random_harmonics(rng: np.random.Generator, orders: tuple[int, ...], strength: float) -> np.ndarray:
    amps = rng.normal(0.0, strength, size=len(orders)) / np.sqrt(np.asarray(orders, dtype=np.float64))
    phases = rng.uniform(0, 2 * np.pi, size=len(orders))
    return np.stack([np.asarray(orders, dtype=np.float64), amps, phases], axis=1)


def place_seeds(rng: np.random.Generator, size: int, count: int, radius: float,
                dividing: list[bool] | None = None,
                pair_rate: float = 0.06) -> list[tuple[float, float, float, int]]:
    """Seed points ``(x, y, radius, partner)`` in clusters; ``partner`` is -1 or a daughter's twin.

    Seeds are drawn around 1-3 cluster centres (plus a few scattered ones), with a minimum
    spacing proportional to the two cells' radii, so groups of touching cells with background
    between the groups emerge. With probability ``pair_rate`` a seed is placed as the twin of an
    earlier one, right next to it, so their nuclei touch (daughter cells after division).
    Seeds flagged in ``dividing`` (by their index) are never twins.
    """
    dividing = dividing or []

    def is_div(k: int) -> bool:
        return k < len(dividing) and bool(dividing[k])

    margin = 0.02 * size
    n_clusters = int(rng.integers(1, 4))
    centres = rng.uniform(0.15 * size, 0.85 * size, size=(n_clusters, 2))
    spread = radius * np.sqrt(max(count, 1) / n_clusters)
    seeds: list[tuple[float, float, float, int]] = []
    tries = 0
    while len(seeds) < count and tries < count * 60:
        tries += 1
        r_i = radius * float(np.clip(rng.lognormal(0.0, 0.2), 0.65, 1.5))
        if seeds and rng.random() < pair_rate and not is_div(len(seeds)):
            j = int(rng.integers(len(seeds)))
            x0, y0, r0, partner = seeds[j]
            if partner >= 0 or is_div(j):
                continue
            r_i = r0 * float(rng.uniform(0.85, 1.1))
            direction = rng.uniform(0, 2 * np.pi)
            dist = 0.36 * (r0 + r_i) * float(rng.uniform(0.95, 1.12))
            x, y = x0 + dist * np.cos(direction), y0 + dist * np.sin(direction)
            twin = j
        else:
            if rng.random() < 0.8:
                c = centres[int(rng.integers(n_clusters))]
                x, y = rng.normal(c, spread)
            else:
                x, y = rng.uniform(0, size, size=2)
            twin = -1
        if not (margin <= x <= size - margin and margin <= y <= size - margin):
            continue
        ok = True
        for k, (xs, ys, rs, _) in enumerate(seeds):
            min_d = 0.8 * (r_i + rs) if k != twin else 0.25 * (r_i + rs)
            if (x - xs) ** 2 + (y - ys) ** 2 < min_d ** 2:
                ok = False
                break
        if not ok:
            continue
        seeds.append((float(x), float(y), r_i, twin))
        if twin >= 0:
            xs, ys, rs, _ = seeds[twin]
            seeds[twin] = (xs, ys, rs, len(seeds) - 1)
    return seeds


def plan_cells(rng: np.random.Generator, size: int, count: int, cell_scale: float,
               dividing: list[bool]) -> list[CellSpec]:
    """Draw the geometry of ``count`` cells (fewer if the field is too crowded to place them)."""
    scale = size / 512.0
    radius = BASE_CELL_RADIUS * scale * cell_scale * float(np.clip(rng.lognormal(0.0, 0.12), 0.8, 1.25))
    seeds = place_seeds(rng, size, count, radius, dividing)
    specs: list[CellSpec] = []
    for k, (x, y, r, twin) in enumerate(seeds):
        is_div = bool(dividing[k]) if k < len(dividing) else False
        rn = r * float(rng.uniform(0.38, 0.48))
        if twin >= 0:
            dx, dy = seeds[twin][0] - x, seeds[twin][1] - y
            base_angle = float(np.arctan2(dy, dx))
            # the cell extends away from its twin; the nucleus sits near the shared border
            cell_dir = base_angle + np.pi
        else:
            base_angle = float(rng.uniform(0, np.pi))
            cell_dir = float(rng.uniform(0, 2 * np.pi))
        if is_div:
            elong, harmonics = 1.0, _random_harmonics(rng, (2, 3), 0.03)
            cx, cy = x, y
            r_cell = r * float(rng.uniform(0.62, 0.72))
            # stay clear of the neighbours' nuclei: the round cell takes precedence inside its circle
            for k2, (x2, y2, r2, _) in enumerate(seeds):
                if k2 != k:
                    r_cell = min(r_cell, float(np.hypot(x2 - x, y2 - y)) - 0.6 * r2)
            r_cell = max(r_cell, 1.5 * rn)
        else:
            elong = float(rng.uniform(1.0, 2.1))
            harmonics = _random_harmonics(rng, (1, 2, 3, 4, 5), 0.22)
            offset = r * float(rng.uniform(0.05, 0.3))
            cx, cy = x + offset * np.cos(cell_dir), y + offset * np.sin(cell_dir)
            r_cell = r
        if twin >= 0:
            # daughters: the short axes of both nuclei span the gap between the seeds, so they touch
            gap = float(np.hypot(seeds[twin][0] - x, seeds[twin][1] - y))
            b = 0.5 * gap * float(rng.uniform(1.02, 1.12))
            a = b * float(rng.uniform(1.1, 1.45))
            nuc_angle = base_angle + np.pi / 2
        else:
            a = rn * float(rng.uniform(1.0, 1.3))
            b = rn * float(rng.uniform(0.72, 0.98))
            nuc_angle = base_angle + float(rng.normal(0, 0.3))
        if is_div:
            a, b = rn * float(rng.uniform(0.85, 1.0)), rn * float(rng.uniform(0.22, 0.32))
        specs.append(CellSpec(
            cx=float(cx), cy=float(cy), radius=float(r_cell), elong=elong,
            angle=base_angle, harmonics=harmonics,
            noise_index=int(rng.integers(0, 6)), nx=float(x), ny=float(y), nuc_a=float(a), nuc_b=float(b),
            nuc_angle=float(nuc_angle), nuc_harmonics=_random_harmonics(rng, (2, 3, 4, 6), 0.05),
            dividing=is_div, anaphase=bool(is_div and rng.random() < 0.4),
        ))
    return specs


def _bbox(cx: float, cy: float, reach: float, size: int) -> tuple[slice, slice]:
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, size)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, size)
    return slice(y0, y1), slice(x0, x1)


def _cell_distance(spec: CellSpec, ys: np.ndarray, xs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Normalised distance of pixels (``ys``, ``xs`` grids) to ``spec``'s cell (<1 = inside)."""
    dx, dy = xs - spec.cx, ys - spec.cy
    ca, sa = np.cos(spec.angle), np.sin(spec.angle)
    u = dx * ca + dy * sa
    v = -dx * sa + dy * ca
    k = np.sqrt(spec.elong)
    metric = np.sqrt((u / k) ** 2 + (v * k) ** 2)
    theta = np.arctan2(v, u)
    dist = metric / (spec.radius * _angular_profile(theta, spec.harmonics)) + noise
    if spec.dividing:
        dist = np.where(dist < 1.0, dist * 0.05, dist)
    return dist.astype(np.float32)


def _nucleus_distance(spec: CellSpec, ys: np.ndarray, xs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Normalised elliptic distance to the nucleus of ``spec`` (<1 = inside)."""
    ca, sa = np.cos(spec.nuc_angle), np.sin(spec.nuc_angle)
    if spec.dividing and spec.anaphase:
        shift = spec.nuc_b * 2.6
        parts = []
        for sign in (-1.0, 1.0):
            cx = spec.nx - sign * shift * sa
            cy = spec.ny + sign * shift * ca
            parts.append(_ellipse_distance(xs - cx, ys - cy, ca, sa, spec.nuc_a * 0.85, spec.nuc_b * 0.85,
                                           spec.nuc_harmonics))
        return np.minimum(parts[0], parts[1]) + noise
    return _ellipse_distance(xs - spec.nx, ys - spec.ny, ca, sa, spec.nuc_a, spec.nuc_b, spec.nuc_harmonics) + noise


def _ellipse_distance(dx: np.ndarray, dy: np.ndarray, ca: float, sa: float, a: float, b: float,
                      harmonics: np.ndarray) -> np.ndarray:
    u = dx * ca + dy * sa
    v = -dx * sa + dy * ca
    theta = np.arctan2(v, u)
    return np.sqrt((u / a) ** 2 + (v / b) ** 2) / _angular_profile(theta, harmonics)


def _keep_component(mask: np.ndarray, y: int, x: int) -> np.ndarray:
    """The connected component of ``mask`` holding pixel (y, x), else the largest one."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and labels[y, x] > 0:
        return labels == labels[y, x]
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def rasterize(rng: np.random.Generator, size: int, specs: list[CellSpec]) -> Layout:
    """Render cell and nucleus label maps; drop cells whose visible nucleus is too small.

    Returns label maps with consecutive ids 1..m (cell ``i`` holds nucleus ``i``) and, in
    ``planned_index``, the position in ``specs`` of every kept cell.
    """
    scale = size / 512.0
    coarse = [smooth_noise(rng, (size, size), 9.0 * scale) for _ in range(3)]
    fine = smooth_noise(rng, (size, size), 2.2 * scale)
    nuc_noise = smooth_noise(rng, (size, size), 2.0 * scale)
    best = np.full((size, size), np.inf, dtype=np.float32)
    owner = np.zeros((size, size), dtype=np.int32)
    boxes: list[tuple[slice, slice]] = []
    ndists: list[np.ndarray] = []
    for i, spec in enumerate(specs, start=1):
        reach = spec.radius * np.sqrt(spec.elong) * 1.8 + 4
        sl = _bbox(spec.cx, spec.cy, reach, size)
        boxes.append(sl)
        ys, xs = np.mgrid[sl[0], sl[1]].astype(np.float32)
        sign = 1.0 if spec.noise_index % 2 == 0 else -1.0
        noise = sign * 0.10 * coarse[spec.noise_index // 2][sl] + 0.018 * fine[sl]
        if spec.dividing:
            noise = 0.01 * fine[sl]
        dist = _cell_distance(spec, ys, xs, noise)
        # the nucleus always belongs to its own cell (touching twin nuclei split where they meet)
        ndist = _nucleus_distance(spec, ys, xs, 0.04 * nuc_noise[sl])
        ndists.append(ndist)
        inside = ndist < 1.05
        dist[inside] = 0.01 * ndist[inside]
        sub_best, sub_owner = best[sl], owner[sl]
        take = (dist < 1.0) & (dist < sub_best)
        sub_best[take] = dist[take]
        sub_owner[take] = i
    cells = np.zeros((size, size), dtype=np.uint16)
    nuclei = np.zeros((size, size), dtype=np.uint16)
    kept_specs: list[CellSpec] = []
    kept_index: list[int] = []
    for i, spec in enumerate(specs, start=1):
        sl = boxes[i - 1]
        mask = owner[sl] == i
        if not mask.any():
            continue
        mask = _keep_component(mask, int(spec.ny) - sl[0].start, int(spec.nx) - sl[1].start)
        mask = ndimage.binary_fill_holes(mask) & ((owner[sl] == i) | (owner[sl] == 0))
        nmask = (ndists[i - 1] < 1.0) & mask
        if not spec.dividing:
            nmask = _keep_component(nmask, int(spec.ny) - sl[0].start, int(spec.nx) - sl[1].start)
        expected = np.pi * spec.nuc_a * spec.nuc_b * (0.55 if spec.dividing and spec.anaphase else 1.0)
        if nmask.sum() < max(0.3 * expected, 6) or mask.sum() < 1.8 * nmask.sum():
            continue
        new_id = len(kept_specs) + 1
        cells[sl][mask & (cells[sl] == 0)] = new_id
        nuclei[sl][nmask] = new_id
        kept_specs.append(spec)
        kept_index.append(i - 1)
    return Layout(cells=cells, nuclei=nuclei, specs=kept_specs, planned_index=kept_index)
