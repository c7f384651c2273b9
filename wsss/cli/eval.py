"""``wsss-eval PRED [PRED ...] --truth TRUTH``: per-cell mAP at IoU 0.6 and image-level macro F1/mAP.

Per-cell scores follow ``--protocol`` (default ``official``, the HPA competition's Open Images
challenge rules: only an image's ground-truth classes are scored there) and ``--overlap``
(``mask`` or ``box`` IoU); see :mod:`wsss.metrics.cell`. The per-class table is the chosen
protocol's; its summary rows give its mAP, the range of mAP over orders of tied confidences,
and the mAP under the other protocol, so both protocols are always in view.

Predictions: per-cell tables (``.parquet``/``.csv`` with ``cell_id``), submission CSVs (with
``PredictionString``) and image-level tables (``image_id, p_0..p_18`` without ``cell_id``).
Truth: a synthetic-format folder (``masks/{ID}_cells.png`` + ``cell_labels.csv``; its
``train.csv`` serves image tables), a ground-truth submission CSV, or an ``ID,Label`` CSV (image
tables only; also ``--labels``). Prints the per-class tables and writes them as CSV (and the
per-cell AP chart as PNG with ``--plot``).

After the per-class table a summary gives every per-cell prediction's mAP under both protocols,
on all images and on the heterogeneous ones (true cells that do not all carry one label set), over
all classes and over classes 0-17 (Negative left out). ``--references`` adds two references
computed on the masks of one prediction (``--reference-masks NAME``, default the first):
``truth-broadcast`` (each cell its image's true labels) and ``oracle`` (each cell matched to a
true cell at the IoU threshold given its true labels, unmatched cells nothing); see
:mod:`wsss.metrics.references`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.cli.common import EXIT_EPILOG, EXIT_OK, refuse
from wsss.data.classes import CLASS_NAMES, NUM_CLASSES, LabelError, labels_to_matrix
from wsss.metrics.cell import (
    DEFAULT_OVERLAP,
    DEFAULT_PROTOCOL,
    IOU_THRESHOLD,
    OVERLAPS,
    PROTOCOLS,
    TIE_MODES,
    MetricError,
    PredImage,
    TruthImage,
    describe,
    match_predictions,
    preds_from_cell_table,
    preds_from_submission,
    truth_from_label_dir,
    truth_from_submission,
)
from wsss.metrics.references import REFERENCES, format_summary, references, summary_table
from wsss.schema import PROB_COLUMNS
from wsss.fileio import OutputPathError, check_output_file
from wsss.masks import MaskError
from wsss.submission import read_submission
from wsss.tables import read_cell_table

logger = logging.getLogger(__name__)


class EvalError(ValueError):
    """Inputs ``wsss-eval`` cannot use."""


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``wsss-eval``."""
    parser = argparse.ArgumentParser(
        prog="wsss-eval",
        description="Score per-cell tables / submissions by per-cell mAP at IoU 0.6 (Open Images challenge "
                    "protocol of the HPA competition, or strict) and image-level tables by macro F1 and macro mAP.",
        epilog=EXIT_EPILOG,
    )
    parser.add_argument("preds", type=Path, nargs="+", help="per-cell tables, submission CSVs or image-level tables")
    parser.add_argument("--truth", type=Path, required=True,
                        help="synthetic folder (masks/{ID}_cells.png + cell_labels.csv), ground-truth "
                             "submission CSV, or ID,Label CSV (image-level only)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="ID,Label CSV for image-level tables (default: TRUTH/train.csv or TRUTH itself)")
    parser.add_argument("--names", nargs="+", default=None, help="one column name per prediction (default: file stems)")
    parser.add_argument("--iou", type=float, default=IOU_THRESHOLD, help=f"IoU threshold (default {IOU_THRESHOLD})")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL,
                        help="official (default): the HPA competition's Open Images challenge rules, predictions "
                             "of a class absent from an image's truth are dropped; strict: every prediction counts")
    parser.add_argument("--overlap", choices=OVERLAPS, default=DEFAULT_OVERLAP,
                        help="mask (default): pixel-mask IoU; box: IoU of the masks' bounding boxes, as the "
                             "published HPA scoring script")
    parser.add_argument("--ties", choices=TIE_MODES, default="group",
                        help="tied confidences of the per-class table: group (order-independent, default; equals "
                             "the worst order), stable (input order), best or worst order; the summary rows "
                             "always give the best..worst range")
    parser.add_argument("--min-confidence", type=float, default=None,
                        help="ignore per-cell predictions below this confidence (as a submission floor would)")
    parser.add_argument("--threshold", type=float, default=0.5, help="image-level F1 threshold (default 0.5)")
    parser.add_argument("--only-predicted", action="store_true",
                        help="score only images present in every prediction (e.g. one fold's OOF tables); "
                             "default: every truth image, unpredicted cells count as misses")
    parser.add_argument("--references", action="store_true",
                        help="also score truth-broadcast (each cell its image's true labels) and oracle (each cell "
                             "matched to a true cell given its true labels) on the masks of --reference-masks")
    parser.add_argument("--reference-masks", default=None, metavar="NAME",
                        help="the prediction whose masks the references use (default: the first per-cell one)")
    parser.add_argument("--out", type=Path, default=None,
                        help="per-cell AP table CSV (the image-level table goes to OUT_image.csv, the summary "
                             "to OUT_summary.csv)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG bar chart of per-class per-cell AP")
    return parser


