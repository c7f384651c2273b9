"""Per-cell mean average precision at mask IoU 0.6, as the HPA single-cell competition scored.

Open Images style, per class ``c``:

* every prediction is a ``(cell mask, class, confidence)`` triplet; the ground truth of ``c`` is
  every true cell whose label set holds ``c``;
* predictions of ``c`` are taken by confidence, highest first; each is matched to the
  highest-IoU ground-truth cell of class ``c`` in its image that is not matched yet; IoU >=
  ``iou_threshold`` (0.6) makes it a true positive (and that cell matched), anything else a false
  positive (a second prediction on an already found cell is therefore a false positive);
* AP is the area under the precision envelope (precision made monotone non-increasing from the
  right) over recall, recall = TP / number of ground-truth cells of ``c``;
* mAP is the mean AP over the classes with at least one ground-truth cell. Classes without
  ground truth are left out of the mean and their predictions are ignored. A class with ground
  truth but no prediction scores AP 0.

Tied confidences (``ties``): ``"group"`` (default) reads precision and recall only after the
last prediction of each group of equal confidence, so AP does not depend on the order of tied
predictions (the way ``sklearn.metrics.average_precision_score`` treats thresholds; it matters
for the naive baseline where all cells of an image share one score). ``"stable"`` walks the
predictions one by one in the given order (a stable sort), as a plain Open Images
implementation does. Matching within a tie is in input order either way; with non-overlapping
ground-truth cells this cannot change the number of true positives.

IoUs come from :func:`wsss.masks.pairwise_iou`: one ``bincount`` over the pixels of two label
maps, or pycocotools RLE arithmetic when either side is a set of submission masks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.data.classes import CLASS_NAMES, NUM_CLASSES, LabelError, parse_label
from wsss.data.io import ImageReadError
from wsss.data.io import read_label_png as _read_label_png
from wsss.schema import PROB_COLUMNS
from wsss.masks import CellMasks, MaskError, cell_masks_from_label_map, cell_masks_from_strings, pairwise_iou, rows_cell_masks
from wsss.submission import Submission
from wsss.tables import average_duplicate_cells

logger = logging.getLogger(__name__)

IOU_THRESHOLD: float = 0.6
TIE_MODES: tuple[str, ...] = ("group", "stable")


class MetricError(ValueError):
    """Inputs the per-cell metric cannot score (missing truth, mismatched sizes, bad tables)."""


# --------------------------------------------------------------------------- pure scoring


@dataclass
class ImageCells:
    """What the metric needs about one image.

    ``iou``: ``n_pred_cells x n_gt_cells`` mask IoU; ``gt_labels``: ``n_gt_cells x C`` bool;
    flat predictions ``pred_cell`` (row of ``iou``), ``pred_class`` and ``pred_score``.
    """

    image_id: str
    iou: np.ndarray
    gt_labels: np.ndarray
    pred_cell: np.ndarray
    pred_class: np.ndarray
    pred_score: np.ndarray


def flatten_scores(scores: np.ndarray, min_confidence: float | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cell, class, score)`` arrays of every finite entry of an ``n x C`` score matrix (NaN = no prediction).

    ``min_confidence`` drops scores below it (as a submission written with that floor would).
    """
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(scores)
    if min_confidence is not None:
        keep &= scores >= min_confidence
    cell, cls = np.nonzero(keep)
    return cell, cls, scores[cell, cls]


def image_cells_from_scores(image_id: str, iou: np.ndarray, gt_labels: np.ndarray, scores: np.ndarray,
                            min_confidence: float | None = None) -> ImageCells:
    """:class:`ImageCells` from a per-cell score matrix (``n_pred_cells x C``, NaN = not predicted)."""
    cell, cls, score = flatten_scores(scores, min_confidence)
    return ImageCells(image_id, np.asarray(iou, dtype=np.float64), np.asarray(gt_labels, dtype=bool), cell, cls, score)


