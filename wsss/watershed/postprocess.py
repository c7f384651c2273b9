"""From the network's probabilities to a cell label map: numpy in, numpy out, no network here.

:func:`postprocess` takes ``semantic`` (3 x H x W sigmoid probabilities: background, interior,
wall) and ``energy`` (K x H x W softmax over the quantised distance levels) and returns a
``uint16`` cell map (``1..n``, 0 = background):

1. the expected energy ``E = sum_k k * p_k / (K - 1)`` (0 at the boundary, 1 deep inside);
2. the foreground: ``p(background) < fg_threshold``, its holes filled;
3. markers: connected high-energy cores (``E >= core_level / (K - 1)`` inside the interior class),
   or, when ``markers`` is given (e.g. the nuclei of the classical step), those labels inside the
   foreground; a foreground component without any marker becomes its own marker;
4. a watershed of ``-E`` from the markers, limited to the foreground;
5. cells below ``min_area`` removed, holes of each cell filled, ids renumbered.

Areas are given at a 512 px field of view and scaled by ``(side / 512) ** 2``.
Border flags come with the label-map file (:func:`wsss.masks.border_flags`), as for ``hpa_seg``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from wsss.config import Overridable
from wsss.masks import relabel_sequential

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PostParams(Overridable):
    """Post-processing parameters (areas in px^2 at a 512 px field of view)."""

    OVERRIDE_KIND: ClassVar[str] = "post-processing parameter"

    fg_threshold: float = 0.5
    core_level: float = 6.0
    min_core_area: float = 30.0
    min_area: float = 300.0



def area_scale(shape: tuple[int, ...]) -> float:
    """Area factor from a 512 px field of view to an image of ``shape`` (H, W, ...)."""
    return float(shape[0]) * float(shape[1]) / (512.0 * 512.0)


def expected_energy(energy: np.ndarray) -> np.ndarray:
    """``sum_k k * p_k / (K - 1)`` of a K x H x W probability stack (``float32``, 0..1)."""
    k = energy.shape[0]
    levels = np.arange(k, dtype=np.float32).reshape(k, 1, 1) / max(k - 1, 1)
    return (np.asarray(energy, dtype=np.float32) * levels).sum(axis=0)


def _markers_from_cores(e: np.ndarray, interior: np.ndarray, levels: int, p: PostParams, scale: float) -> np.ndarray:
    cores = (e >= p.core_level / max(levels - 1, 1)) & interior
    lab, _ = ndi.label(cores, structure=np.ones((3, 3), bool))
    return relabel_sequential(_drop_small(lab, p.min_core_area * scale))


def _drop_small(labels: np.ndarray, min_area: float) -> np.ndarray:
    """``labels`` with the instances of fewer than ``min_area`` pixels set to 0 (ids kept)."""
    small = np.bincount(labels.reshape(-1)) < min_area
    small[0] = False
    return np.where(small[labels], 0, labels)


def _add_unseeded_components(markers: np.ndarray, fg: np.ndarray) -> np.ndarray:
    comp, n = ndi.label(fg)
    if n == 0:
        return markers
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[np.unique(comp[markers > 0])] = True
    seeded[0] = True
    lonely = ~seeded[comp]
    if not lonely.any():
        return markers
    out = markers.astype(np.int64, copy=True)
    out[lonely] = comp[lonely] + int(markers.max(initial=0))
    return out


def fill_cell_holes(cells: np.ndarray) -> np.ndarray:
    """Fill the holes inside each instance with its id (holes between several cells stay background)."""
    out = cells.copy()
    for cid, sl in enumerate(ndi.find_objects(cells), start=1):
        if sl is None:
            continue
        own = cells[sl] == cid
        holes = ndi.binary_fill_holes(own) & (cells[sl] == 0)
        out[sl][holes] = cid
    return out


def postprocess(semantic: np.ndarray, energy: np.ndarray, params: PostParams | None = None,
                markers: np.ndarray | None = None) -> np.ndarray:
    """Cell label map (``uint16``) from semantic and energy probabilities; see the module docstring.

    ``markers``: an optional label map (e.g. classical nuclei) used as seeds instead of the cores.
    """
    p = params or PostParams()
    semantic = np.asarray(semantic, dtype=np.float32)
    energy = np.asarray(energy, dtype=np.float32)
    if semantic.ndim != 3 or semantic.shape[0] != 3 or energy.ndim != 3 or energy.shape[1:] != semantic.shape[1:]:
        raise ValueError(f"expected semantic 3 x H x W and energy K x H x W, got {semantic.shape} and {energy.shape}")
    scale = area_scale(semantic.shape[1:])
    e = expected_energy(energy)
    fg = ndi.binary_fill_holes(semantic[0] < p.fg_threshold)
    interior = (semantic[1] >= 0.5) & fg
    if markers is None:
        seeds = _markers_from_cores(e, interior, energy.shape[0], p, scale)
    else:
        seeds = np.where(fg, np.asarray(markers).astype(np.int64), 0)
    seeds = _add_unseeded_components(seeds, fg)
    if not seeds.any():
        return np.zeros(semantic.shape[1:], dtype=np.uint16)
    cells = watershed(-e, seeds, mask=fg).astype(np.int32)
    cells = fill_cell_holes(cells)
    return relabel_sequential(_drop_small(cells, p.min_area * scale)).astype(np.uint16)


def targets_as_probabilities(semantic: np.ndarray, energy: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """One-hot "probabilities" of integer targets (for round-trip tests and debugging)."""
    sem = np.eye(3, dtype=np.float32)[semantic].transpose(2, 0, 1)
    en = np.eye(levels, dtype=np.float32)[energy].transpose(2, 0, 1)
    return sem, en