def _kind(path: Path) -> str:
    """``"submission"``, ``"cells"`` or ``"images"`` from a prediction file's columns."""
    if not path.is_file():
        raise EvalError(f"{path}: prediction file not found")
    try:
        if path.suffix.lower() == ".csv":
            columns = list(pd.read_csv(path, nrows=0).columns)
        else:
            import pyarrow.parquet as pq  # noqa: PLC0415

            columns = pq.read_schema(path).names
    except Exception as exc:
        raise EvalError(f"{path}: cannot read ({exc})") from exc
    if "PredictionString" in columns:
        return "submission"
    if "cell_id" in columns:
        return "cells"
    if "image_id" in columns and all(c in columns for c in PROB_COLUMNS):
        return "images"
    raise EvalError(f"{path}: neither a submission, a per-cell table nor an image-level table")


def _read_cell_preds(path: Path, kind: str, min_confidence: float | None) -> dict[str, PredImage]:
    """Per-image predictions of a per-cell table or a submission."""
    if kind == "submission":
        return preds_from_submission(read_submission(path), min_confidence)
    return preds_from_cell_table(read_cell_table(path), min_confidence)


def _read_truth(path: Path, ids: list[str] | None) -> dict[str, TruthImage]:
    """Per-cell ground truth from a synthetic folder or a ground-truth submission."""
    if path.is_dir():
        return truth_from_label_dir(path, ids)
    if not path.is_file():
        raise EvalError(f"{path}: truth not found (a synthetic folder or a submission-format CSV)")
    if path.suffix.lower() == ".csv" and "PredictionString" in pd.read_csv(path, nrows=0).columns:
        truth = truth_from_submission(read_submission(path))
        return truth if ids is None else {i: truth[i] for i in ids if i in truth}
    raise EvalError(f"{path}: per-cell truth must be a synthetic folder or a submission-format CSV")


def _read_labels(truth: Path, labels: Path | None) -> pd.DataFrame:
    """Image-level ``ID,Label`` table for image-level predictions."""
    path = labels or (truth / "train.csv" if truth.is_dir() else truth)
    if not path.is_file():
        raise EvalError(f"{path}: image labels (ID,Label) not found")
    df = pd.read_csv(path, dtype={"ID": str, "Label": str}, keep_default_na=False)
    if not {"ID", "Label"} <= set(df.columns):
        raise EvalError(f"{path}: image labels need ID and Label columns")
    return df


def summary_names(iou: float, protocol: str) -> dict[str, str]:
    """Names of the summary rows of :func:`cell_table`: chosen protocol, its tie range, the other protocol."""
    other = next(p for p in PROTOCOLS if p != protocol)
    return {"map": f"mAP@{iou:g} {protocol}", "best": f"{protocol} best tie order",
            "worst": f"{protocol} worst tie order", "other": f"mAP@{iou:g} {other}",
            "map17": f"mAP@{iou:g} {protocol} classes 0-17", "other17": f"mAP@{iou:g} {other} classes 0-17"}


