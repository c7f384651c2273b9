"""Training targets of the watershed model from an instance label map (numpy in, numpy out).

:func:`make_targets` builds, from a label map (0 = background, ids > 0 = cells):

* the **wall map**: cells are pasted largest first, each dilated by a 3x3 square, and the outer
  ring of the pasted (dilated) region is then cleared. A cell keeps its own pixels (the ring lies
  just outside it), and where a smaller cell touches a larger one its ring cuts a one-pixel wall
  into the larger one, so touching cells are always split;
* ``semantic`` (``int64``, H x W): 0 background, 1 cell interior, 2 wall between touching cells
  (ring pixels pasted over another cell);
* ``distance``: one Euclidean distance transform of the interior over the whole image, computed
  after every wall is in place (not per cell); the image edge is not a boundary (the foreground is
  padded symmetrically before the transform);
* ``energy`` (``int64``): the distance quantised into ``levels`` classes, 0 outside the interior,
  ``1 .. levels - 1`` inside, the level edges spread evenly over ``span`` x the typical cell radius
  (:func:`energy_edges`);
* ``direction`` (``float32``, 2 x H x W, (dy, dx)): the normalised gradient of the distance
  (symmetric padding at the image edge), so unit vectors pointing away from the nearest boundary
  inside cells, zero outside (and at the rare interior pixels where the gradient vanishes,
  flagged off in ``direction_mask``);
* ``weight`` (``float32``): ``sqrt(mean cell area / cell area)`` on every cell and wall pixel, so
  every cell counts about the same whatever its size, 1 on background.

Compute the targets *after* geometric augmentation (the direction field turns with the image).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

BACKGROUND, INTERIOR, WALL = 0, 1, 2
SEMANTIC_CLASSES: tuple[str, ...] = ("background", "interior", "wall")
#: typical cell radius (px) at a 512 px field of view; scaled with the working size
REFERENCE_RADIUS_512: float = 40.0


@dataclass(frozen=True)
class Targets:
    """Per-pixel targets of one label map (see the module docstring)."""

    instances: np.ndarray  # int32, the cells after the walls were cut (walls are 0)
    semantic: np.ndarray  # int64, 0/1/2
    distance: np.ndarray  # float32
    energy: np.ndarray  # int64, 0 .. levels - 1
    direction: np.ndarray  # float32, 2 x H x W
    direction_mask: np.ndarray  # bool, interior pixels with a defined direction
    weight: np.ndarray  # float32


def cell_radius(size: int, reference_radius: float = REFERENCE_RADIUS_512) -> float:
    """Typical cell radius at a working side of ``size`` px (``reference_radius`` at 512 px)."""
    return float(reference_radius) * float(size) / 512.0


def energy_edges(levels: int, radius: float, span: float = 0.75) -> np.ndarray:
    """Upper distance edges of energy levels ``1 .. levels - 2`` (``levels - 2`` values, increasing).

    Level 1 holds interior pixels at distance ``<= edges[0]``, level ``k`` those in
    ``(edges[k - 2], edges[k - 1]]``, the top level ``levels - 1`` everything deeper than
    ``span * radius``.
    """
    if levels < 2:
        raise ValueError(f"need at least 2 energy levels, got {levels}")
    top = max(float(span) * float(radius), 1.0)
    return np.linspace(top / (levels - 1), top, levels - 1)[:-1] if levels > 2 else np.zeros(0)


def quantise_distance(distance: np.ndarray, interior: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Energy levels of a distance map: 0 outside ``interior``, else ``1 + #edges below the distance``."""
    level = 1 + np.searchsorted(edges, distance, side="left")
    return np.where(interior, level, 0).astype(np.int64)


def cut_walls(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paste the cells largest first (dilated by 3x3, then their outer ring cleared).

    Returns ``(instances, walls)``: ``instances`` the cells with the walls cut (``int32``, same ids),
    ``walls`` the ring pixels that were pasted over another cell (the walls between touching cells).
    """
    labels = np.asarray(labels)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    out = np.zeros(labels.shape, dtype=np.int32)
    walls = np.zeros(labels.shape, dtype=bool)
    kernel = np.ones((3, 3), np.uint8)
    objects = ndi.find_objects(labels.astype(np.int64))
    h, w = labels.shape
    for idx in np.argsort(-counts, kind="stable"):
        cid = int(ids[idx])
        sl = objects[cid - 1]
        y0, y1 = max(sl[0].start - 2, 0), min(sl[0].stop + 2, h)
        x0, x1 = max(sl[1].start - 2, 0), min(sl[1].stop + 2, w)
        mask = (labels[y0:y1, x0:x1] == cid).astype(np.uint8)
        grown = cv2.dilate(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        inner = cv2.erode(grown.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)
        ring = grown & ~inner
        window = out[y0:y1, x0:x1]
        wall_window = walls[y0:y1, x0:x1]
        wall_window |= ring & (window > 0)
        wall_window &= ~inner
        window[inner] = cid
        window[ring] = 0
    return out, walls


def _gradient(distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference gradient (dy, dx) with symmetric padding at the image edge."""
    padded = np.pad(distance, 1, mode="symmetric")
    dy = 0.5 * (padded[2:, 1:-1] - padded[:-2, 1:-1])
    dx = 0.5 * (padded[1:-1, 2:] - padded[1:-1, :-2])
    return dy, dx


def make_targets(labels: np.ndarray, levels: int = 16, radius: float | None = None, span: float = 0.75) -> Targets:
    """All per-pixel targets of the label map ``labels`` (see the module docstring).

    ``radius``: the typical cell radius in px (default :func:`cell_radius` of the map's side).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a 2-D label map, got shape {labels.shape}")
    if radius is None:
        radius = cell_radius(int(round(np.sqrt(labels.shape[0] * labels.shape[1]))))
    instances, walls = cut_walls(labels)
    interior = instances > 0
    pad = 8
    padded = np.pad(interior, pad, mode="symmetric")
    distance = ndi.distance_transform_edt(padded)[pad:-pad, pad:-pad].astype(np.float32)
    energy = quantise_distance(distance, interior, energy_edges(levels, radius, span))
    dy, dx = _gradient(distance)
    norm = np.sqrt(dy * dy + dx * dx)
    ok = interior & (norm > 1e-6)
    direction = np.zeros((2,) + labels.shape, dtype=np.float32)
    direction[0][ok] = dy[ok] / norm[ok]
    direction[1][ok] = dx[ok] / norm[ok]
    semantic = np.where(interior, INTERIOR, np.where(walls, WALL, BACKGROUND)).astype(np.int64)
    weight = np.ones(labels.shape, dtype=np.float32)
    areas = np.bincount(labels.reshape(-1).astype(np.int64))
    if len(areas) > 1 and areas[1:].max() > 0:
        present = areas[1:][areas[1:] > 0]
        per_cell = np.zeros(len(areas), dtype=np.float32)
        nz = areas > 0
        per_cell[nz] = np.sqrt(present.mean() / areas[nz])
        cell_px = labels > 0
        weight[cell_px] = per_cell[labels[cell_px].astype(np.int64)]
        # wall pixels taken from a larger cell keep that cell's weight (they belong to its label)
    return Targets(instances, semantic, distance, energy, direction, ok, weight)
