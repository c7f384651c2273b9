"""Multilabel-stratified K folds and the per-class x per-fold count table."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from wsss.data.classes import CLASS_NAMES, LabelError, NUM_CLASSES, labels_to_matrix

logger = logging.getLogger(__name__)


class FoldsError(ValueError):
    """A labels or folds CSV that cannot be used."""


def read_labels_csv(path: Path | str) -> pd.DataFrame:
    """Read an ``ID,Label`` CSV, validating every label (one-line error naming file and row)."""
    path = Path(path)
    if not path.is_file():
        raise FoldsError(f"{path}: file not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"ID", "Label"} - set(frame.columns)
    if missing:
        raise FoldsError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    if frame["ID"].duplicated().any():
        dup = frame.loc[frame["ID"].duplicated(), "ID"].iloc[0]
        raise FoldsError(f"{path}: duplicate ID {dup}")
    for row, label in enumerate(frame["Label"], start=2):
        try:
            labels_to_matrix([label])
        except LabelError as exc:
            raise FoldsError(f"{path}: line {row}: {exc}") from None
    return frame


def make_folds(frame: pd.DataFrame, n_folds: int = 4, seed: int = 0) -> pd.DataFrame:
    """Assign each row a ``fold`` in ``0..n_folds-1`` with ``MultilabelStratifiedKFold``.

    Deterministic for a given seed and row order.
    """
    if n_folds < 2:
        raise FoldsError(f"n_folds must be at least 2, got {n_folds}")
    if len(frame) < n_folds:
        raise FoldsError(f"{len(frame)} images cannot be split into {n_folds} folds")
    targets = labels_to_matrix(frame["Label"])
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(frame), -1, dtype=np.int64)
    for fold, (_, valid) in enumerate(splitter.split(np.zeros(len(frame)), targets)):
        folds[valid] = fold
    out = frame[["ID", "Label"]].copy()
    out["fold"] = folds
    return out


def fold_table(folds: pd.DataFrame) -> pd.DataFrame:
    """Per-class x per-fold image counts (rows: classes, columns: ``fold 0..k-1`` and ``total``)."""
    targets = labels_to_matrix(folds["Label"]).astype(np.int64)
    n_folds = int(folds["fold"].max()) + 1
    counts = np.zeros((NUM_CLASSES, n_folds), dtype=np.int64)
    for fold in range(n_folds):
        counts[:, fold] = targets[folds["fold"].to_numpy() == fold].sum(axis=0)
    table = pd.DataFrame(counts, columns=[f"fold {k}" for k in range(n_folds)])
    table.insert(0, "class", [f"{i} {name}" for i, name in enumerate(CLASS_NAMES)])
    table["total"] = counts.sum(axis=1)
    images = [int((folds["fold"] == k).sum()) for k in range(n_folds)]
    table.loc[len(table)] = ["images", *images, sum(images)]
    return table


def read_folds(path: Path | str) -> pd.DataFrame:
    """Read a folds CSV written by ``wsss-folds`` (``ID,Label,fold``)."""
    path = Path(path)
    frame = read_labels_csv(path)
    if "fold" not in frame.columns:
        raise FoldsError(f"{path}: no fold column (write it with wsss-folds)")
    try:
        frame["fold"] = frame["fold"].astype(int)
    except ValueError:
        raise FoldsError(f"{path}: fold column must hold integers") from None
    return frame


def check_fold_numbers(frame: pd.DataFrame, path: Path | str, fold: int | None = None) -> list[int]:
    """The folds of a folds table, checked: numbered ``0..n-1`` as ``wsss-folds`` writes them, ``fold`` among them.

    A stray value (``7`` in a 4-fold file) would make a fold of a few images without a word, so
    it raises :class:`FoldsError` naming the file, the values and how many images the odd ones hold.
    """
    counts = frame["fold"].value_counts().sort_index()
    folds = [int(f) for f in counts.index]
    if folds != list(range(len(folds))):
        odd = [f for f in folds if not 0 <= f < len(folds)] or folds
        detail = ", ".join(f"fold {f}: {int(counts[f])} image(s)" for f in odd[:3])
        raise FoldsError(f"{path}: fold numbers must run 0..n-1 as wsss-folds writes them, got "
                         f"{', '.join(map(str, folds))} ({detail})")
    if fold is not None and fold not in folds:
        raise FoldsError(f"{path}: fold {fold} not found (folds 0..{len(folds) - 1})")
    return folds