def match_image_class(iou: np.ndarray, gt_of_class: np.ndarray, pred_cell: np.ndarray, pred_score: np.ndarray,
                      iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """True-positive flags of one image's predictions of one class (greedy, by descending confidence).

    ``gt_of_class``: indices (columns of ``iou``) of the ground-truth cells of the class. Each
    prediction, taken by score (stable for ties), claims the highest-IoU unmatched of them if
    that IoU >= ``iou_threshold``. Returns flags in the input order of the predictions.
    """
    tp = np.zeros(pred_cell.size, dtype=bool)
    if pred_cell.size == 0 or gt_of_class.size == 0:
        return tp
    sub = iou[np.ix_(pred_cell, gt_of_class)]
    candidates = np.flatnonzero((sub >= iou_threshold).any(axis=1))
    if candidates.size == 0:
        return tp
    order = candidates[np.argsort(-pred_score[candidates], kind="stable")]
    matched = np.zeros(gt_of_class.size, dtype=bool)
    for p in order.tolist():
        row = np.where(matched, -1.0, sub[p])
        best = int(np.argmax(row))
        if row[best] >= iou_threshold:
            matched[best] = True
            tp[p] = True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int, ties: str = "group") -> float:
    """Area under the precision envelope over recall for predictions ``scores`` with TP flags ``tp``.

    ``nan`` when ``n_gt == 0``; 0 when there is no prediction. See the module docstring for ``ties``.
    """
    if ties not in TIE_MODES:
        raise MetricError(f"ties must be one of {TIE_MODES}, got {ties!r}")
    if n_gt <= 0:
        return float("nan")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    hits = np.asarray(tp, dtype=bool)[order]
    tp_cum = np.cumsum(hits)
    fp_cum = np.cumsum(~hits)
    if ties == "group":
        last = np.ones(s.size, dtype=bool)
        last[:-1] = s[1:] != s[:-1]
        tp_cum, fp_cum = tp_cum[last], fp_cum[last]
    precision = tp_cum / (tp_cum + fp_cum)
    recall = tp_cum / float(n_gt)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate(([0.0], recall)))
    return float(np.sum(steps * envelope))


@dataclass
class CellMapResult:
    """Per-class AP (``nan`` where a class has no ground truth), counts and the mAP over classes with GT."""

    ap: np.ndarray
    n_gt: np.ndarray
    n_pred: np.ndarray
    n_tp: np.ndarray
    iou_threshold: float = IOU_THRESHOLD

    @property
    def map(self) -> float:
        """Mean AP over the classes with ground truth (``nan`` if none has)."""
        valid = self.n_gt > 0
        return float(np.mean(self.ap[valid])) if valid.any() else float("nan")

    def table(self) -> pd.DataFrame:
        """Per-class table: ``class, name, n_gt, n_pred, n_tp, ap``."""
        names = list(CLASS_NAMES) if len(CLASS_NAMES) == self.ap.size else [str(i) for i in range(self.ap.size)]
        return pd.DataFrame({"class": np.arange(self.ap.size), "name": names, "n_gt": self.n_gt,
                             "n_pred": self.n_pred, "n_tp": self.n_tp, "ap": self.ap})


def cell_map(images: Iterable[ImageCells], iou_threshold: float = IOU_THRESHOLD,
             num_classes: int = NUM_CLASSES, ties: str = "group") -> CellMapResult:
    """Per-cell mAP over ``images`` (see the module docstring for the exact rules)."""
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    flags: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    n_gt = np.zeros(num_classes, dtype=np.int64)
    for image in images:
        gt = np.asarray(image.gt_labels, dtype=bool).reshape(-1, num_classes)
        iou = np.asarray(image.iou, dtype=np.float64).reshape(-1, gt.shape[0])
        if image.pred_cell.size and (image.pred_cell.max() >= iou.shape[0] or image.pred_cell.min() < 0):
            raise MetricError(f"image {image.image_id}: prediction cell index outside the IoU matrix")
        n_gt += gt.sum(axis=0)
        for c in np.unique(image.pred_class).tolist():
            if not 0 <= c < num_classes:
                raise MetricError(f"image {image.image_id}: class {c} out of range 0..{num_classes - 1}")
            sel = image.pred_class == c
            cells, sc = image.pred_cell[sel], image.pred_score[sel]
            scores[c].append(sc)
            flags[c].append(match_image_class(iou, np.flatnonzero(gt[:, c]), cells, sc, iou_threshold))
    ap = np.full(num_classes, np.nan)
    n_pred = np.zeros(num_classes, dtype=np.int64)
    n_tp = np.zeros(num_classes, dtype=np.int64)
    for c in range(num_classes):
        s = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
        t = np.concatenate(flags[c]) if flags[c] else np.zeros(0, dtype=bool)
        n_pred[c], n_tp[c] = s.size, int(t.sum())
        if n_gt[c] > 0:
            ap[c] = average_precision(s, t, int(n_gt[c]), ties=ties)
    return CellMapResult(ap=ap, n_gt=n_gt, n_pred=n_pred, n_tp=n_tp, iou_threshold=iou_threshold)


