"""Tiny toy RGBY fields with known cells and nuclei, for tests and examples (no files).

``toy_field`` draws round nuclei (blue) inside cells (red + yellow cytoplasm), cells split
between neighbours by a Voronoi rule so that touching cells share a boundary. It is a smoke-test
fixture, not a realistic simulator (see ``wsss-synth`` for that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ToyCell:
    """One toy cell: centre (x, y) in px, cell radius, nucleus radius, nucleus offset, brightness."""

    x: float
    y: float
    cell_r: float
    nuc_r: float
    nuc_dx: float = 0.0
    nuc_dy: float = 0.0
    brightness: float = 100.0


def toy_field(size: int, cells: list[ToyCell], noise: float = 3.0, seed: int = 0,
              background: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``cells`` into a ``size x size`` RGBY ``uint8`` image.

    Returns ``(rgby, true_cells, true_nuclei)``: label maps ``uint16``, cell ``i + 1`` and
    nucleus ``i + 1`` for ``cells[i]``; overlapping cell discs are split by the nearest nucleus
    centre, and the cytoplasm dims towards shared boundaries.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    n = len(cells)
    true_cells = np.zeros((size, size), dtype=np.uint16)
    true_nuclei = np.zeros((size, size), dtype=np.uint16)
    red = np.full((size, size), background, dtype=np.float32)
    yellow = np.full((size, size), background, dtype=np.float32)
    blue = np.full((size, size), background * 0.5, dtype=np.float32)
    if n:
        nx = np.array([c.x + c.nuc_dx for c in cells], dtype=np.float32)
        ny = np.array([c.y + c.nuc_dy for c in cells], dtype=np.float32)
        d_nuc = np.sqrt((xx[None] - nx[:, None, None]) ** 2 + (yy[None] - ny[:, None, None]) ** 2)
        cx = np.array([c.x for c in cells], dtype=np.float32)
        cy = np.array([c.y for c in cells], dtype=np.float32)
        d_cell = np.sqrt((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2)
        radius = np.array([c.cell_r for c in cells], dtype=np.float32)[:, None, None]
        inside = d_cell <= radius
        owner_d = np.where(inside, d_nuc, np.inf)
        owner = owner_d.argmin(axis=0)
        best = owner_d.min(axis=0)
        covered = np.isfinite(best)
        true_cells[covered] = (owner[covered] + 1).astype(np.uint16)
        # distance margin to the second nearest nucleus: dim the cytoplasm near shared edges
        second = np.sort(owner_d, axis=0)[1] if n > 1 else np.full((size, size), np.inf, np.float32)
        with np.errstate(invalid="ignore"):
            gap = np.where(np.isfinite(second), second - best, np.inf)
        margin = np.clip(np.nan_to_num(gap, nan=np.inf) / 6.0, 0.35, 1.0)
        level = np.array([c.brightness for c in cells], dtype=np.float32)[owner]
        texture = 1.0 + 0.25 * rng.standard_normal((size, size)).astype(np.float32)
        cyto = np.where(covered, level * margin * texture, 0.0)
        red += cyto
        yellow += 0.8 * cyto
        for i, c in enumerate(cells):
            nuc = (d_nuc[i] <= c.nuc_r) & (true_cells == i + 1)
            true_nuclei[nuc] = i + 1
            blue[nuc] = 120.0 + 40.0 * (i % 3)
    for ch in (red, yellow, blue):
        ch += noise * rng.standard_normal((size, size)).astype(np.float32)
    green = np.clip(background + noise * rng.standard_normal((size, size)), 0, 255).astype(np.float32)
    rgby = np.stack([red, green, blue, yellow], axis=-1)
    return np.clip(np.rint(rgby), 0, 255).astype(np.uint8), true_cells, true_nuclei
