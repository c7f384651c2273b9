"""Bounding boxes of cell masks and their pairwise IoU (the box overlap of the HPA scoring script).

A cell's box is ``(row_min, col_min, row_max + 1, col_max + 1)`` in pixels of the original image
size (half-open, so its area is ``(row_max + 1 - row_min) * (col_max + 1 - col_min)``), the way the
HPA competition's scoring script turned each mask into a box before box-IoU matching. A cell
without pixels has the box ``(0, 0, 0, 0)`` and IoU 0 with everything.

Boxes come from a working-scale label map (mapped to the original size through the project's
nearest-neighbour rule, :func:`wsss.data.io.nearest_index`, without upscaling the map) or from
pycocotools RLEs (``toBbox``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from wsss.masks.cells import CellMasks
from wsss.masks.labels import nearest_index

logger = logging.getLogger(__name__)


def _first_last(src_index: np.ndarray, n_src: int) -> tuple[np.ndarray, np.ndarray]:
    """For each source index, the first and last destination index that maps to it (-1 if none).

    ``src_index`` is non-decreasing (a nearest-neighbour mapping), so each source index owns a
    contiguous destination range.
    """
    first = np.full(n_src, -1, dtype=np.int64)
    last = np.full(n_src, -1, dtype=np.int64)
    dst = np.arange(src_index.size, dtype=np.int64)
    first[src_index[::-1]] = dst[::-1]
    last[src_index] = dst
    return first, last


def label_map_boxes(labels: np.ndarray, ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """``len(ids) x 4`` boxes ``(r0, c0, r1, c1)`` at ``height x width`` of the cells ``ids`` of a label map.

    ``labels`` may be at working scale; its rows and columns map to the original size by the
    nearest-neighbour rule every label-map resize of the project uses, so the boxes equal those of
    the upscaled map. Ids absent from the map get ``(0, 0, 0, 0)``.
    """
    labels = np.asarray(labels)
    ids = np.asarray(ids, dtype=np.int64)
    boxes = np.zeros((ids.size, 4), dtype=np.int64)
    if ids.size == 0 or labels.size == 0:
        return boxes
    h, w = labels.shape
    flat = labels.astype(np.int64, copy=False)
    n = int(max(flat.max(initial=0), ids.max(initial=0))) + 1
    row_first, row_last = _first_last(nearest_index(h, int(height)), h)
    col_first, col_last = _first_last(nearest_index(w, int(width)), w)
    rows_any = np.zeros((n, h), dtype=bool)
    cols_any = np.zeros((n, w), dtype=bool)
    rr, cc = np.nonzero(flat)
    values = flat[rr, cc]
    rows_any[values, rr] = True
    cols_any[values, cc] = True
    rows_any[:, row_first < 0] = False   # working rows/columns no original pixel maps to (a shrunk map)
    cols_any[:, col_first < 0] = False
    cells = np.clip(ids, 0, None)
    present = (ids > 0) & rows_any[cells].any(axis=1) & cols_any[cells].any(axis=1)
    r_lo = np.argmax(rows_any[cells], axis=1)
    r_hi = h - 1 - np.argmax(rows_any[cells][:, ::-1], axis=1)
    c_lo = np.argmax(cols_any[cells], axis=1)
    c_hi = w - 1 - np.argmax(cols_any[cells][:, ::-1], axis=1)
    found = np.stack([row_first[r_lo], col_first[c_lo], row_last[r_hi] + 1, col_last[c_hi] + 1], axis=1)
    boxes[present] = found[present]
    return boxes


def rle_boxes(rles: Sequence[dict]) -> np.ndarray:
    """``n x 4`` boxes ``(r0, c0, r1, c1)`` of pycocotools RLEs (``toBbox`` gives ``x, y, w, h``)."""
    if len(rles) == 0:
        return np.zeros((0, 4), dtype=np.int64)
    xywh = np.asarray(mask_utils.toBbox(list(rles)), dtype=np.float64).reshape(-1, 4)
    x, y, bw, bh = xywh.T
    return np.rint(np.stack([y, x, y + bh, x + bw], axis=1)).astype(np.int64)


def cell_boxes(masks: CellMasks) -> np.ndarray:
    """Boxes of every cell of ``masks`` in the order of ``masks.ids`` (see the module docstring)."""
    if masks.rles is not None:
        return rle_boxes(masks.rles)
    return label_map_boxes(masks.labels, masks.ids, masks.height, masks.width)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (rows) with every box of ``b`` (columns); half-open ``(r0, c0, r1, c1)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top = np.maximum(a[:, None, 0], b[None, :, 0])
    left = np.maximum(a[:, None, 1], b[None, :, 1])
    bottom = np.minimum(a[:, None, 2], b[None, :, 2])
    right = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def pairwise_box_iou(a: CellMasks, b: CellMasks) -> np.ndarray:
    """Box IoU of every cell of ``a`` (rows, order of ``a.ids``) with every cell of ``b`` (columns)."""
    if (a.height, a.width) != (b.height, b.width):
        raise ValueError(f"cell masks of different image sizes: {a.height}x{a.width} vs {b.height}x{b.width}")
    return box_iou(cell_boxes(a), cell_boxes(b))


__all__: Sequence[str] = ["label_map_boxes", "rle_boxes", "cell_boxes", "box_iou", "pairwise_box_iou"]