def cell_table(preds: dict[str, dict[str, PredImage]], truth: dict[str, TruthImage], iou: float,
               ties: str, protocol: str = DEFAULT_PROTOCOL, overlap: str = DEFAULT_OVERLAP) -> pd.DataFrame:
    """Per-class per-cell AP of each prediction (columns) under ``protocol`` plus summary rows.

    Summary rows (see :func:`summary_names`): the mAP with ``ties``, the worst and best mAP over
    orders of tied confidences, the mAP under the other protocol (with ``ties``), and both
    protocols' mAP over classes 0-17 (Negative left out).
    """
    names = summary_names(iou, protocol)
    table: pd.DataFrame | None = None
    summary: dict[str, dict[str, object]] = {key: {"class": "", "name": name, "n_gt": 0} for key, name in names.items()}
    for name, pred in preds.items():
        matches = match_predictions(pred, truth, iou_threshold=iou, overlap=overlap)
        result = matches.result(protocol, ties)
        per_class = result.table()
        if table is None:
            table = per_class[["class", "name", "n_gt"]].copy()
        table[name] = per_class["ap"]
        worst, best = matches.tie_range(protocol)
        other = next(p for p in PROTOCOLS if p != protocol)
        other_result = matches.result(other, ties)
        no_negative = range(NUM_CLASSES - 1)
        for key, value in (("map", result.map), ("worst", worst), ("best", best), ("other", other_result.map),
                           ("map17", result.map_over(no_negative)), ("other17", other_result.map_over(no_negative))):
            summary[key][name] = value
    assert table is not None
    n_gt = int(table["n_gt"].sum())
    for row in summary.values():
        row["n_gt"] = n_gt
    return pd.concat([table, pd.DataFrame([summary[k] for k in names])], ignore_index=True)


def image_table(preds: dict[str, pd.DataFrame], labels: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per-class image-level AP and F1 of each image table plus a final ``macro`` row."""
    from wsss.metrics.image import macro_f1, macro_map, per_class_ap, per_class_f1  # noqa: PLC0415

    truth = labels.drop_duplicates("ID").set_index("ID")
    probs = {name: df.groupby("image_id", sort=False)[PROB_COLUMNS].mean() for name, df in preds.items()}
    for name, p in probs.items():
        missing = [i for i in p.index if i not in truth.index]
        if missing:
            raise EvalError(f"{name}: {len(missing)} image(s) without a label, e.g. {missing[0]}")
    ids = sorted(set.intersection(*[set(p.index) for p in probs.values()]))
    if len(probs) > 1:
        logger.info("image-level tables scored on the %d image(s) common to all of them", len(ids))
    try:
        y_true = labels_to_matrix(truth.loc[ids, "Label"].tolist())
    except LabelError as exc:
        raise EvalError(f"labels: {exc}") from exc
    table = pd.DataFrame({"class": np.arange(NUM_CLASSES), "name": list(CLASS_NAMES), "n_pos": y_true.sum(axis=0)})
    summary: dict[str, object] = {"class": "", "name": f"macro ({len(ids)} images)", "n_pos": int(y_true.sum())}
    for name, p in probs.items():
        y_prob = p.loc[ids].to_numpy(dtype=np.float64)
        table[f"{name} AP"] = per_class_ap(y_true, y_prob)
        table[f"{name} F1"] = per_class_f1(y_true, y_prob, threshold)
        summary[f"{name} AP"] = macro_map(y_true, y_prob)
        summary[f"{name} F1"] = macro_f1(y_true, y_prob, threshold)
    return pd.concat([table, pd.DataFrame([summary])], ignore_index=True)


def plot_cell_table(table: pd.DataFrame, names: Sequence[str], path: Path, title: str = "") -> Path:
    """Grouped bar chart of per-class AP (classes with ground truth), one colour per prediction."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = table.loc[table["class"].astype(str) != ""]
    rows = rows.loc[rows["n_gt"] > 0]
    mean_row = table.loc[table["class"].astype(str) == ""].iloc[0]
    x = np.arange(len(rows))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * len(rows) + 4), 4))
    for k, name in enumerate(names):
        mean = mean_row[name]
        ax.bar(x + k * width - 0.4 + width / 2, rows[name].astype(float), width, label=f"{name} (mAP {mean:.3f})")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{c} {n}" for c, n in zip(rows["class"], rows["name"])], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AP (IoU >= threshold)")
    ax.set_title(f"per-cell AP, {mean_row['name']}" + (f" ({title})" if title else ""))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_references(cell_preds: dict[str, dict[str, PredImage]], truth: dict[str, TruthImage], masks_of: str | None,
                   iou: float, overlap: str) -> str:
    """Add the truth-broadcast and oracle references on the masks of ``masks_of`` (default the first); its name."""
    if not cell_preds:
        raise EvalError("--references needs a per-cell prediction (its masks)")
    name = masks_of or next(iter(cell_preds))
    if name not in cell_preds:
        raise EvalError(f"--reference-masks {name}: no per-cell prediction of that name ({', '.join(cell_preds)})")
    clash = [r for r in REFERENCES if r in cell_preds]
    if clash:
        raise EvalError(f"prediction name {clash[0]!r} is taken by a reference; rename it with --names")
    cell_preds.update(references(cell_preds[name], truth, iou, overlap))
    return name


