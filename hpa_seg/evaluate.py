"""Instance matching and agreement scores between two label maps (numpy in, numpy out).

Two instances match when their intersection over union is at least ``iou`` (0.6 by default, the
threshold of the HPA single-cell competition). With a threshold above 0.5 an instance can overlap
at most one other instance that much, so the matching is unique without any assignment step.

Scores, per image (the definitions used by cellpose and StarDist for instance segmentation):

* ``tp`` matched pairs, ``fp`` predicted instances without a match, ``fn`` reference instances
  without a match;
* ``ap = tp / (tp + fp + fn)`` ("average precision" at one IoU threshold, for masks without
  confidence scores);
* ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)`` (matched reference cells over
  reference cells), ``f1``; ``mean_iou`` of the matched pairs.

Empty against empty counts as perfect agreement (all scores 1).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from wsss.masks import greedy_match, label_iou

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Match:
    """Matched instance pairs and their IoU (arrays of equal length), plus the instance counts."""

    pred_ids: np.ndarray
    ref_ids: np.ndarray
    ious: np.ndarray
    n_pred: int
    n_ref: int


@dataclass(frozen=True)
class Agreement:
    """Per-image agreement scores (see the module docstring for the definitions)."""

    n_pred: int
    n_ref: int
    tp: int
    fp: int
    fn: int
    ap: float
    precision: float
    recall: float
    f1: float
    mean_iou: float

    def as_dict(self) -> dict[str, float | int]:
        """The scores as a plain dict (for tables)."""
        return asdict(self)


def match_instances(pred: np.ndarray, ref: np.ndarray, iou: float = 0.6) -> Match:
    """Match the instances of two label maps of the same shape at an IoU threshold.

    IoUs come from the one overlap kernel (:func:`wsss.masks.label_iou`), pairs from the one
    matcher (:func:`wsss.masks.greedy_match`: one-to-one, in decreasing IoU order; above 0.5 that
    is simply every pair at or over the threshold). Returns the matched ``(pred id, ref id)``
    pairs with their IoU, in the order of the predicted ids.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"label maps differ in shape: pred {pred.shape} vs ref {ref.shape}")
    ious, p_ids, r_ids = label_iou(pred, ref)
    n_p, n_r = len(p_ids), len(r_ids)
    empty = np.zeros(0, dtype=np.int64)
    if n_p == 0 or n_r == 0:
        return Match(empty, empty, np.zeros(0), n_p, n_r)
    match = greedy_match(ious, iou)
    pi = np.flatnonzero(match >= 0)
    ri = match[pi]
    return Match(p_ids[pi].astype(np.int64), r_ids[ri].astype(np.int64), ious[pi, ri], n_p, n_r)


def agreement(pred: np.ndarray, ref: np.ndarray, iou: float = 0.6) -> Agreement:
    """Agreement scores of ``pred`` with ``ref`` (same shape) at an IoU threshold."""
    m = match_instances(pred, ref, iou)
    tp = len(m.pred_ids)
    fp = m.n_pred - tp
    fn = m.n_ref - tp

    def ratio(a: int, b: int) -> float:
        return 1.0 if b == 0 else a / b

    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    return Agreement(
        n_pred=m.n_pred, n_ref=m.n_ref, tp=tp, fp=fp, fn=fn,
        ap=ratio(tp, tp + fp + fn), precision=precision, recall=recall, f1=f1,
        mean_iou=float(m.ious.mean()) if tp else 0.0,
    )


def instance_ap(pred: np.ndarray, ref: np.ndarray, iou: float = 0.6) -> float:
    """``tp / (tp + fp + fn)`` at the IoU threshold (1.0 when both maps are empty)."""
    return agreement(pred, ref, iou).ap
