"""Segmentation parameters, every length and area given at a reference field of view.

All sizes are expressed for a field of view sampled at :data:`REFERENCE_SIDE` = 2048 px (the
most common HPA image size, the scale HPA-Cell-Segmentation's morphology is tuned for) and are
converted to the working scale: lengths are multiplied by ``factor = working side / 2048`` and
areas by ``factor ** 2``. So the same parameters run at 512 px (factor 0.25) or at full
resolution (factor 1 or 1.5 for a 3072 px image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from wsss.config import Overridable

REFERENCE_SIDE: int = 2048
#: typical cell and nucleus diameters (px) at the reference field of view, the scale the parameters are tuned for
REFERENCE_CELL_DIAMETER: float = 360.0
REFERENCE_NUCLEUS_DIAMETER: float = 120.0


@dataclass(frozen=True)
class SegParams(Overridable):
    """Parameters of the weight-free segmentation (lengths in px, areas in px^2, at 2048 px).

    Nuclei (blue channel):
        nuc_sigma: Gaussian smoothing before thresholding.
        nuc_threshold_scale: the nucleus threshold is this fraction of the Otsu threshold of
            the smoothed blue channel (values below 1 keep dim nuclei of dense fields).
        nuc_min_level: lowest allowed nucleus threshold (0-255 units), so a nearly empty image
            does not turn its noise into nuclei.
        nuc_min_area: smallest nucleus kept.
        nuc_split_h: a distance-transform maximum seeds its own nucleus only when it rises this
            many px above the saddle to a higher maximum (h-maxima); larger values split less.
        nuc_split_ratio: two touching parts are kept apart only when the neck between them is
            narrower than this fraction of the smaller part's radius (otherwise merged back,
            which keeps lobed nuclei whole).
        nuc_local_fraction: 0 (default) keeps the global ``nuc_threshold_scale x Otsu`` rule; a
            value in (0, 1) switches to an adaptive foreground: the blue channel minus its
            background (a grey opening of radius ``2 x nuc_local_radius``) must exceed this
            fraction of its own local peak (maximum within ``nuc_local_radius``), so dim nuclei
            next to bright ones, uneven background and bright gaps between nuclei are handled.
        nuc_local_radius: radius of the local-peak window (about a nucleus diameter).
    Cells (red + yellow cytoplasm):
        cell_sigma: Gaussian smoothing of the cytoplasm signal.
        cell_threshold_scale: the foreground threshold is ``background + scale * (otsu - background)``,
            an image-derived level well below Otsu so dim cells are kept.
        cell_background_percentile: percentile of the smoothed signal taken as ``background``.
        cell_min_level: lowest allowed foreground threshold (0-255 units).
        cell_close_radius: radius of the closing applied to the foreground.
        cell_max_hole: largest background hole filled in the cell foreground (bigger gaps
            enclosed by several cells stay background).
        cell_min_area: smallest cell kept (its nucleus goes with it).
        cell_distance_weight: weight of the distance to the nucleus in the watershed landscape
            (0 = intensity only); balances bright against dim neighbours.
    """

    OVERRIDE_KIND: ClassVar[str] = "segmentation parameter"

    nuc_sigma: float = 6.0
    nuc_threshold_scale: float = 0.5
    nuc_min_level: float = 8.0
    nuc_min_area: float = 2500.0
    nuc_split_h: float = 12.0
    nuc_split_ratio: float = 0.75
    nuc_local_fraction: float = 0.0
    nuc_local_radius: float = 80.0
    cell_sigma: float = 8.0
    cell_threshold_scale: float = 0.15
    cell_background_percentile: float = 5.0
    cell_min_level: float = 4.0
    cell_close_radius: float = 8.0
    cell_max_hole: float = 4000.0
    cell_min_area: float = 8000.0
    cell_distance_weight: float = 0.25



def scale_factor(shape: tuple[int, ...], reference_side: int = REFERENCE_SIDE) -> float:
    """Linear factor from the reference field of view to an image of ``shape`` (H, W, ...)."""
    side = math.sqrt(float(shape[0]) * float(shape[1]))
    return side / float(reference_side)


def diameter_factor(diameter: float) -> float:
    """Linear factor for an expected cell ``diameter`` in px at the working scale (cellpose's convention)."""
    if not diameter or diameter <= 0:
        raise ValueError(f"diameter must be a positive number of px, got {diameter!r}")
    return float(diameter) / REFERENCE_CELL_DIAMETER


def nucleus_factor(nucleus_areas: Sequence[float]) -> float | None:
    """Linear factor estimated from measured nucleus areas (px^2): median equivalent diameter over the
    reference nucleus diameter; ``None`` without nuclei."""
    areas = [float(a) for a in nucleus_areas if a > 0]
    if not areas:
        return None
    areas.sort()
    median = areas[len(areas) // 2]
    return 2.0 * math.sqrt(median / math.pi) / REFERENCE_NUCLEUS_DIAMETER
