"""Reference predictions scored beside the methods, on the same predicted masks, and the summary table.

* **truth-broadcast** (:func:`truth_broadcast`): every predicted cell of an image gets its image's
  TRUE image-level labels (the competition's rule, :func:`wsss.data.synth.image_label`: the union of
  the positive labels of its true cells, or Negative when all are Negative) at confidence 1, and
  nothing else. The best a method can do without looking at cells under the ``strict`` protocol;
  under ``official`` it is a random order within the images that hold a class (every confidence
  ties: the grouped value is the worst order).
* **oracle** (:func:`oracle`): every predicted cell matched one-to-one to a true cell at IoU >= the
  metric's threshold (:func:`wsss.masks.greedy_match`; with disjoint masks at most one true cell can
  pass 0.5) gets that true cell's labels at confidence 1; an unmatched predicted cell gets no
  prediction at all (any prediction on it could only be a false positive). It has no false
  positive, so its AP per class is the share of true cells the segmentation recovers: what the
  segmentation costs. It scores the same under both protocols.

:func:`heterogeneous_ids` defines the heterogeneous images from the truth itself (true cells that do
not all carry one label set), so it works for any ground truth; on synthetic data it also counts
the images whose class 11 (mitotic spindle) is only on a few dividing cells.
:func:`summary_scores` scores one prediction under both protocols, on all and on heterogeneous
images, over all classes and over 0-17 (Negative left out).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from wsss.data.classes import NUM_CLASSES
from wsss.data.synth import image_label
from wsss.masks import greedy_match
from wsss.metrics.cell import (
    DEFAULT_OVERLAP,
    IOU_THRESHOLD,
    PROTOCOLS,
    PredImage,
    TruthImage,
    match_predictions,
    pairwise_overlap,
)

logger = logging.getLogger(__name__)

REFERENCES: tuple[str, ...] = ("truth-broadcast", "oracle")
SUBSETS: tuple[str, ...] = ("all", "heterogeneous")
#: Class sets of the summary: every class, and 0-17 (Negative left out).
CLASS_SETS: dict[str, tuple[int, ...] | None] = {"": None, " 0-17": tuple(range(NUM_CLASSES - 1))}


def image_truth_labels(truth: TruthImage) -> np.ndarray:
    """The image-level label (bool ``C``) of one truth image by the competition's rule."""
    rows = [np.flatnonzero(r).tolist() for r in np.asarray(truth.labels, dtype=bool)]
    out = np.zeros(NUM_CLASSES, dtype=bool)
    if rows:
        out[image_label(rows)] = True
    return out


def _flat(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cell, class, score)`` of the True entries of a bool ``n x C`` matrix, at confidence 1."""
    cell, cls = np.nonzero(scores)
    return cell.astype(np.int64), cls.astype(np.int64), np.ones(cell.size)


def truth_broadcast(cells: Mapping[str, PredImage], truth: Mapping[str, TruthImage]) -> dict[str, PredImage]:
    """Every cell of ``cells`` (predicted masks) given its image's true labels at confidence 1 (module doc)."""
    out: dict[str, PredImage] = {}
    for image_id, pred in cells.items():
        if image_id not in truth:
            continue
        n = pred.masks.ids.size
        labels = np.broadcast_to(image_truth_labels(truth[image_id]), (n, NUM_CLASSES))
        out[image_id] = PredImage(pred.masks, *_flat(labels))
    return out


def oracle(cells: Mapping[str, PredImage], truth: Mapping[str, TruthImage], iou_threshold: float = IOU_THRESHOLD,
           overlap: str = DEFAULT_OVERLAP) -> dict[str, PredImage]:
    """Every predicted cell matched to a true cell (IoU >= ``iou_threshold``) given its true labels; the rest nothing."""
    out: dict[str, PredImage] = {}
    for image_id, pred in cells.items():
        gt = truth.get(image_id)
        if gt is None:
            continue
        n = pred.masks.ids.size
        labels = np.zeros((n, NUM_CLASSES), dtype=bool)
        if n and gt.masks.ids.size:
            match = greedy_match(pairwise_overlap(pred.masks, gt.masks, overlap), iou_threshold)
            hit = match >= 0
            labels[hit] = np.asarray(gt.labels, dtype=bool)[match[hit]]
        out[image_id] = PredImage(pred.masks, *_flat(labels))
    return out


