"""Pseudo labels: soft training targets from out-of-fold per-cell predictions (``wsss-pseudo``).

Input: one OOF per-cell table (``wsss-oof`` output of any stage, or a ``wsss-ensemble`` of several)
and the image labels (``folds.csv``). Output:

* **per-cell targets** (:func:`cell_targets`, for ``wsss-train --task cell --soft-labels``): each
  cell's OOF probabilities, with the classes 0-17 that its image's labels lack set to 0 (an image
  label is reliable at the image level: a cell cannot hold a class its image does not). Negative
  (18) is never masked: in HPA (and ``wsss-synth``) an image labelled with classes 0-17 may still
  hold negative cells, and its label does not say so. Without labels (``mask=False``) the
  probabilities pass unchanged.
* **per-image targets** (:func:`image_targets`, for the Puzzle-CAM model, ``wsss-train
  --soft-labels``): aggregated from the image's cell targets. An image holds a class 0-17 when
  *at least one* of its cells does, so the image target of such a class is the **max** over its
  cells (the probability of the most confident cell). Max rather than the noisy-OR
  ``1 - prod(1 - p)``: noisy-OR assumes independent cells and grows with the number of cells (30
  cells at 0.05 give 0.79), so large images would get confident targets from noise; max is the
  tightest bound that does not depend on the count. Negative is an image label when *every*
  cell is negative, so its image target is the **min** over the cells of ``p_18``. Then the
  image's own labels mask every class (18 included) it lacks to 0: at the image level the labels
  are exact, and the soft targets only say how confident the OOF model is about the labels the
  image does have. ``agg="mean"`` (mean over cells for every class) and ``"noisy_or"`` are there
  for comparison.

Rows keep the per-cell table contract (:data:`wsss.schema.CELL_COLUMNS`, ``source`` set to
``pseudo``) and the image-level contract (:data:`wsss.schema.IMAGE_COLUMNS`, ``fold`` the image's
OOF fold), every probability in ``[0, 1]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from wsss.data.classes import NEGATIVE, NUM_CLASSES
from wsss.schema import IMAGE_COLUMNS, PROB_COLUMNS

logger = logging.getLogger(__name__)

AGGREGATIONS: tuple[str, ...] = ("max", "mean", "noisy_or")
SOURCE = "pseudo"


class PseudoError(ValueError):
    """Inputs that cannot give pseudo labels (the message names the table or id)."""


def _label_rows(ids: pd.Series, labels: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    missing = sorted(set(ids) - set(labels))
    if missing:
        raise PseudoError(f"{name}: {len(missing)} images have no labels in the folds CSV, e.g. {missing[0]}")
    return np.stack([np.asarray(labels[i], dtype=np.float64) for i in ids]) if len(ids) else np.zeros((0, NUM_CLASSES))


def cell_targets(cells: pd.DataFrame, labels: Mapping[str, np.ndarray] | None, name: str = "table") -> pd.DataFrame:
    """Per-cell soft targets: ``cells`` with classes 0-17 absent from the image labels set to 0 (see the module doc)."""
    out = cells.copy()
    probs = np.clip(out[PROB_COLUMNS].to_numpy(dtype=np.float64), 0.0, 1.0)
    if labels is not None:
        allowed = _label_rows(out["image_id"].astype(str), labels, name) > 0
        allowed[:, NEGATIVE] = True
        probs = np.where(allowed, probs, 0.0)
    out[PROB_COLUMNS] = probs.astype(np.float32)
    if "source" in out.columns:
        out["source"] = SOURCE
    return out.reset_index(drop=True)


def aggregate(probs: np.ndarray, agg: str = "max") -> np.ndarray:
    """Image-level probabilities ``C`` from the ``K x C`` probabilities of its cells (see the module doc)."""
    if agg not in AGGREGATIONS:
        raise PseudoError(f"image aggregation must be one of {', '.join(AGGREGATIONS)}, got {agg!r}")
    probs = np.asarray(probs, dtype=np.float64)
    if agg == "mean":
        return probs.mean(axis=0)
    if agg == "noisy_or":
        out = 1.0 - np.prod(1.0 - probs, axis=0)
    else:
        out = probs.max(axis=0)
    out[NEGATIVE] = probs[:, NEGATIVE].min()  # Negative image: every cell negative
    return out


def image_targets(cells: pd.DataFrame, labels: Mapping[str, np.ndarray] | None, agg: str = "max",
                  name: str = "table") -> pd.DataFrame:
    """Per-image soft targets (``IMAGE_COLUMNS``) aggregated from per-cell targets, masked by the image labels."""
    ids, rows, folds = [], [], []
    for image_id, group in cells.groupby("image_id", sort=True):
        ids.append(str(image_id))
        rows.append(aggregate(group[PROB_COLUMNS].to_numpy(), agg))
        folds.append(int(group["fold"].iloc[0]) if "fold" in group.columns else -1)
    probs = np.stack(rows) if rows else np.zeros((0, NUM_CLASSES))
    if labels is not None:
        probs = np.where(_label_rows(pd.Series(ids, dtype=object), labels, name) > 0, probs, 0.0)
    frame = pd.DataFrame({"image_id": np.asarray(ids, dtype=object), "source": SOURCE,
                          "fold": np.asarray(folds, dtype=np.int16)})
    for j, col in enumerate(PROB_COLUMNS):
        frame[col] = np.clip(probs[:, j], 0.0, 1.0).astype(np.float32)
    return frame[IMAGE_COLUMNS]


def summary(cells: pd.DataFrame, images: pd.DataFrame) -> dict[str, object]:
    """Counts and per-class mean targets of both outputs (for the report)."""
    return {"n_cells": int(len(cells)), "n_images": int(len(images)),
            "cell_mean": [round(float(v), 4) for v in cells[PROB_COLUMNS].mean()] if len(cells) else [],
            "image_mean": [round(float(v), 4) for v in images[PROB_COLUMNS].mean()] if len(images) else []}


__all__ = ["AGGREGATIONS", "PseudoError", "aggregate", "cell_targets", "image_targets", "summary"]
