"""Image-level multi-label scores: macro F1 at a threshold and macro mean average precision.

Both take ``y_true`` (``N x C`` of 0/1) and ``y_prob`` (``N x C`` scores, probabilities or
logits for AP). Conventions:

* F1 of a class is ``2 TP / (2 TP + FP + FN)``; a class with no positives *and* no predicted
  positives has undefined F1 and is left out of the macro mean (a class with no positives but
  some false positives scores 0).
* AP of a class is the area under the step precision-recall curve,
  ``sum_k (R_k - R_{k-1}) P_k`` over distinct score thresholds (tied scores form one step; same
  definition as scikit-learn's ``average_precision_score``). A class without positives has
  undefined AP and is left out of the macro mean.
* The chance level of AP for a class is its prevalence (:func:`chance_map`).

Undefined macro means (no class defined) are ``nan``.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def _check(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    if y_prob.ndim == 1:
        y_prob = y_prob[:, None]
    if y_true.shape != y_prob.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and y_prob {y_prob.shape} must both be N x C")
    return (y_true > 0.5).astype(np.int64), y_prob


def per_class_f1(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """F1 of each class with predictions ``y_prob >= threshold`` (``nan`` where undefined)."""
    t, p = _check(y_true, y_prob)
    pred = (p >= threshold).astype(np.int64)
    tp = (pred * t).sum(0)
    fp = (pred * (1 - t)).sum(0)
    fn = ((1 - pred) * t).sum(0)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def macro_f1(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> float:
    """Mean of :func:`per_class_f1` over classes where it is defined."""
    f1 = per_class_f1(y_true, y_prob, threshold)
    return float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan")


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one class (``nan`` when there is no positive)."""
    t = (np.asarray(y_true).ravel() > 0.5).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(t.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # end index of each tie group
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class_ap(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """:func:`average_precision` of each column."""
    t, p = _check(y_true, y_prob)
    return np.array([average_precision(t[:, c], p[:, c]) for c in range(t.shape[1])])


def macro_map(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Mean of :func:`per_class_ap` over classes with at least one positive."""
    ap = per_class_ap(y_true, y_prob)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def chance_map(y_true: np.ndarray) -> float:
    """Expected macro mAP of a random scorer: mean prevalence over classes with a positive."""
    t = (np.asarray(y_true) > 0.5).astype(np.float64)
    if t.ndim == 1:
        t = t[:, None]
    prev = t.mean(0)
    present = t.sum(0) > 0
    return float(prev[present].mean()) if present.any() else float("nan")
