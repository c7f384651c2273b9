"""Cell-level ensembling of per-cell tables and submissions.

Sources are per-cell tables (any model, stage, fold or seed, each with its own segmentation)
and Kaggle submission CSVs (a team-mate's submission: each distinct mask of an image is one cell,
a class missing from its triplets scores ``missing_score``, default 0). Every source has a weight.

Alignment. One source is the *primary*: the output has exactly its cells and masks. Every other
source is aligned to it image by image:

* ``match="id"``: join on ``(image_id, cell_id)`` (sources that share a segmentation);
* ``match="iou"``: cell-to-cell by mask IoU at the original image size, pairs taken greedily by
  descending IoU, each cell used at most once, kept when IoU >= ``iou_threshold`` (0.6);
* ``match="auto"`` (default): ``id`` for an image when both sources are tables whose rows for it
  point at the same label-map file, ``iou`` otherwise (always ``iou`` for submissions).

Unmatched cells. A primary cell that a source does not cover (no matching cell, or the image
absent from that source) is handled by ``unmatched``:

* ``"renorm"`` (default): combined over the sources that do cover it, their weights renormalised;
* ``"fill"``: the missing source counts with probability ``fill_value`` for every class;
* ``"drop"``: the cell is left out of the output unless every source covers it.

Cells of non-primary sources that match no primary cell are discarded (their masks would
overlap the primary segmentation); the count is logged. Images absent from the primary are not
in the output.

A source that leaves primary cells unmatched is warned about (how many of how many); when the
unmatched share passes ``max_unmatched`` (default :data:`MAX_UNMATCHED`, 90% of the primary's
cells) the ensemble is refused: tables that match nowhere would silently give the primary back.

Methods (per cell and class, weights ``w_s``):

* ``"mean"``: ``sum_s w_s p_s / sum_s w_s``;
* ``"rank"``: each source's probabilities are first replaced, per class, by their rank among all
  that source's cells (average rank for ties) divided by its number of cells, then averaged as
  in ``"mean"``; the output is a score in (0, 1], comparable within a class, not a probability;
* ``"geom"``: weighted geometric mean ``exp(sum_s w_s log max(p_s, eps) / sum_s w_s)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from wsss.data.classes import NUM_CLASSES
from wsss.schema import PROB_COLUMNS
from wsss.masks import CellMasks, MaskError, greedy_match, pairwise_iou, rows_cell_masks
from wsss.submission import read_submission
from wsss.tables import check_probabilities, read_cell_table

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("mean", "rank", "geom")
MATCH_MODES: tuple[str, ...] = ("auto", "id", "iou")
UNMATCHED_POLICIES: tuple[str, ...] = ("renorm", "fill", "drop")
IOU_THRESHOLD: float = 0.6
GEOM_EPS: float = 1e-6
#: Largest share of the primary's cells a source may leave unmatched before the ensemble is refused.
MAX_UNMATCHED: float = 0.9


class EnsembleError(ValueError):
    """Sources or options the ensemble cannot combine."""


@dataclass
class Source:
    """One ensemble input: per-cell rows (unique ``image_id, cell_id``, ``p_0..p_18``, ``orig_width``,
    ``orig_height`` and ``mask_path`` or ``mask`` strings), a weight and a name."""

    name: str
    cells: pd.DataFrame
    weight: float = 1.0
    kind: str = "table"


def read_source(path: Path | str, weight: float = 1.0, name: str | None = None,
                missing_score: float = 0.0) -> Source:
    """Read a per-cell table (``.parquet``/``.csv``) or a submission CSV (with ``PredictionString``) as a Source."""
    path = Path(path)
    if not path.is_file():
        raise EnsembleError(f"{path}: input not found")
    if not np.isfinite(weight) or weight < 0:
        raise EnsembleError(f"{path}: weight must be a finite number >= 0, got {weight}")
    name = name or path.stem
    try:
        if path.suffix.lower() == ".csv" and "PredictionString" in pd.read_csv(path, nrows=0).columns:
            cells = read_submission(path).cells(missing_score=missing_score)
            return Source(name=name, cells=cells, weight=float(weight), kind="submission")
        cells = read_cell_table(path)
        check_probabilities(cells, path)
    except MaskError as exc:
        raise EnsembleError(str(exc)) from exc
    for col in ("orig_width", "orig_height"):
        if col not in cells.columns:
            raise EnsembleError(f"{path}: per-cell table lacks {col}")
    if "mask_path" not in cells.columns and "mask" not in cells.columns:
        raise EnsembleError(f"{path}: per-cell table has neither mask_path nor mask")
    return Source(name=name, cells=cells.reset_index(drop=True), weight=float(weight), kind="table")


# --------------------------------------------------------------------------- pure combination


def rank_scores(probs: np.ndarray) -> np.ndarray:
    """Per column, average rank of each value divided by the number of rows (values in (0, 1])."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[0] == 0:
        return probs.copy()
    return rankdata(probs, method="average", axis=0) / probs.shape[0]


