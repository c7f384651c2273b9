"""The HPA single-cell Kaggle submission format: CSV out and in.

A submission is a CSV ``ID,ImageWidth,ImageHeight,PredictionString``; the prediction string is a
space-separated list of ``class confidence mask`` triplets, ``mask`` being one cell's mask at the
image's original size in the competition's COCO RLE text form (:mod:`wsss.masks.rle`). Label maps
are upscaled to the original size by the project's one rule, :func:`wsss.masks.resize_labels`.

This module holds the prediction strings, :func:`read_submission` and :func:`build_submission` /
:func:`write_submission`; masks, IoU and the RLE codec live in :mod:`wsss.masks`, the per-cell
table reader (:func:`~wsss.tables.read_cell_table`) in :mod:`wsss.tables`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.data.classes import NUM_CLASSES
from wsss.fileio import atomic_write_bytes
from wsss.masks import MaskError, encode_label_map, rows_mask_source
from wsss.schema import PROB_COLUMNS
from wsss.tables import average_duplicate_cells

logger = logging.getLogger(__name__)

SUBMISSION_COLUMNS: list[str] = ["ID", "ImageWidth", "ImageHeight", "PredictionString"]
#: Long-form prediction columns returned by :func:`read_submission`.
PREDICTION_COLUMNS: list[str] = ["ID", "class", "confidence", "mask"]


class SubmissionError(MaskError):
    """A submission file, prediction string or per-cell table that is not valid."""


# --------------------------------------------------------------------------- prediction strings


def format_confidence(value: float, decimals: int | None = None) -> str:
    """A confidence as text: shortest exact round-trip form (``decimals=None``) or ``decimals`` significant digits.

    Rounding can turn distinct scores into ties, which changes AP; the default keeps them exact.
    """
    return repr(float(value)) if decimals is None else f"{float(value):.{decimals}g}"


def format_prediction_string(triplets: Iterable[tuple[int, float, str]], decimals: int | None = None) -> str:
    """Join ``(class, confidence, mask)`` triplets into a PredictionString (see :func:`format_confidence`)."""
    return " ".join(f"{int(c)} {format_confidence(p, decimals)} {m}" for c, p, m in triplets)


def parse_prediction_string(text: str) -> list[tuple[int, float, str]]:
    """Split a PredictionString into ``(class, confidence, mask)`` triplets; an empty string gives ``[]``."""
    if not isinstance(text, str):
        text = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
    tokens = text.split()
    if len(tokens) % 3:
        raise SubmissionError(f"PredictionString has {len(tokens)} tokens, not a multiple of 3 (class confidence mask)")
    out: list[tuple[int, float, str]] = []
    for i in range(0, len(tokens), 3):
        cls_tok, conf_tok, mask_tok = tokens[i:i + 3]
        try:
            cls = int(cls_tok)
            conf = float(conf_tok)
        except ValueError as exc:
            raise SubmissionError(f"triplet {i // 3}: {cls_tok!r} {conf_tok!r} is not 'class confidence'") from exc
        if not 0 <= cls < NUM_CLASSES:
            raise SubmissionError(f"triplet {i // 3}: class {cls} out of range 0..{NUM_CLASSES - 1}")
        if not np.isfinite(conf):
            raise SubmissionError(f"triplet {i // 3}: confidence {conf_tok!r} is not finite")
        if not 0.0 <= conf <= 1.0:
            raise SubmissionError(f"triplet {i // 3}: confidence {conf_tok} is outside [0, 1]")
        out.append((cls, conf, mask_tok))
    return out


# --------------------------------------------------------------------------- reading submissions


@dataclass
class Submission:
    """A parsed submission: ``images`` (``ID, ImageWidth, ImageHeight``, every row of the file) and
    ``predictions`` (long form ``ID, class, confidence, mask``, one row per triplet)."""

    images: pd.DataFrame
    predictions: pd.DataFrame

    def cells(self, missing_score: float = 0.0) -> pd.DataFrame:
        """One row per distinct mask per image: ``image_id, cell_id, mask, orig_width, orig_height, p_0..p_18``.

        ``cell_id`` numbers the distinct masks of an image 1, 2, ... in order of first appearance.
        A class listed several times for the same mask keeps its highest confidence; classes not
        listed get ``missing_score``.
        """
        preds = self.predictions.merge(self.images, on="ID", how="left")
        rows: list[dict] = []
        for image_id, group in preds.groupby("ID", sort=False):
            order = pd.unique(group["mask"])
            index = {m: i for i, m in enumerate(order)}
            probs = np.full((len(order), NUM_CLASSES), missing_score, dtype=np.float64)
            seen = np.zeros_like(probs, dtype=bool)
            for cls, conf, mask in zip(group["class"].to_numpy(), group["confidence"].to_numpy(), group["mask"]):
                i = index[mask]
                probs[i, cls] = max(probs[i, cls], conf) if seen[i, cls] else conf
                seen[i, cls] = True
            width, height = int(group["ImageWidth"].iloc[0]), int(group["ImageHeight"].iloc[0])
            for i, mask in enumerate(order):
                row = {"image_id": image_id, "cell_id": i + 1, "mask": mask,
                       "orig_width": width, "orig_height": height}
                row.update(dict(zip(PROB_COLUMNS, probs[i].tolist())))
                rows.append(row)
        columns = ["image_id", "cell_id", "mask", "orig_width", "orig_height", *PROB_COLUMNS]
        return pd.DataFrame(rows, columns=columns)


def read_submission(path: Path | str) -> Submission:
    """Read a submission CSV; raises :class:`SubmissionError` naming the file and line on bad content."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: submission file not found")
    try:
        df = pd.read_csv(path, dtype={"ID": str, "PredictionString": str}, keep_default_na=False)
    except Exception as exc:
        raise SubmissionError(f"{path}: cannot read as CSV ({exc})") from exc
    missing = [c for c in SUBMISSION_COLUMNS if c not in df.columns]
    if missing:
        raise SubmissionError(f"{path}: missing column(s) {', '.join(missing)} (need {','.join(SUBMISSION_COLUMNS)})")
    images = _checked_sizes(df[["ID", "ImageWidth", "ImageHeight"]].copy(), path)
    ids: list[str] = []
    classes: list[int] = []
    confs: list[float] = []
    masks: list[str] = []
    for line, (image_id, text) in enumerate(zip(df["ID"], df["PredictionString"]), start=2):
        try:
            triplets = parse_prediction_string(text)
        except SubmissionError as exc:
            raise SubmissionError(f"{path}:{line}: {image_id}: {exc}") from exc
        for cls, conf, mask in triplets:
            ids.append(image_id)
            classes.append(cls)
            confs.append(conf)
            masks.append(mask)
    predictions = pd.DataFrame({"ID": ids, "class": np.asarray(classes, dtype=np.int64),
                                "confidence": np.asarray(confs, dtype=np.float64), "mask": masks})
    return Submission(images=images.reset_index(drop=True), predictions=predictions)