# --------------------------------------------------------------------------- ground truth


@dataclass
class TruthImage:
    """Ground truth of one image: cell masks and an ``n_cells x C`` bool label matrix (rows follow ``masks.ids``)."""

    masks: CellMasks
    labels: np.ndarray


def _label_rows(labels: Sequence[str], where: str) -> np.ndarray:
    """Bool multi-hot rows of label strings; :class:`MetricError` naming ``where`` on a bad label."""
    out = np.zeros((len(labels), NUM_CLASSES), dtype=bool)
    for i, text in enumerate(labels):
        try:
            out[i, parse_label(str(text))] = True
        except LabelError as exc:
            raise MetricError(f"{where}: {exc}") from exc
    return out


def read_label_png(path: Path) -> np.ndarray:
    """A label PNG (uint8/uint16, one channel) as an array; :class:`MetricError` when unreadable."""
    try:
        return _read_label_png(path)
    except ImageReadError as exc:
        raise MetricError(f"{exc} (ground-truth mask)") from None


def truth_from_label_dir(root: Path | str, image_ids: Iterable[str] | None = None) -> dict[str, TruthImage]:
    """Ground truth in the synthetic format: ``root/masks/{ID}_cells.png`` + ``root/cell_labels.csv``.

    ``cell_labels.csv`` has columns ``ID,cell_id,Label``.

    ``image_ids=None`` reads every image of ``cell_labels.csv``. Cells of the label map that are not
    in the CSV are left out (they are unlabeled, not negative); rows naming a cell absent from the
    map raise :class:`MetricError`.
    """
    root = Path(root)
    table_path = root / "cell_labels.csv"
    if not table_path.is_file():
        raise MetricError(f"{table_path}: per-cell label table not found")
    table = pd.read_csv(table_path, dtype={"ID": str, "Label": str}, keep_default_na=False)
    missing = [c for c in ("ID", "cell_id", "Label") if c not in table.columns]
    if missing:
        raise MetricError(f"{table_path}: missing column(s) {', '.join(missing)}")
    groups = dict(tuple(table.groupby("ID", sort=False)))
    ids = list(groups) if image_ids is None else list(image_ids)
    out: dict[str, TruthImage] = {}
    for image_id in ids:
        labels = read_label_png(root / "masks" / f"{image_id}_cells.png")
        rows = groups.get(image_id, table.iloc[:0])
        cell_ids = rows["cell_id"].astype(np.int64).to_numpy()
        present = np.bincount(labels.ravel().astype(np.int64), minlength=int(cell_ids.max(initial=0)) + 1)
        absent = [int(c) for c in cell_ids if c <= 0 or present[c] == 0]
        if absent:
            raise MetricError(f"{table_path}: {image_id}: cell id(s) {absent[:5]} not in {image_id}_cells.png")
        masks = cell_masks_from_label_map(labels, labels.shape[0], labels.shape[1], ids=cell_ids)
        out[image_id] = TruthImage(masks, _label_rows(rows["Label"].tolist(), f"{table_path} ({image_id})"))
    return out


def truth_from_submission(sub: Submission) -> dict[str, TruthImage]:
    """Ground truth from a submission-format CSV: each distinct mask of an image is a cell whose
    labels are the classes listed with it (confidences ignored)."""
    out: dict[str, TruthImage] = {}
    groups = dict(tuple(sub.predictions.groupby("ID", sort=False)))
    for image_id, width, height in sub.images.itertuples(index=False):
        rows = groups.get(image_id)
        if rows is None:
            masks = CellMasks(ids=np.zeros(0, dtype=np.int64), height=int(height), width=int(width), rles=[])
            out[image_id] = TruthImage(masks, np.zeros((0, NUM_CLASSES), dtype=bool))
            continue
        order = list(pd.unique(rows["mask"]))
        index = {m: i for i, m in enumerate(order)}
        labels = np.zeros((len(order), NUM_CLASSES), dtype=bool)
        labels[[index[m] for m in rows["mask"]], rows["class"].to_numpy()] = True
        try:
            masks = cell_masks_from_strings(order, int(height), int(width))
        except MaskError as exc:
            raise MetricError(f"ground truth {image_id}: {exc}") from exc
        out[image_id] = TruthImage(masks, labels)
    return out


# --------------------------------------------------------------------------- predictions