def run(args: argparse.Namespace) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Evaluate every prediction; returns the per-cell and the image-level tables (None when not applicable)."""
    names = args.names or [p.stem for p in args.preds]
    if len(names) != len(args.preds):
        raise EvalError(f"{len(args.preds)} predictions but {len(names)} names")
    if len(set(names)) != len(names):
        raise EvalError(f"prediction names must be unique, got {names} (use --names)")
    cell_preds: dict[str, dict[str, PredImage]] = {}
    image_preds: dict[str, pd.DataFrame] = {}
    for path, name in zip(args.preds, names):
        kind = _kind(path)
        if kind == "images":
            df = pd.read_csv(path, dtype={"image_id": str}) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
            image_preds[name] = df
        else:
            cell_preds[name] = _read_cell_preds(path, kind, args.min_confidence)
    cells = images = None
    if cell_preds:
        ids = None
        if args.only_predicted:
            sets = [set(p) for p in cell_preds.values()]
            ids = sorted(set.intersection(*sets))
            logger.info("scoring the %d image(s) present in every prediction", len(ids))
        truth = _read_truth(args.truth, ids)
        if not truth:
            raise EvalError(f"{args.truth}: no ground-truth image to score")
        ref_masks = (add_references(cell_preds, truth, args.reference_masks, args.iou, args.overlap)
                     if args.references else None)
        cells = cell_table(cell_preds, truth, args.iou, args.ties, args.protocol, args.overlap)
        print(f"per-cell AP over {len(truth)} images: {describe(args.protocol, args.overlap, args.iou, args.ties)} "
              f"(last rows: tie range over orders of tied confidences, the other protocol, classes 0-17)")
        print(cells.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        summary = summary_table(cell_preds, truth, args.iou, args.overlap, args.ties)
        cells.attrs["summary"] = summary
        where = f"; references on the masks of {ref_masks}" if ref_masks else ""
        title = (f"summary: per-cell mAP, both protocols, {args.overlap} IoU >= {args.iou:g}, {args.ties} ties, "
                 f"{summary.attrs['n_all']} images ({summary.attrs['n_hetero']} heterogeneous){where}")
        print(format_summary(summary, title))
    if image_preds:
        images = image_table(image_preds, _read_labels(args.truth, args.labels), args.threshold)
        print(f"image-level AP and F1 (threshold {args.threshold:g})")
        print(images.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return cells, images


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wsss-eval``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        for path in (args.out, args.out.with_name(args.out.stem + "_image.csv") if args.out else None, args.plot):
            if path is not None:  # before the work: a path that cannot be written loses nothing
                check_output_file(path)
        cells, images = run(args)
    except (EvalError, MetricError, MaskError, OutputPathError) as exc:  # SubmissionError included
        return refuse("wsss-eval", exc)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if cells is not None:
            cells.to_csv(args.out, index=False)
            summary_path = args.out.with_name(args.out.stem + "_summary.csv")
            cells.attrs["summary"].to_csv(summary_path, index=False)
            print(f"wsss-eval: per-cell table -> {args.out}, summary -> {summary_path}")
        if images is not None:
            image_path = args.out.with_name(args.out.stem + "_image.csv")
            images.to_csv(image_path, index=False)
            print(f"wsss-eval: image-level table -> {image_path}")
    if args.plot is not None and cells is not None:
        names = [c for c in cells.columns if c not in ("class", "name", "n_gt")]
        title = describe(args.protocol, args.overlap, args.iou)
        print(f"wsss-eval: chart -> {plot_cell_table(cells, names, args.plot, title)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