# --------------------------------------------------------------------------- writing submissions


def read_image_sizes(path: Path | str) -> pd.DataFrame:
    """Image ids and original sizes from a sample submission (``ID,ImageWidth,ImageHeight``) or a
    prepared-cache manifest (``ID,width,height``); returns ``ID, ImageWidth, ImageHeight``."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: image list not found")
    try:
        df = pd.read_csv(path, dtype={"ID": str}, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{path}: not a readable CSV ({exc.__class__.__name__})") from None
    if "ID" not in df.columns:
        raise SubmissionError(f"{path}: no ID column")
    if {"ImageWidth", "ImageHeight"} <= set(df.columns):
        out = df[["ID", "ImageWidth", "ImageHeight"]].copy()
    elif {"width", "height"} <= set(df.columns):
        out = df[["ID", "width", "height"]].rename(columns={"width": "ImageWidth", "height": "ImageHeight"})
    else:
        raise SubmissionError(f"{path}: needs ImageWidth,ImageHeight or width,height columns besides ID")
    return _checked_sizes(out.reset_index(drop=True), path)


def _checked_sizes(images: pd.DataFrame, path: Path | str) -> pd.DataFrame:
    """``ID, ImageWidth, ImageHeight`` rows with positive whole sizes and unique ids, sizes as int64.

    Errors name the file and the CSV line (header = line 1).
    """
    for col in ("ImageWidth", "ImageHeight"):
        values = pd.to_numeric(images[col], errors="coerce")
        bad = values.isna() | (values <= 0) | (values != np.floor(values))
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise SubmissionError(f"{path}:{line}: {col} {images[col].iloc[line - 2]!r} is not a positive integer")
        images[col] = values.astype(np.int64)
    dup = images["ID"].duplicated()
    if dup.any():
        line = int(np.flatnonzero(dup.to_numpy())[0]) + 2
        raise SubmissionError(f"{path}:{line}: image {images['ID'].iloc[line - 2]} listed twice")
    return images


def _image_masks(group: pd.DataFrame, height: int, width: int) -> dict[int, str]:
    """Mask strings of the cells in one image's rows: from a ``mask`` column when filled, else the label map."""
    source = rows_mask_source(group, height, width)
    if isinstance(source, list):
        return dict(zip(group["cell_id"].astype(int).tolist(), source))
    return encode_label_map(source.cells, out_hw=(height, width))


