"""Per-cell mean average precision at IoU 0.6, as the HPA single-cell competition scored.

Open Images style, per class ``c``:

* every prediction is a ``(cell mask, class, confidence)`` triplet; the ground truth of ``c`` is
  every true cell whose label set holds ``c`` (a cell with two labels is two ground-truth objects);
* predictions of ``c`` in an image are taken by confidence, highest first, and matched to the
  ground-truth cells of ``c`` of that image; IoU >= ``iou_threshold`` (0.6) makes a true positive
  (and that cell found), anything else a false positive (so a second prediction on a found cell
  is a false positive);
* AP is the area under the precision envelope (precision made monotone non-increasing from the
  right) over recall, recall = TP / number of ground-truth cells of ``c``, precision and recall
  read from cumulative TP/FP counts along the predictions sorted by confidence;
* mAP is the mean AP over the classes with at least one ground-truth cell. Classes without
  ground truth are left out of the mean. A class with ground truth but no (kept) prediction
  scores AP 0.

``protocol`` (:data:`PROTOCOLS`) says which predictions count:

* ``"official"`` (default), what the HPA competition's scorer (TensorFlow's Open Images
  challenge evaluator, matching IoU 0.6) does: an image's *evaluatable classes* are the union of
  its ground-truth cells' labels, and a prediction whose class is not among them is dropped
  before matching (neither TP nor FP). Images without ground truth therefore drop every
  prediction. A prediction of ``c`` on a cell that lacks ``c`` in an image that has ``c``
  elsewhere still is a false positive. Matching takes, for each prediction, the ground-truth
  cell of highest IoU (found or not): if that one is already found the prediction is a false
  positive, even when another unfound cell also overlaps it by >= the threshold.
* ``"strict"``: every prediction counts; a class predicted in an image without it is a false
  positive, and a prediction whose best cell is already found falls back to the highest-IoU
  unfound one. With disjoint cell masks and mask IoU the fall-back never fires (IoU > 0.5 with
  two disjoint cells is impossible); the protocols then differ only by the evaluatable classes.

``overlap`` (:data:`OVERLAPS`): ``"mask"`` IoU of the pixel masks, or ``"box"`` IoU of the
masks' bounding boxes (rows min..max+1, columns min..max+1, :mod:`wsss.masks.boxes`), which is
what the published HPA scoring script matches by. With compact masks the two mostly agree; with
ragged masks they can differ a lot.

Tied confidences (``ties``, :data:`TIE_MODES`): ``"group"`` (default) reads precision and recall
only after the last prediction of each group of equal confidence, so AP does not depend on the
order of tied predictions (the way ``sklearn.metrics.average_precision_score`` treats thresholds;
it matters for the naive baseline where all cells of an image share one score). The official
evaluator breaks ties by an unstable sort, so a tied submission has a range of possible scores:
``"best"`` puts the true positives of every tie first, ``"worst"`` last (the maximum and
minimum AP over tie orders), and ``"stable"`` walks the predictions in the given order. Report
the group value with the best..worst range (:meth:`CellMatches.tie_range`), never one order.
Matching within a tie is in input order; with disjoint masks this cannot change the number of
true positives.

Mask IoUs come from :func:`wsss.masks.pairwise_iou` (one ``bincount`` over the pixels of two
label maps, or pycocotools RLE arithmetic), box IoUs from :func:`wsss.masks.boxes.pairwise_box_iou`.
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
from wsss.masks import CellMasks, MaskError, cell_masks_from_label_map, cell_masks_from_strings, pairwise_iou, rows_cell_masks
from wsss.masks.boxes import pairwise_box_iou
from wsss.schema import PROB_COLUMNS
from wsss.submission import Submission
from wsss.tables import average_duplicate_cells

logger = logging.getLogger(__name__)

IOU_THRESHOLD: float = 0.6
TIE_MODES: tuple[str, ...] = ("group", "stable", "best", "worst")
PROTOCOLS: tuple[str, ...] = ("official", "strict")
OVERLAPS: tuple[str, ...] = ("mask", "box")
DEFAULT_PROTOCOL: str = "official"
DEFAULT_OVERLAP: str = "mask"


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


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """:class:`MetricError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise MetricError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def match_image_class(iou: np.ndarray, gt_of_class: np.ndarray, pred_cell: np.ndarray, pred_score: np.ndarray,
                      iou_threshold: float = IOU_THRESHOLD, fall_back: bool = True) -> np.ndarray:
    """True-positive flags of one image's predictions of one class (greedy, by descending confidence).

    ``gt_of_class``: indices (columns of ``iou``) of the ground-truth cells of the class. Each
    prediction, taken by score (stable for ties), looks at the highest-IoU ground-truth cell; it
    is a true positive if that IoU >= ``iou_threshold`` and the cell is not found yet.
    ``fall_back=True`` (strict protocol) looks only at the cells not found yet; ``False`` (official
    protocol, as the Open Images evaluator) at all of them, so a prediction whose best cell is
    already found is a false positive. Returns flags in the input order of the predictions.
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
        row = np.where(matched, -1.0, sub[p]) if fall_back else sub[p]
        best = int(np.argmax(row))
        if row[best] >= iou_threshold and not matched[best]:
            matched[best] = True
            tp[p] = True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int, ties: str = "group") -> float:
    """Area under the precision envelope over recall for predictions ``scores`` with TP flags ``tp``.

    ``nan`` when ``n_gt == 0``; 0 when there is no prediction. See the module docstring for ``ties``.
    """
    _check_choice("ties", ties, TIE_MODES)
    if n_gt <= 0:
        return float("nan")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return 0.0
    hits = np.asarray(tp, dtype=bool)
    if ties == "best":
        order = np.lexsort((~hits, -scores))
    elif ties == "worst":
        order = np.lexsort((hits, -scores))
    else:
        order = np.argsort(-scores, kind="stable")
    s = scores[order]
    hits = hits[order]
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


def describe(protocol: str, overlap: str, iou_threshold: float = IOU_THRESHOLD, ties: str | None = None) -> str:
    """How a per-cell score was computed, for table titles: ``"official protocol, mask IoU >= 0.6"``."""
    text = f"{protocol} protocol, {overlap} IoU >= {iou_threshold:g}"
    return text if ties is None else f"{text}, {ties} ties"


@dataclass
class CellMapResult:
    """Per-class AP (``nan`` where a class has no ground truth), counts and the mAP over classes with GT.

    ``n_pred``/``n_tp`` count the predictions that were scored (under ``official`` the ones of an
    evaluatable class).
    """

    ap: np.ndarray
    n_gt: np.ndarray
    n_pred: np.ndarray
    n_tp: np.ndarray
    iou_threshold: float = IOU_THRESHOLD
    protocol: str = DEFAULT_PROTOCOL
    overlap: str = DEFAULT_OVERLAP
    ties: str = "group"

    @property
    def map(self) -> float:
        """Mean AP over the classes with ground truth (``nan`` if none has)."""
        return self.map_over(None)

    def map_over(self, classes: Sequence[int] | None = None) -> float:
        """Mean AP over ``classes`` (all when ``None``) that have ground truth (``nan`` if none has);
        ``map_over(range(18))`` is the mAP without Negative."""
        valid = self.n_gt > 0
        if classes is not None:
            chosen = np.zeros(valid.size, dtype=bool)
            chosen[[int(c) for c in classes if 0 <= int(c) < valid.size]] = True
            valid &= chosen
        return float(np.mean(self.ap[valid])) if valid.any() else float("nan")

    @property
    def label(self) -> str:
        """Protocol, overlap, threshold and ties in words (see :func:`describe`)."""
        return describe(self.protocol, self.overlap, self.iou_threshold, self.ties)

    def table(self) -> pd.DataFrame:
        """Per-class table: ``class, name, n_gt, n_pred, n_tp, ap``."""
        names = list(CLASS_NAMES) if len(CLASS_NAMES) == self.ap.size else [str(i) for i in range(self.ap.size)]
        return pd.DataFrame({"class": np.arange(self.ap.size), "name": names, "n_gt": self.n_gt,
                             "n_pred": self.n_pred, "n_tp": self.n_tp, "ap": self.ap})


@dataclass
class CellMatches:
    """Matched predictions of a set of images under one or more protocols, ready for AP.

    ``scores[protocol][c]`` / ``flags[protocol][c]``: confidences and TP flags of the scored
    predictions of class ``c``; ``n_gt[c]``: ground-truth cells of ``c``. Matching is done once;
    :meth:`result` then computes AP for any tie mode.
    """

    n_gt: np.ndarray
    scores: dict[str, list[np.ndarray]]
    flags: dict[str, list[np.ndarray]]
    iou_threshold: float = IOU_THRESHOLD
    overlap: str = DEFAULT_OVERLAP

    @property
    def protocols(self) -> tuple[str, ...]:
        """The protocols these matches were collected for."""
        return tuple(self.scores)

    def result(self, protocol: str = DEFAULT_PROTOCOL, ties: str = "group") -> CellMapResult:
        """Per-class AP and mAP under ``protocol`` with tie mode ``ties``."""
        _check_choice("ties", ties, TIE_MODES)
        if protocol not in self.scores:
            raise MetricError(f"protocol {protocol!r} was not matched (have {self.protocols})")
        num_classes = self.n_gt.size
        ap = np.full(num_classes, np.nan)
        n_pred = np.zeros(num_classes, dtype=np.int64)
        n_tp = np.zeros(num_classes, dtype=np.int64)
        for c in range(num_classes):
            s, t = self.scores[protocol][c], self.flags[protocol][c]
            n_pred[c], n_tp[c] = s.size, int(t.sum())
            if self.n_gt[c] > 0:
                ap[c] = average_precision(s, t, int(self.n_gt[c]), ties=ties)
        return CellMapResult(ap=ap, n_gt=self.n_gt.copy(), n_pred=n_pred, n_tp=n_tp,
                             iou_threshold=self.iou_threshold, protocol=protocol, overlap=self.overlap, ties=ties)

    def tie_range(self, protocol: str = DEFAULT_PROTOCOL) -> tuple[float, float]:
        """``(worst, best)`` mAP over every order of tied confidences under ``protocol``."""
        return self.result(protocol, "worst").map, self.result(protocol, "best").map


def evaluatable(gt_labels: np.ndarray, pred_class: np.ndarray, protocol: str) -> np.ndarray:
    """Which predictions of one image are scored: all (``strict``) or those of a class some
    ground-truth cell of the image holds (``official``; none for an image without ground truth)."""
    _check_choice("protocol", protocol, PROTOCOLS)
    if protocol == "strict":
        return np.ones(pred_class.size, dtype=bool)
    image_classes = np.asarray(gt_labels, dtype=bool).any(axis=0)
    return image_classes[pred_class] if image_classes.size else np.zeros(pred_class.size, dtype=bool)


def match_cells(images: Iterable[ImageCells], iou_threshold: float = IOU_THRESHOLD, num_classes: int = NUM_CLASSES,
                protocols: Sequence[str] = PROTOCOLS, overlap: str = DEFAULT_OVERLAP) -> CellMatches:
    """Match the predictions of ``images`` to their ground truth under each of ``protocols``.

    ``overlap`` only names how the ``iou`` matrices of ``images`` were computed.
    """
    for protocol in protocols:
        _check_choice("protocol", protocol, PROTOCOLS)
    scores: dict[str, list[list[np.ndarray]]] = {p: [[] for _ in range(num_classes)] for p in protocols}
    flags: dict[str, list[list[np.ndarray]]] = {p: [[] for _ in range(num_classes)] for p in protocols}
    n_gt = np.zeros(num_classes, dtype=np.int64)
    for image in images:
        gt = np.asarray(image.gt_labels, dtype=bool).reshape(-1, num_classes)
        iou = np.asarray(image.iou, dtype=np.float64)
        if iou.ndim != 2:
            n_rows = int(image.pred_cell.max(initial=-1)) + 1
            iou = iou.reshape(-1, gt.shape[0]) if gt.shape[0] else np.zeros((n_rows, 0))
        if image.pred_cell.size and (image.pred_cell.max() >= iou.shape[0] or image.pred_cell.min() < 0):
            raise MetricError(f"image {image.image_id}: prediction cell index outside the IoU matrix")
        bad = (image.pred_class < 0) | (image.pred_class >= num_classes)
        if bad.any():
            raise MetricError(f"image {image.image_id}: class {int(image.pred_class[bad][0])} out of range "
                              f"0..{num_classes - 1}")
        n_gt += gt.sum(axis=0)
        for protocol in protocols:
            kept = evaluatable(gt, image.pred_class, protocol)
            for c in np.unique(image.pred_class[kept]).tolist():
                sel = kept & (image.pred_class == c)
                cells, sc = image.pred_cell[sel], image.pred_score[sel]
                scores[protocol][c].append(sc)
                flags[protocol][c].append(match_image_class(iou, np.flatnonzero(gt[:, c]), cells, sc, iou_threshold,
                                                            fall_back=protocol == "strict"))
    return CellMatches(
        n_gt=n_gt,
        scores={p: [np.concatenate(v) if v else np.zeros(0) for v in per] for p, per in scores.items()},
        flags={p: [np.concatenate(v) if v else np.zeros(0, dtype=bool) for v in per] for p, per in flags.items()},
        iou_threshold=iou_threshold, overlap=overlap)


def cell_map(images: Iterable[ImageCells], iou_threshold: float = IOU_THRESHOLD,
             num_classes: int = NUM_CLASSES, ties: str = "group", protocol: str = DEFAULT_PROTOCOL) -> CellMapResult:
    """Per-cell mAP over ``images`` under ``protocol`` (see the module docstring for the exact rules)."""
    _check_choice("ties", ties, TIE_MODES)
    return match_cells(images, iou_threshold, num_classes, protocols=(protocol,)).result(protocol, ties)


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


def pairwise_overlap(pred: CellMasks, gt: CellMasks, overlap: str = DEFAULT_OVERLAP) -> np.ndarray:
    """IoU of every predicted cell (rows) with every ground-truth cell (columns): pixel masks or their boxes."""
    _check_choice("overlap", overlap, OVERLAPS)
    return pairwise_iou(pred, gt) if overlap == "mask" else pairwise_box_iou(pred, gt)


def match_predictions(preds: dict[str, PredImage], truth: dict[str, TruthImage],
                      iou_threshold: float = IOU_THRESHOLD, protocols: Sequence[str] = PROTOCOLS,
                      overlap: str = DEFAULT_OVERLAP) -> CellMatches:
    """Match predictions to ground truth over the images of ``truth`` under each of ``protocols``.

    Truth images without predictions count their cells as misses; predicted images absent from
    the truth are ignored (logged). IoUs are computed once and shared by the protocols.
    """
    _check_choice("overlap", overlap, OVERLAPS)
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
            iou = pairwise_overlap(pred.masks, gt.masks, overlap)
            yield ImageCells(image_id, iou, gt.labels, pred.pred_cell, pred.pred_class, pred.pred_score)

    return match_cells(images(), iou_threshold=iou_threshold, protocols=protocols, overlap=overlap)


def evaluate_cells(preds: dict[str, PredImage], truth: dict[str, TruthImage], iou_threshold: float = IOU_THRESHOLD,
                   ties: str = "group", protocol: str = DEFAULT_PROTOCOL,
                   overlap: str = DEFAULT_OVERLAP) -> CellMapResult:
    """Score predictions against ground truth over the images of ``truth`` under one protocol
    (see :func:`match_predictions`)."""
    _check_choice("ties", ties, TIE_MODES)
    return match_predictions(preds, truth, iou_threshold, (protocol,), overlap).result(protocol, ties)


__all__: Sequence[str] = [
    "IOU_THRESHOLD", "TIE_MODES", "PROTOCOLS", "OVERLAPS", "DEFAULT_PROTOCOL", "DEFAULT_OVERLAP", "MetricError",
    "ImageCells", "flatten_scores", "image_cells_from_scores", "match_image_class", "average_precision",
    "describe", "CellMapResult", "CellMatches", "evaluatable", "match_cells", "cell_map", "TruthImage",
    "read_label_png", "truth_from_label_dir", "truth_from_submission", "PredImage", "preds_from_cell_table",
    "preds_from_submission", "pairwise_overlap", "match_predictions", "evaluate_cells",
]