@dataclass
class PredImage:
    """Predictions of one image: cell masks plus flat ``(cell row, class, score)`` predictions."""

    masks: CellMasks
    pred_cell: np.ndarray
    pred_class: np.ndarray
    pred_score: np.ndarray


def preds_from_cell_table(cells: pd.DataFrame, min_confidence: float | None = None) -> dict[str, PredImage]:
    """Predictions from a per-cell table (masks from ``mask_path`` label maps or a ``mask`` string column).

    Duplicate ``(image_id, cell_id)`` rows (e.g. several folds) are averaged, with a warning.
    """
    missing = [c for c in ("image_id", "cell_id", *PROB_COLUMNS) if c not in cells.columns]
    if missing:
        raise MetricError(f"per-cell table lacks column(s) {', '.join(missing)}")
    cells = average_duplicate_cells(cells)
    out: dict[str, PredImage] = {}
    for image_id, group in cells.groupby("image_id", sort=False):
        masks = _table_masks(image_id, group)
        cell, cls, score = flatten_scores(group[PROB_COLUMNS].to_numpy(dtype=np.float64), min_confidence)
        out[image_id] = PredImage(masks, cell, cls, score)
    return out


def _table_masks(image_id: str, group: pd.DataFrame) -> CellMasks:
    """Cell masks of one image's rows of a per-cell table (:func:`wsss.masks.rows_cell_masks`)."""
    try:
        return rows_cell_masks(group)
    except MaskError as exc:
        raise MetricError(f"image {image_id}: {exc}") from exc


def preds_from_submission(sub: Submission, min_confidence: float | None = None) -> dict[str, PredImage]:
    """Predictions from a submission: each triplet is one prediction, distinct masks are cells."""
    out: dict[str, PredImage] = {}
    groups = dict(tuple(sub.predictions.groupby("ID", sort=False)))
    for image_id, width, height in sub.images.itertuples(index=False):
        rows = groups.get(image_id)
        if rows is None:
            continue
        if min_confidence is not None:
            rows = rows.loc[rows["confidence"] >= min_confidence]
        order = list(pd.unique(rows["mask"]))
        index = {m: i for i, m in enumerate(order)}
        try:
            masks = cell_masks_from_strings(order, int(height), int(width))
        except MaskError as exc:
            raise MetricError(f"prediction {image_id}: {exc}") from exc
        out[image_id] = PredImage(masks, np.asarray([index[m] for m in rows["mask"]], dtype=np.int64),
                                  rows["class"].to_numpy(dtype=np.int64), rows["confidence"].to_numpy(dtype=np.float64))
    return out


def evaluate_cells(preds: dict[str, PredImage], truth: dict[str, TruthImage], iou_threshold: float = IOU_THRESHOLD,
                   ties: str = "group") -> CellMapResult:
    """Score predictions against ground truth over the images of ``truth``.

    Truth images without predictions count their cells as misses; predicted images absent from
    the truth are ignored (logged).
    """
    extra = set(preds) - set(truth)
    if extra:
        logger.warning("%d predicted image(s) have no ground truth and are ignored", len(extra))
    empty_pred = np.zeros(0, dtype=np.int64)

    def images() -> Iterable[ImageCells]:
        for image_id, gt in truth.items():
            pred = preds.get(image_id)
            if pred is None:
                yield ImageCells(image_id, np.zeros((0, gt.labels.shape[0])), gt.labels, empty_pred, empty_pred,
                                 np.zeros(0))
                continue
            if (pred.masks.height, pred.masks.width) != (gt.masks.height, gt.masks.width):
                raise MetricError(f"image {image_id}: prediction is {pred.masks.height}x{pred.masks.width}, "
                                  f"ground truth {gt.masks.height}x{gt.masks.width}")
            iou = pairwise_iou(pred.masks, gt.masks)
            yield ImageCells(image_id, iou, gt.labels, pred.pred_cell, pred.pred_class, pred.pred_score)

    return cell_map(images(), iou_threshold=iou_threshold, ties=ties)


__all__: Sequence[str] = [
    "IOU_THRESHOLD", "TIE_MODES", "MetricError", "ImageCells", "flatten_scores", "image_cells_from_scores",
    "match_image_class", "average_precision", "CellMapResult", "cell_map", "TruthImage", "read_label_png",
    "truth_from_label_dir", "truth_from_submission", "PredImage", "preds_from_cell_table",
    "preds_from_submission", "evaluate_cells",
]