def build_submission(cells: pd.DataFrame, images: pd.DataFrame | None = None,
                     min_confidence: float | None = None, decimals: int | None = None,
                     progress: bool = False) -> pd.DataFrame:
    """Build the submission table from a per-cell table.

    ``cells``: per-cell rows (``image_id, cell_id, p_0..p_18, orig_width, orig_height`` and either
    ``mask_path`` to a label-map ``.npz`` or a ``mask`` column of ready mask strings).
    ``images``: ``ID, ImageWidth, ImageHeight`` listing every image of the output in order
    (default: the table's images); listed images without cells get an empty PredictionString,
    table images not listed are left out (logged). ``min_confidence``: keep triplets with
    ``p >= min_confidence``; ``None`` keeps all 19 classes of every cell.
    """
    from tqdm import tqdm  # noqa: PLC0415

    missing = [c for c in ("image_id", "cell_id", *PROB_COLUMNS) if c not in cells.columns]
    if missing:
        raise SubmissionError(f"per-cell table lacks column(s) {', '.join(missing)}")
    cells = average_duplicate_cells(cells)
    if images is None:
        if not {"orig_width", "orig_height"} <= set(cells.columns):
            raise SubmissionError("per-cell table lacks orig_width/orig_height and no image list was given")
        images = (cells.groupby("image_id", sort=False)[["orig_width", "orig_height"]].first().reset_index()
                  .rename(columns={"image_id": "ID", "orig_width": "ImageWidth", "orig_height": "ImageHeight"}))
    extra = set(cells["image_id"]) - set(images["ID"])
    if extra:
        logger.warning("%d image(s) of the table are not in the image list and are left out", len(extra))
    groups = dict(tuple(cells.groupby("image_id", sort=False)))
    strings: list[str] = []
    iterator = tqdm(images.itertuples(index=False), total=len(images), desc="submission", disable=not progress)
    for image_id, width, height in iterator:
        group = groups.get(image_id)
        if group is None:
            strings.append("")
            continue
        if "orig_width" in group.columns:
            tw, th = int(group["orig_width"].iloc[0]), int(group["orig_height"].iloc[0])
            if (tw, th) != (int(width), int(height)):
                raise SubmissionError(f"image {image_id}: table says {tw}x{th}, image list says {width}x{height}")
        masks = _image_masks(group, int(height), int(width))
        probs = group[PROB_COLUMNS].to_numpy(dtype=np.float64)
        triplets: list[tuple[int, float, str]] = []
        for cid, row in zip(group["cell_id"].astype(int).tolist(), probs):
            mask = masks.get(cid)
            if mask is None:
                logger.warning("image %s: cell %d not in its label map; skipped", image_id, cid)
                continue
            for cls in range(NUM_CLASSES):
                if min_confidence is None or row[cls] >= min_confidence:
                    triplets.append((cls, row[cls], mask))
        strings.append(format_prediction_string(triplets, decimals=decimals))
    out = images[["ID", "ImageWidth", "ImageHeight"]].copy()
    out["PredictionString"] = strings
    return out.reset_index(drop=True)


def write_submission(submission: pd.DataFrame, path: Path | str) -> Path:
    """Write a submission table to CSV atomically (temp file + rename)."""
    path = Path(path)
    missing = [c for c in SUBMISSION_COLUMNS if c not in submission.columns]
    if missing:
        raise SubmissionError(f"submission table lacks column(s) {', '.join(missing)}")
    atomic_write_bytes(path, submission[SUBMISSION_COLUMNS].to_csv(index=False).encode("utf-8"))
    return path


__all__: Sequence[str] = [
    "SUBMISSION_COLUMNS", "PREDICTION_COLUMNS", "SubmissionError",
    "format_confidence", "format_prediction_string", "parse_prediction_string", "Submission",
    "read_submission", "read_image_sizes", "build_submission", "write_submission",
]
