"""Cells from the cytoplasm stains (red microtubules + yellow ER), seeded by the nuclei.

The green channel is the protein of interest (nuclear, punctate or absent), not a cell stain, so
it is not used. Steps (sizes from :class:`hpa_seg.params.SegParams`, converted to the image's
scale):

1. Cytoplasm signal = mean of red and yellow, Gaussian smoothed.
2. Foreground threshold derived from the image: ``background + scale * (otsu - background)``,
   where ``background`` is the 5th percentile of the signal (the gaps between cells even in a
   dense field); it lies well below Otsu so dim cells are kept. Nuclei are always foreground;
   a closing and the filling of small holes follow (large gaps enclosed by several cells stay
   background).
3. Watershed seeded by the nuclei on a landscape mixing the inverted cytoplasm signal
   (normalised by its 99.5th percentile) with the distance to the nearest nucleus (``cell_distance_weight``): cell
   boundaries fall on dim valleys between cells, and a bright cell cannot swallow a dim
   neighbour far from its own nucleus.
4. Foreground not reached from any nucleus stays background (no cell without a nucleus); holes
   inside a cell are filled; cells below ``cell_min_area`` are removed with their nuclei.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
from skimage.segmentation import watershed

from hpa_seg.nuclei import disk, otsu_level, smooth
from hpa_seg.params import SegParams, scale_factor
from hpa_seg.postprocess import fill_holes, fill_label_holes, remove_small_labels

logger = logging.getLogger(__name__)


def cytoplasm_signal(red: np.ndarray, yellow: np.ndarray, sigma: float) -> np.ndarray:
    """Smoothed mean of the red and yellow channels (``float32``, ``0..255``)."""
    sig = (np.asarray(red, dtype=np.float32) + np.asarray(yellow, dtype=np.float32)) * 0.5
    return smooth(sig, sigma)


def foreground_level(signal: np.ndarray, threshold_scale: float, min_level: float,
                     background_percentile: float = 5.0) -> float:
    """Image-derived foreground threshold of a cytoplasm signal (see the module docstring)."""
    if signal.size == 0:
        return float(min_level)
    otsu = otsu_level(signal)
    background = min(float(np.percentile(signal, background_percentile)), otsu)
    return max(min_level, background + threshold_scale * (otsu - background))


def cell_foreground(signal: np.ndarray, nuclei: np.ndarray, params: SegParams, factor: float) -> np.ndarray:
    """Binary cell foreground: thresholded signal or nucleus, closed, holes filled."""
    level = foreground_level(signal, params.cell_threshold_scale, params.cell_min_level,
                             params.cell_background_percentile)
    mask = (signal > level) | (nuclei > 0)
    radius = params.cell_close_radius * factor
    if radius >= 0.5:
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, disk(radius)).astype(bool)
    return fill_holes(mask, params.cell_max_hole * factor**2)


def watershed_landscape(signal: np.ndarray, nuclei: np.ndarray, params: SegParams, factor: float) -> np.ndarray:
    """Landscape flooded from the nuclei: inverted normalised signal plus weighted nucleus distance."""
    peak = float(np.percentile(signal, 99.5)) if signal.size else 0.0
    norm = signal / peak if peak > 0 else signal
    land = -np.clip(norm, 0, 1)
    weight = params.cell_distance_weight
    if weight > 0 and nuclei.any():
        d = cv2.distanceTransform((nuclei == 0).astype(np.uint8), cv2.DIST_L2, 3)
        # typical nucleus-to-cell-edge distance at the reference scale is ~150 px
        land = land + weight * d / (150.0 * factor)
    return land.astype(np.float32)


def segment_cells(red: np.ndarray, yellow: np.ndarray, nuclei: np.ndarray, params: SegParams | None = None,
                  factor: float | None = None) -> np.ndarray:
    """Cell labels (``int32``) seeded by ``nuclei``: cell ``i`` grows from nucleus ``i``.

    Cells below the minimum area are removed (the caller drops their nuclei when enforcing the
    id contract); ids are not renumbered here.
    """
    params = params or SegParams()
    factor = scale_factor(red.shape) if factor is None else factor
    if not nuclei.any():
        return np.zeros(nuclei.shape, dtype=np.int32)
    signal = cytoplasm_signal(red, yellow, params.cell_sigma * factor)
    mask = cell_foreground(signal, nuclei, params, factor)
    land = watershed_landscape(signal, nuclei, params, factor)
    cells = watershed(land, markers=nuclei.astype(np.int32), mask=mask)
    cells = fill_label_holes(cells)
    cells = remove_small_labels(cells, params.cell_min_area * factor**2)
    return cells.astype(np.int32, copy=False)
