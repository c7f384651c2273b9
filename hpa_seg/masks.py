"""Precomputed masks: bring label maps made elsewhere (HPA-Cell-Segmentation, cellpose, ...).

The files are found and read by :mod:`wsss.masks.files` (one set of accepted names, shared with
``wsss-infer --masks``) and brought to the working scale by :func:`wsss.masks.fit_label_maps`
(nearest neighbour, the project's one rule, ids renumbered ``1..n``; cells lost by the resize
disappear; each nucleus takes the id of the cell holding most of it). Without a nucleus map the
nuclei are taken from the blue channel (the nucleus foreground of :mod:`hpa_seg.nuclei` inside
each cell). Cells without a nucleus are kept: the masks are the user's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hpa_seg.nuclei import nucleus_foreground
from hpa_seg.params import SegParams, scale_factor
from hpa_seg.postprocess import assign_nuclei_to_cells
from wsss.masks import fit_label_maps, read_precomputed

logger = logging.getLogger(__name__)


def prepare_precomputed(cells: np.ndarray, nuclei: np.ndarray | None, shape: tuple[int, int],
                        blue: np.ndarray | None = None, params: SegParams | None = None,
                        name: str = "mask", image_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bring precomputed label maps to the working ``shape`` (numpy in, numpy out).

    :func:`wsss.masks.fit_label_maps` resizes and renumbers them (a cell map whose aspect ratio
    is not the image's, ``image_hw`` or else ``shape``, is refused, ``name`` naming it); without nuclei, ``blue`` (the
    working-scale blue channel, if given) supplies them. Returns ``uint16`` ``(cells, nuclei)``.
    """
    cells, nuc = fit_label_maps(cells, nuclei, shape, image_hw=image_hw, name=name)
    if nuc is None and blue is not None:
        params = params or SegParams()
        mask = nucleus_foreground(blue, params, scale_factor(blue.shape))
        nuc = assign_nuclei_to_cells(cells, mask)
    elif nuc is None:
        nuc = np.zeros_like(cells)
    return cells, np.asarray(nuc).astype(np.uint16)


def load_precomputed(mask_dir: Path | str, image_id: str, shape: tuple[int, int], blue: np.ndarray | None = None,
                     params: SegParams | None = None,
                     image_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read the precomputed masks of ``image_id`` from ``mask_dir`` at the working ``shape``.

    ``image_hw``: the image's original size, which the masks' aspect ratio must match (default ``shape``).
    """
    cells, nuclei, cell_path = read_precomputed(mask_dir, image_id)
    return prepare_precomputed(cells, nuclei, shape, blue, params, name=str(cell_path), image_hw=image_hw)
