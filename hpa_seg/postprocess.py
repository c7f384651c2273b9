"""Label-map post-processing: pure numpy/scipy/OpenCV functions, numpy in, numpy out.

Nothing here knows about files, networks or the CLI. Label maps are integer arrays with
0 = background; "cells" and "nuclei" maps are consistent when nucleus ``i`` lies inside cell ``i``.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
from scipy import ndimage as ndi

from wsss.masks import border_flags, label_areas

logger = logging.getLogger(__name__)

BORDER_POLICIES: tuple[str, ...] = ("keep", "drop")


def fill_holes(mask: np.ndarray, max_area: float | None = None) -> np.ndarray:
    """Fill the holes of a binary mask: background regions not 4-connected to the image edge.

    With ``max_area`` only holes of at most that many pixels are filled (so in a dense field
    the background gaps enclosed by several cells stay background).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.size == 0:
        return mask.copy()
    if max_area is None:
        padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.uint8)
        padded[1:-1, 1:-1] = mask
        flood = np.zeros((mask.shape[0] + 4, mask.shape[1] + 4), dtype=np.uint8)
        cv2.floodFill(padded, flood, (0, 0), 2, flags=4)
        return padded[1:-1, 1:-1] != 2
    n, lab, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    fill = stats[:, cv2.CC_STAT_AREA] <= max_area
    edge = np.concatenate([lab[0, :], lab[-1, :], lab[:, 0], lab[:, -1]])
    fill[np.unique(edge)] = False
    fill[0] = False
    return mask | fill[lab]


def fill_label_holes(labels: np.ndarray) -> np.ndarray:
    """Fill the holes inside each instance of a label map with that instance's id.

    A hole is a background region not connected to the image edge that touches exactly one
    instance; holes between several instances stay background.
    """
    labels = np.asarray(labels)
    holes = fill_holes(labels > 0) & (labels == 0)
    if not holes.any():
        return labels
    hole_lab, n = ndi.label(holes)
    ring = cv2.dilate(hole_lab.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int64)
    out = labels.copy()
    # for every hole, the set of instance ids on its rim: fill when that set has one element
    rim = (ring > 0) & (hole_lab == 0) & (labels > 0)
    pairs = np.unique(np.stack([ring[rim], labels[rim].astype(np.int64)], axis=1), axis=0)
    if pairs.size == 0:
        return labels
    counts = np.bincount(pairs[:, 0], minlength=n + 1)
    lut = np.zeros(n + 1, dtype=np.int64)
    single = counts[pairs[:, 0]] == 1
    lut[pairs[single, 0]] = pairs[single, 1]
    fill = lut[hole_lab]
    out[fill > 0] = fill[fill > 0].astype(out.dtype)
    return out


def remove_small_labels(labels: np.ndarray, min_area: float) -> np.ndarray:
    """Set instances smaller than ``min_area`` pixels to 0 (ids are not renumbered)."""
    areas = label_areas(labels)
    small = areas < min_area
    small[0] = False
    if not small[1:].any():
        return labels
    out = labels.copy()
    out[small[labels]] = 0
    return out


def remove_small_objects(mask: np.ndarray, min_area: float, connectivity: int = 1) -> np.ndarray:
    """Remove connected components of a binary mask smaller than ``min_area`` pixels."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4 * connectivity)
    if n <= 1:
        return mask.astype(bool)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[lab]


def make_consistent(cells: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Enforce the id contract: nucleus ``i`` lies in cell ``i``, no cell without a nucleus.

    Nucleus pixels outside their own cell are cleared; cells left without a nucleus pixel are
    removed; both maps are renumbered ``1..n`` together (the cell order is kept) and returned as
    ``uint16``.
    """
    cells = np.asarray(cells).astype(np.int64, copy=False)
    nuclei = np.asarray(nuclei).astype(np.int64, copy=False)
    nuclei = np.where(nuclei == cells, nuclei, 0)
    n = max(int(cells.max(initial=0)), int(nuclei.max(initial=0))) + 1
    has_nucleus = np.bincount(nuclei.reshape(-1), minlength=n) > 0
    has_cell = np.bincount(cells.reshape(-1), minlength=n) > 0
    keep = has_nucleus & has_cell
    keep[0] = False
    lut = np.zeros(n, dtype=np.int64)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    if keep.sum() > np.iinfo(np.uint16).max:
        raise ValueError(f"{int(keep.sum())} instances do not fit a uint16 label map")
    return lut[cells].astype(np.uint16), lut[nuclei].astype(np.uint16)


def renumber_by_cells(cells: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the cells ``1..n`` (order kept) and give every nucleus its cell's new id.

    Nuclei whose id is not a present cell id become background. Returns ``uint16`` maps.
    """
    cells = np.asarray(cells).astype(np.int64, copy=False)
    nuclei = np.asarray(nuclei).astype(np.int64, copy=False)
    n = max(int(cells.max(initial=0)), int(nuclei.max(initial=0))) + 1
    present = np.bincount(cells.reshape(-1), minlength=n) > 0
    present[0] = False
    if present.sum() > np.iinfo(np.uint16).max:
        raise ValueError(f"{int(present.sum())} instances do not fit a uint16 label map")
    lut = np.zeros(n, dtype=np.int64)
    lut[present] = np.arange(1, int(present.sum()) + 1)
    return lut[cells].astype(np.uint16), lut[nuclei].astype(np.uint16)


def apply_border_policy(cells: np.ndarray, nuclei: np.ndarray, policy: str = "keep") -> tuple[np.ndarray, np.ndarray]:
    """``keep`` returns the maps unchanged; ``drop`` removes border cells with their nuclei.

    After ``drop`` the remaining cells are renumbered ``1..n`` and their nuclei follow them.
    """
    if policy not in BORDER_POLICIES:
        raise ValueError(f"border policy must be one of {BORDER_POLICIES}, got {policy!r}")
    if policy == "keep":
        return cells, nuclei
    flags = border_flags(cells)
    cells = np.where(flags[cells], 0, cells)
    return renumber_by_cells(cells, nuclei)


def assign_nuclei_to_cells(cells: np.ndarray, nuclear_mask: np.ndarray) -> np.ndarray:
    """Nucleus map for given cells: each cell's nuclear pixels carry that cell's id.

    Used when precomputed cell masks come without nuclei: ``nuclear_mask`` is a binary nucleus
    foreground and every cell gets the part of it that lies inside the cell.
    """
    return np.where(nuclear_mask & (cells > 0), cells, 0).astype(cells.dtype)


