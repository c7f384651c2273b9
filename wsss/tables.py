"""Per-cell prediction tables on disk: reading one back (:func:`read_cell_table`), merging
duplicate cells (:func:`average_duplicate_cells`) and refusing probabilities outside [0, 1]
(:func:`check_probabilities`); image-level tables (``image_id, p_0..p_18``: stage 1's
``images_stage1``, the soft image targets of ``wsss-pseudo``) are read by :func:`read_image_table`.

A per-cell table (parquet, or CSV with the same columns) has one row per ``(image_id, cell_id)``
with the class probabilities ``p_0..p_18`` and, for the later stages, the cell's mask as
``mask_path`` (a label-map ``.npz``) or ``mask`` (a mask string); the columns are named in
:mod:`wsss.schema`. Inference writes these tables (:mod:`wsss.infer.tables`); evaluation, the
ensemble and the submission read them here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.masks import MaskError
from wsss.schema import CELL_KEY_COLUMNS, PROB_COLUMNS

logger = logging.getLogger(__name__)

__all__ = ["check_probabilities", "CellTableError", "average_duplicate_cells", "read_cell_table", "read_image_table"]


class CellTableError(MaskError):
    """A per-cell table that is missing, unreadable or lacks its key columns.

    A :class:`~wsss.masks.MaskError`, like :class:`~wsss.submission.SubmissionError`, so the
    command-line tools report both the same way.
    """


def average_duplicate_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """Average the probabilities of duplicate ``(image_id, cell_id)`` rows (e.g. one row per fold model).

    Other columns come from the first of the duplicates; a warning states how many rows merged.
    """
    keys = list(CELL_KEY_COLUMNS)
    dup = cells.duplicated(keys)
    if not dup.any():
        return cells
    logger.warning("%d duplicate (image_id, cell_id) rows averaged into their first row", int(dup.sum()))
    probs = cells.groupby(keys, sort=False)[PROB_COLUMNS].mean()
    rest = cells.drop(columns=PROB_COLUMNS).drop_duplicates(keys).set_index(keys)
    return rest.join(probs).reset_index()


def _mask_path_from(folder: Path, value: object) -> object:
    """A relative ``mask_path`` missing from the working directory but present under ``folder``, as that path."""
    if not isinstance(value, str) or not value or Path(value).is_absolute() or Path(value).exists():
        return value
    alt = folder / value
    return str(alt) if alt.exists() else value


def _read_frame(path: Path, what: str, keys: list[str]) -> pd.DataFrame:
    """A parquet (or CSV) table with the ``keys`` and probability columns and no NaN probability."""
    if not path.is_file():
        raise CellTableError(f"{path}: {what} not found")
    try:
        df = pd.read_csv(path, dtype={"image_id": str}) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as exc:
        raise CellTableError(f"{path}: cannot read ({exc})") from exc
    missing = [c for c in (*keys, *PROB_COLUMNS) if c not in df.columns]
    if missing:
        raise CellTableError(f"{path}: not a {what}, missing column(s) {', '.join(missing[:5])}")
    if df[PROB_COLUMNS].isna().any().any():
        raise CellTableError(f"{path}: NaN probabilities")
    df["image_id"] = df["image_id"].astype(str)
    return df


def read_image_table(path: Path | str) -> pd.DataFrame:
    """Read an image-level table (``image_id, p_0..p_18``, parquet or CSV), one row per image.

    Probabilities must lie in ``[0, 1]`` and ids must not repeat. Raises :class:`CellTableError`.
    """
    path = Path(path)
    df = _read_frame(path, "image-level table", ["image_id"])
    dup = df["image_id"].duplicated()
    if dup.any():
        raise CellTableError(f"{path}: {int(dup.sum())} repeated image ids, e.g. {df.loc[dup, 'image_id'].iloc[0]}")
    check_probabilities(df, path)
    return df.reset_index(drop=True)


def read_cell_table(path: Path | str) -> pd.DataFrame:
    """Read a per-cell table (parquet, or CSV with the same columns) and check its key columns.

    A relative ``mask_path`` that does not exist from the working directory but does from the
    table's folder is rewritten to that path. Duplicate cells are averaged
    (:func:`average_duplicate_cells`). Raises :class:`CellTableError`.
    """
    path = Path(path)
    df = _read_frame(path, "per-cell table", list(CELL_KEY_COLUMNS))
    if "mask_path" in df.columns:
        df["mask_path"] = df["mask_path"].map(lambda p: _mask_path_from(path.parent, p))
    df["cell_id"] = df["cell_id"].astype(np.int64)
    return average_duplicate_cells(df)


def check_probabilities(cells: pd.DataFrame, name: Path | str) -> None:
    """Refuse a per-cell (or image-level) table whose probabilities are not all in ``[0, 1]`` (NaN included).

    Raises :class:`CellTableError` naming the table, the count and the first bad cell (or image).
    """
    probs = cells[PROB_COLUMNS].to_numpy(dtype=np.float64)
    bad = ~((probs >= 0.0) & (probs <= 1.0))
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        first = cells.iloc[row]
        cell = f" cell {first['cell_id']}" if "cell_id" in cells.columns else ""
        raise CellTableError(f"{name}: {int(bad.sum())} probabilities outside [0, 1], e.g. image "
                             f"{first['image_id']}{cell} {PROB_COLUMNS[col]} = {probs[row, col]:g}")
