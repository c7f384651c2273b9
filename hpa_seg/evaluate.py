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

from wsss.data.io import resize_labels as _resize_labels

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


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a label map to ``shape`` (height, width) with the project's nearest-neighbour rule.

    Delegates to :func:`wsss.data.io.resize_labels`, so segmentation, submission and metrics agree.
    """
    return _resize_labels(labels, int(shape[0]), int(shape[1]))


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map the non-zero labels of ``labels`` onto 1..n; return (compact map as int64, original ids)."""
    flat = np.asarray(labels).reshape(-1).astype(np.int64, copy=False)
    ids = np.unique(flat)
    ids = ids[ids != 0]
    compact = np.searchsorted(np.concatenate(([0], ids)), flat)
    return compact, ids


def match_instances(pred: np.ndarray, ref: np.ndarray, iou: float = 0.6) -> Match:
    """Match the instances of two label maps of the same shape at an IoU threshold.

    Returns the matched ``(pred id, ref id)`` pairs with their IoU. For thresholds below 0.5 a
    greedy one-to-one assignment in decreasing IoU order is used.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"label maps differ in shape: pred {pred.shape} vs ref {ref.shape}")
    p, p_ids = _compact(pred)
    r, r_ids = _compact(ref)
    n_p, n_r = len(p_ids), len(r_ids)
    empty = np.zeros(0, dtype=np.int64)
    if n_p == 0 or n_r == 0:
        return Match(empty, empty, np.zeros(0), n_p, n_r)
    joint = np.bincount(p * (n_r + 1) + r, minlength=(n_p + 1) * (n_r + 1)).reshape(n_p + 1, n_r + 1)
    area_p = joint.sum(axis=1)[1:]
    area_r = joint.sum(axis=0)[1:]
    inter = joint[1:, 1:].astype(np.float64)
    union = area_p[:, None] + area_r[None, :] - inter
    ious = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if iou > 0.5:
        pi, ri = np.nonzero(ious >= iou)
    else:
        pi, ri = _greedy(ious, iou)
    return Match(p_ids[pi], r_ids[ri], ious[pi, ri], n_p, n_r)


def _greedy(ious: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs with IoU >= threshold, taken in decreasing IoU order."""
    pi, ri = np.nonzero(ious >= threshold)
    order = np.argsort(-ious[pi, ri], kind="stable")
    used_p: set[int] = set()
    used_r: set[int] = set()
    keep_p: list[int] = []
    keep_r: list[int] = []
    for k in order:
        a, b = int(pi[k]), int(ri[k])
        if a in used_p or b in used_r:
            continue
        used_p.add(a)
        used_r.add(b)
        keep_p.append(a)
        keep_r.append(b)
    return np.asarray(keep_p, dtype=np.int64), np.asarray(keep_r, dtype=np.int64)


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