def combine(probs: np.ndarray, weights: Sequence[float], present: np.ndarray | None = None,
            method: str = "mean", eps: float = GEOM_EPS) -> np.ndarray:
    """Combine ``S x N x C`` scores of ``S`` sources into ``N x C``.

    ``present`` (``S x N`` bool) marks which source covers which cell; absent entries are left out
    and the weights renormalised per cell. ``method``: ``"mean"`` (weighted arithmetic mean) or
    ``"geom"`` (weighted geometric mean of ``max(p, eps)``); ``"rank"`` means the caller already
    rank-transformed each source (:func:`rank_scores`), so it averages like ``"mean"``.
    Cells no source covers get NaN.
    """
    if method not in METHODS:
        raise EnsembleError(f"method must be one of {METHODS}, got {method!r}")
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3:
        raise EnsembleError(f"scores must be S x N x C, got shape {probs.shape}")
    w = np.asarray(weights, dtype=np.float64).reshape(-1, 1)
    if w.shape[0] != probs.shape[0]:
        raise EnsembleError(f"{probs.shape[0]} sources but {w.shape[0]} weights")
    mask = np.ones(probs.shape[:2], dtype=bool) if present is None else np.asarray(present, dtype=bool)
    wm = w * mask
    total = wm.sum(axis=0)
    values = np.log(np.clip(probs, eps, None)) if method == "geom" else probs
    values = np.where(mask[:, :, None], values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (wm[:, :, None] * values).sum(axis=0) / total[:, None]
    if method == "geom":
        out = np.exp(out)
    out[total <= 0] = np.nan
    return out


# --------------------------------------------------------------------------- alignment


def _image_masks(source: Source, rows: pd.DataFrame) -> CellMasks:
    """Cell masks (original size) of one image's rows of a source, in row order (:func:`wsss.masks.rows_cell_masks`)."""
    try:
        return rows_cell_masks(rows)
    except MaskError as exc:
        raise EnsembleError(f"{source.name}: {exc}") from None


def _same_segmentation(a: Source, a_rows: pd.DataFrame, b: Source, b_rows: pd.DataFrame) -> bool:
    """True when both sources' rows of an image point at one and the same label-map file."""
    if a.kind != "table" or b.kind != "table" or "mask_path" not in a_rows or "mask_path" not in b_rows:
        return False
    pa, pb = a_rows["mask_path"].dropna().unique(), b_rows["mask_path"].dropna().unique()
    if len(pa) != 1 or len(pb) != 1:
        return False
    return os.path.realpath(str(pa[0])) == os.path.realpath(str(pb[0]))


def align(primary: Source, other: Source, match: str = "auto", iou_threshold: float = IOU_THRESHOLD,
          progress: bool = False) -> np.ndarray:
    """For every row of ``primary.cells``, the row of ``other.cells`` it corresponds to, or -1."""
    if match not in MATCH_MODES:
        raise EnsembleError(f"match must be one of {MATCH_MODES}, got {match!r}")
    from tqdm import tqdm  # noqa: PLC0415

    result = np.full(len(primary.cells), -1, dtype=np.int64)
    other_groups = other.cells.groupby("image_id", sort=False).indices
    matched_other = 0
    groups = primary.cells.groupby("image_id", sort=False).indices
    for image_id, p_idx in tqdm(groups.items(), total=len(groups), desc=f"align {other.name}", disable=not progress):
        o_idx = other_groups.get(image_id)
        if o_idx is None:
            continue
        p_rows, o_rows = primary.cells.iloc[p_idx], other.cells.iloc[o_idx]
        use_id = match == "id" or (match == "auto" and _same_segmentation(primary, p_rows, other, o_rows))
        if use_id:
            if other.kind != "table" and match == "id":
                logger.warning("%s: joining a submission on cell_id numbers (mask order), not masks", other.name)
            lookup = dict(zip(o_rows["cell_id"].astype(np.int64).tolist(), o_idx.tolist()))
            found = [lookup.get(int(c), -1) for c in p_rows["cell_id"].tolist()]
            result[p_idx] = found
        else:
            try:
                iou = pairwise_iou(_image_masks(primary, p_rows), _image_masks(other, o_rows))
            except MaskError as exc:
                raise EnsembleError(f"image {image_id}: {exc}") from exc
            pairs = greedy_match(iou, iou_threshold)
            result[p_idx] = np.where(pairs >= 0, o_idx[np.maximum(pairs, 0)], -1)
        matched_other += int((result[p_idx] >= 0).sum())
    unused = len(other.cells) - matched_other
    n_matched = int((result >= 0).sum())
    level = logging.WARNING if n_matched < len(result) else logging.INFO
    logger.log(level, "%s: %d of %d primary cells matched; %d of its %d cells unmatched and discarded",
               other.name, n_matched, len(result), unused, len(other.cells))
    return result


# --------------------------------------------------------------------------- ensemble


def _check_unmatched(name: str, n_unmatched: int, n: int, max_unmatched: float) -> None:
    """Refuse a source that leaves more than ``max_unmatched`` of the ``n`` primary cells unmatched."""
    if n and n_unmatched / n > max_unmatched:
        raise EnsembleError(f"{name}: {n_unmatched} of {n} primary cells match no cell of it "
                            f"({n_unmatched / n:.0%} > max unmatched {max_unmatched:.0%}); check that the "
                            "inputs cover the same images and masks, or raise --max-unmatched")


def ensemble(sources: Sequence[Source], primary: int = 0, method: str = "mean", match: str = "auto",
             iou_threshold: float = IOU_THRESHOLD, unmatched: str = "renorm", fill_value: float = 0.0,
             progress: bool = False, max_unmatched: float = MAX_UNMATCHED) -> pd.DataFrame:
    """Combine sources cell by cell onto the primary's cells (see the module docstring).

    A source leaving more than ``max_unmatched`` (a share in ``[0, 1]``) of the primary's cells
    unmatched raises :class:`EnsembleError` naming it.

    Returns the primary's rows (all its non-probability columns, ``source`` set to
    ``"ensemble"``) with combined ``p_0..p_18`` and ``n_sources`` (how many sources covered the cell).
    """
    if not sources:
        raise EnsembleError("no sources to ensemble")
    if method not in METHODS:
        raise EnsembleError(f"method must be one of {METHODS}, got {method!r}")
    if unmatched not in UNMATCHED_POLICIES:
        raise EnsembleError(f"unmatched must be one of {UNMATCHED_POLICIES}, got {unmatched!r}")
    if not 0 <= primary < len(sources):
        raise EnsembleError(f"primary index {primary} out of range for {len(sources)} sources")
    if sum(s.weight for s in sources) <= 0:
        raise EnsembleError("the weights sum to 0")
    if not 0.0 <= max_unmatched <= 1.0:
        raise EnsembleError(f"max_unmatched must be a share in [0, 1], got {max_unmatched}")
    base = sources[primary]
    n = len(base.cells)
    scores = np.zeros((len(sources), n, NUM_CLASSES))
    present = np.zeros((len(sources), n), dtype=bool)
    for s, source in enumerate(sources):
        probs = source.cells[PROB_COLUMNS].to_numpy(dtype=np.float64)
        if method == "rank":
            probs = rank_scores(probs)
        rows = np.arange(n) if s == primary else align(base, source, match, iou_threshold, progress)
        ok = rows >= 0
        _check_unmatched(source.name, int((~ok).sum()), n, max_unmatched)
        scores[s, ok] = probs[rows[ok]]
        present[s] = ok
    if unmatched == "fill":
        scores[~present] = fill_value
        coverage = present.sum(axis=0)
        present[:] = True
    else:
        coverage = present.sum(axis=0)
    weights = np.array([s.weight for s in sources], dtype=np.float64)
    scored = (present & (weights > 0)[:, None]).any(axis=0)
    if unmatched != "drop" and not scored.all():
        first = base.cells.iloc[int(np.flatnonzero(~scored)[0])]
        raise EnsembleError(f"{int((~scored).sum())} cell(s) are covered only by sources of weight 0 "
                            f"(e.g. image {first['image_id']} cell {first['cell_id']}): give the primary a "
                            f"positive weight or use unmatched=drop")
    combined = combine(scores, weights, present, method=method)
    out = base.cells.drop(columns=PROB_COLUMNS).copy()
    out[PROB_COLUMNS] = combined
    out["source"] = "ensemble"
    out["n_sources"] = coverage
    if unmatched == "drop":
        keep = (coverage == len(sources)) & scored
        logger.info("unmatched=drop: %d of %d cells kept", int(keep.sum()), n)
        out = out.loc[keep]
    return out.reset_index(drop=True)


def image_probabilities(cells: pd.DataFrame, images: pd.DataFrame) -> np.ndarray:
    """Each cell's image-level probabilities ``N x 19`` from ``images`` (``image_id, p_0..p_18``, duplicates
    averaged); cells of images missing from ``images`` raise :class:`EnsembleError`."""
    table = images.groupby(images["image_id"].astype(str), sort=False)[PROB_COLUMNS].mean()
    ids = cells["image_id"].astype(str)
    missing = sorted(set(ids) - set(table.index))
    if missing:
        raise EnsembleError(f"{len(missing)} image(s) of the cell table have no image-level row, e.g. {missing[0]}")
    return table.loc[ids].to_numpy(dtype=np.float64)


def naive_cells_from_images(cells: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """The naive baseline: every cell gets its image's image-level probabilities.

    ``cells``: any per-cell table (its probabilities are replaced); ``images``: ``image_id, p_0..p_18``
    (duplicates averaged). Cells of images missing from ``images`` raise :class:`EnsembleError`.
    """
    out = cells.drop(columns=PROB_COLUMNS).copy()
    out[PROB_COLUMNS] = image_probabilities(cells, images)
    if "source" in out.columns:
        out["source"] = "naive"
    return out.reset_index(drop=True)


__all__: Sequence[str] = [
    "METHODS", "MATCH_MODES", "UNMATCHED_POLICIES", "IOU_THRESHOLD", "EnsembleError", "Source", "read_source",
    "rank_scores", "combine", "greedy_match", "align", "ensemble", "image_probabilities", "naive_cells_from_images",
]


FUSE_AGREED: tuple[str, ...] = ("primary", "other", "union", "intersection")


def fuse_segmentations(primary: np.ndarray, other: np.ndarray, iou_threshold: float = IOU_THRESHOLD,
                       agreed: str = "primary") -> tuple[np.ndarray, int]:
    """Segmentation-level fusion of two cell label maps of the same shape.

    Cells both segmentations agree on (matched one-to-one by IoU >= ``iou_threshold``) are kept,
    their mask taken from ``agreed`` (``primary``, ``other``, their ``union`` or ``intersection``);
    every other cell comes from ``primary``, painted only where no agreed cell lies. Returns the
    fused map (``uint16``, ids ``1..n``: agreed cells first) and the number of agreed cells.
    """
    from wsss.masks import label_iou, relabel_sequential

    if agreed not in FUSE_AGREED:
        raise EnsembleError(f"agreed must be one of {FUSE_AGREED}, got {agreed!r}")
    primary = np.asarray(primary)
    other = np.asarray(other)
    if primary.shape != other.shape:
        raise EnsembleError(f"label maps differ in shape: {primary.shape} vs {other.shape}")
    ious, p_ids, o_ids = label_iou(primary, other)
    fused = np.zeros(primary.shape, dtype=np.int64)
    n_agreed = 0
    matched_p: set[int] = set()
    if len(p_ids) and len(o_ids):
        match = greedy_match(ious, iou_threshold)
        for pi in np.flatnonzero(match >= 0):
            pid, oid = int(p_ids[pi]), int(o_ids[match[pi]])
            in_p, in_o = primary == pid, other == oid
            mask = {"primary": in_p, "other": in_o, "union": in_p | in_o, "intersection": in_p & in_o}[agreed]
            n_agreed += 1
            fused[mask & (fused == 0)] = n_agreed
            matched_p.add(pid)
    rest = (primary > 0) & ~np.isin(primary, list(matched_p)) & (fused == 0)
    fused[rest] = primary[rest].astype(np.int64) + n_agreed
    return relabel_sequential(fused).astype(np.uint16), n_agreed


def fuse_label_maps(primary_cells: np.ndarray, primary_nuclei: np.ndarray, other_cells: np.ndarray,
                    iou_threshold: float = IOU_THRESHOLD, agreed: str = "primary") -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`fuse_segmentations` of two cell maps, with nuclei that keep the label-map contract.

    The nuclei are the primary's nuclear pixels, each taking the id of the fused cell it lies in;
    fused cells left without any nuclear pixel are dropped (every cell of a label-map file holds its
    nucleus) and the ids renumbered ``1..n``. Returns ``(cells, nuclei, n_agreed)`` as ``uint16``;
    ``n_agreed`` counts the agreed cells that were kept.
    """
    from wsss.masks import label_areas, relabel_sequential

    fused, n_agreed = fuse_segmentations(primary_cells, other_cells, iou_threshold, agreed)
    fused = fused.astype(np.int64)
    nuclei = np.where(np.asarray(primary_nuclei) > 0, fused, 0)
    with_nucleus = label_areas(nuclei) > 0
    keep = np.zeros(int(fused.max(initial=0)) + 1, dtype=bool)
    keep[: len(with_nucleus)] = with_nucleus[: len(keep)]
    keep[0] = False
    n_agreed = int(keep[1: n_agreed + 1].sum())
    cells = relabel_sequential(np.where(keep[fused], fused, 0))
    nuclei = np.where(nuclei > 0, cells, 0)
    return cells.astype(np.uint16), nuclei.astype(np.uint16), n_agreed
