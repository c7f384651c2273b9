"""Pictures of segmentations: outlines over the RGBY composite, and agreement with a reference."""

from __future__ import annotations

import logging

import numpy as np

from hpa_seg.evaluate import match_instances
from wsss.masks import resize_labels
from hpa_seg.postprocess import border_flags
from wsss.viz import cell_centroids, outline_mask, put_text, rgby_composite

logger = logging.getLogger(__name__)

CELL_COLOR = (255, 255, 255)
BORDER_CELL_COLOR = (255, 160, 0)
NUCLEUS_COLOR = (0, 255, 255)
MATCH_COLOR = (0, 255, 0)
EXTRA_COLOR = (255, 0, 255)
MISSED_COLOR = (255, 255, 0)


def _fit(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return resize_labels(np.asarray(labels), int(shape[0]), int(shape[1])).astype(np.int64)


def draw_segmentation(rgby: np.ndarray, cells: np.ndarray, nuclei: np.ndarray | None = None,
                      show_ids: bool = True, title: str | None = None) -> np.ndarray:
    """RGB picture: composite of ``rgby`` with cell outlines (white; border cells orange),
    nucleus outlines (cyan) and cell ids. Label maps are resized to the picture by nearest
    neighbour.
    """
    pic = rgby_composite(rgby)
    shape = pic.shape[:2]
    cells = _fit(cells, shape)
    flags = border_flags(cells)
    if nuclei is not None:
        pic[outline_mask(_fit(nuclei, shape))] = NUCLEUS_COLOR
    edge = outline_mask(cells)
    on_border = flags[cells] & edge
    pic[edge & ~on_border] = CELL_COLOR
    pic[on_border] = BORDER_CELL_COLOR
    if show_ids:
        scale = max(0.3, shape[0] / 1400.0)
        for cid, (x, y) in cell_centroids(cells).items():
            put_text(pic, str(cid), (int(x) - 6, int(y) + 4), scale=scale)
    if title:
        put_text(pic, title, (6, 16), scale=max(0.4, shape[0] / 1200.0))
    return pic


def draw_agreement(rgby: np.ndarray, pred: np.ndarray, ref: np.ndarray, iou: float = 0.6,
                   title: str | None = None) -> np.ndarray:
    """RGB picture comparing two cell maps: matched predicted cells green, unmatched predicted
    cells magenta, reference cells without a match yellow (their outlines).
    """
    pic = rgby_composite(rgby)
    shape = pic.shape[:2]
    pred = _fit(pred, shape)
    ref = _fit(ref, shape)
    m = match_instances(pred, ref, iou)
    matched_pred = np.zeros(int(pred.max()) + 1, dtype=bool)
    matched_pred[m.pred_ids] = True
    matched_ref = np.zeros(int(ref.max()) + 1, dtype=bool)
    matched_ref[m.ref_ids] = True
    ref_edge = outline_mask(ref)
    pic[ref_edge & ~matched_ref[ref]] = MISSED_COLOR
    pred_edge = outline_mask(pred)
    pic[pred_edge & matched_pred[pred]] = MATCH_COLOR
    pic[pred_edge & ~matched_pred[pred] & (pred > 0)] = EXTRA_COLOR
    if title:
        put_text(pic, title, (6, 16), scale=max(0.4, shape[0] / 1200.0))
    return pic