def references(cells: Mapping[str, PredImage], truth: Mapping[str, TruthImage], iou_threshold: float = IOU_THRESHOLD,
               overlap: str = DEFAULT_OVERLAP) -> dict[str, dict[str, PredImage]]:
    """Both references (:data:`REFERENCES`) on the masks of ``cells``."""
    return {"truth-broadcast": truth_broadcast(cells, truth), "oracle": oracle(cells, truth, iou_threshold, overlap)}


def heterogeneous_ids(truth: Mapping[str, TruthImage]) -> list[str]:
    """Ids of the truth images whose true cells do not all carry the same label set."""
    out = []
    for image_id, gt in truth.items():
        labels = np.asarray(gt.labels, dtype=bool)
        if labels.shape[0] > 1 and (labels != labels[:1]).any():
            out.append(image_id)
    return out


def summary_key(protocol: str, subset: str, classes: str = "") -> str:
    """Column name of :func:`summary_scores`: ``"official all"``, ``"strict heterogeneous 0-17"``, ..."""
    return f"{protocol} {subset}{classes}"


def summary_scores(preds: Mapping[str, PredImage], truth: Mapping[str, TruthImage], hetero: Sequence[str],
                   iou_threshold: float = IOU_THRESHOLD, overlap: str = DEFAULT_OVERLAP, ties: str = "group",
                   ) -> dict[str, float]:
    """mAP under both protocols, on all images and on ``hetero``, over all classes and 0-17 (:func:`summary_key`)."""
    subsets = {"all": dict(truth), "heterogeneous": {i: truth[i] for i in hetero if i in truth}}
    out: dict[str, float] = {}
    for subset, gt in subsets.items():
        if not gt:
            continue
        matches = match_predictions({i: p for i, p in preds.items() if i in gt}, gt, iou_threshold, PROTOCOLS, overlap)
        for protocol in PROTOCOLS:
            result = matches.result(protocol, ties)
            for suffix, classes in CLASS_SETS.items():
                out[summary_key(protocol, subset, suffix)] = result.map_over(classes)
    return out


def summary_table(preds: Mapping[str, Mapping[str, PredImage]], truth: Mapping[str, TruthImage],
                  iou_threshold: float = IOU_THRESHOLD, overlap: str = DEFAULT_OVERLAP, ties: str = "group",
                  hetero: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per prediction (``method`` column) with :func:`summary_scores`; ``attrs`` holds the image counts."""
    hetero = heterogeneous_ids(truth) if hetero is None else list(hetero)
    rows = [{"method": name, **summary_scores(p, truth, hetero, iou_threshold, overlap, ties)}
            for name, p in preds.items()]
    frame = pd.DataFrame(rows)
    frame.attrs["n_all"], frame.attrs["n_hetero"] = len(truth), len(hetero)
    return frame


def format_summary(frame: pd.DataFrame, title: str = "") -> str:
    """The summary as text: one line per method, columns by protocol, subset and class set."""
    columns = [c for c in frame.columns if c != "method"]
    width = max(10, *(len(str(m)) for m in frame["method"]))
    head = f"{'method':<{width}} " + " ".join(f"{c:>{max(8, len(c))}}" for c in columns)
    lines = ([title] if title else []) + [head]
    for row in frame.to_dict("records"):
        lines.append(f"{row['method']:<{width}} " + " ".join(f"{row[c]:>{max(8, len(c))}.4f}" for c in columns))
    return "\n".join(lines)


__all__: Sequence[str] = [
    "REFERENCES", "SUBSETS", "CLASS_SETS", "image_truth_labels", "truth_broadcast", "oracle", "references",
    "heterogeneous_ids", "summary_key", "summary_scores", "summary_table", "format_summary",
]
