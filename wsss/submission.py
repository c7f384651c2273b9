"""The HPA single-cell Kaggle submission format: mask encoding and decoding, CSV out and in.

A submission is a CSV ``ID,ImageWidth,ImageHeight,PredictionString``; the prediction string is a
space-separated list of ``class confidence mask`` triplets. ``mask`` encodes one cell's boolean
mask *at the image's original size* exactly as the competition did:

1. the mask in Fortran (column-major) order, encoded by ``pycocotools.mask.encode``;
2. the ``counts`` bytes of that COCO RLE (pycocotools' compressed string form);
3. ``zlib.compress(counts, zlib.Z_BEST_COMPRESSION)`` (level 9);
4. base64, as ASCII text.

:func:`encode_binary_mask` is that recipe written out for one mask (the reference).
:func:`encode_label_map` produces byte-identical strings for *every* cell of a label map in one
pass: it transposes the (small, working-scale) label map once, upscales the transpose, finds
all column-major runs of every label with one vectorised comparison and builds each cell's
COCO run-length counts from them, never materialising a per-cell full-size mask.

Upscaling label maps: everywhere in hpa-wsss a working-scale label map is brought to the
original image size by :func:`upscale_labels` (:func:`wsss.data.io.resize_labels`), i.e. ``cv2.resize(..., interpolation=
cv2.INTER_NEAREST)``: output pixel ``(y, x)`` takes input pixel ``(floor(y / (H / h)),
floor(x / (W / w)))`` (top-left aligned, *not* ``INTER_NEAREST_EXACT``'s centre alignment).
Because the row and column mappings are independent, upscaling the transpose equals
transposing the upscaled map, which :func:`encode_label_map` relies on.
"""

from __future__ import annotations

import base64
import logging
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from hpa_seg.io import LabelMapError, LabelMaps
from hpa_seg.io import load_label_maps as _load_label_maps
from wsss.data.classes import NUM_CLASSES
from wsss.data.io import nearest_index, resize_labels
from wsss.schema import PROB_COLUMNS

logger = logging.getLogger(__name__)

SUBMISSION_COLUMNS: list[str] = ["ID", "ImageWidth", "ImageHeight", "PredictionString"]
#: Long-form prediction columns returned by :func:`read_submission`.
PREDICTION_COLUMNS: list[str] = ["ID", "class", "confidence", "mask"]
#: Largest pixel grid :func:`pairwise_iou` hands to the bincount path regardless of image size.
BINCOUNT_MAX_SAMPLES: int = 512 * 512


class SubmissionError(ValueError):
    """A submission file, prediction string, mask string or label-map file that is not valid."""


# --------------------------------------------------------------------------- label maps


def load_label_maps(path: Path | str) -> LabelMaps:
    """Read a segmentation ``.npz`` with :func:`hpa_seg.io.load_label_maps`.

    Raises :class:`SubmissionError` naming the file when it is missing or malformed.
    """
    try:
        return _load_label_maps(path)
    except LabelMapError as exc:
        raise SubmissionError(str(exc)) from None


def upscale_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a label map to ``height x width`` with the project's nearest-neighbour rule.

    See :func:`wsss.data.io.resize_labels` (``cv2.INTER_NEAREST`` semantics, mirrored by
    :func:`wsss.data.io.nearest_index`); a map that is not 2-D raises :class:`SubmissionError`.
    """
    try:
        return resize_labels(labels, height, width)
    except ValueError as exc:
        raise SubmissionError(str(exc)) from None


def _transposed_at(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """The transpose (``width x height``, C-contiguous) of ``labels`` upscaled to ``height x width``.

    Transposes first (cheap at working scale), then resizes: equal to transposing the upscaled
    map because nearest-neighbour row and column mappings are independent.
    """
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        labels = labels.view(np.uint8)
    if labels.dtype in (np.uint8, np.uint16, np.int16, np.int32, np.float32):
        transposed = cv2.transpose(labels)
    else:
        transposed = np.ascontiguousarray(labels.T)
    return np.ascontiguousarray(upscale_labels(transposed, width, height))


# --------------------------------------------------------------------------- one mask


def rle_counts_to_string(rle: Mapping) -> str:
    """Compress a COCO RLE's ``counts`` bytes with zlib level 9 and base64 them (the competition's text form)."""
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return base64.b64encode(zlib.compress(counts, zlib.Z_BEST_COMPRESSION)).decode("ascii")


def encode_binary_mask(mask: np.ndarray) -> str:
    """Encode one boolean ``H x W`` mask the straightforward way (the competition's reference recipe).

    Fortran-ordered uint8 copy -> ``pycocotools.mask.encode`` -> counts -> zlib level 9 -> base64.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise SubmissionError(f"mask must be 2-D (H x W), got shape {mask.shape}")
    fortran = np.asfortranarray(mask.astype(np.uint8)[:, :, None])
    rle = mask_utils.encode(fortran)[0]
    return rle_counts_to_string(rle)


def coco_string_to_counts(counts: bytes) -> np.ndarray:
    """Uncompressed run lengths of a pycocotools compressed counts string (vectorised ``rleFrString``).

    Each count is written in 5-bit groups (ASCII offset 48, bit 0x20 = more groups follow, the
    last group's bit 0x10 = negative); counts from the fourth on are stored as differences to
    the count two places earlier.
    """
    chars = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64)
    if chars.min() < 0 or chars.max() > 63:
        raise SubmissionError("COCO counts string holds characters outside the RLE alphabet")
    last = (chars & 0x20) == 0
    if not last[-1]:
        raise SubmissionError("COCO counts string ends inside a number")
    group = np.concatenate(([0], np.cumsum(last)[:-1]))
    group_start = np.concatenate(([0], np.flatnonzero(last)[:-1] + 1))
    position = np.arange(chars.size) - group_start[group]
    if position.max() > 12:
        raise SubmissionError("COCO counts string holds a number too long to be a run length")
    values = np.bincount(group, weights=(chars & 0x1F) << (5 * position)).astype(np.int64)
    ends = np.flatnonzero(last)
    negative = (chars[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (position[ends][negative] + 1))
    out = values.copy()
    if out.size > 3:
        out[3::2] = np.cumsum(values[3::2]) + values[1]
    if out.size > 4:
        out[4::2] = np.cumsum(values[4::2]) + values[2]
    return out


def mask_string_to_rle(encoded: str, height: int, width: int) -> dict:
    """Turn a submission mask string into a pycocotools compressed RLE ``{'size': [h, w], 'counts': bytes}``.

    No pixels are decoded; the RLE feeds ``pycocotools.mask.iou`` / ``area`` / ``decode`` directly.
    Raises :class:`SubmissionError` when the string is not base64/zlib/COCO counts or its run
    lengths do not add up to ``height * width`` (pycocotools would read past its buffers).
    """
    try:
        counts = zlib.decompress(base64.b64decode(encoded.encode("ascii"), validate=True))
    except (ValueError, zlib.error, UnicodeEncodeError) as exc:
        raise SubmissionError(f"invalid mask string {encoded[:24]!r}...: {exc}") from exc
    runs = coco_string_to_counts(counts)
    if runs.size == 0 or runs.min() < 0 or int(runs.sum()) != int(height) * int(width):
        raise SubmissionError(f"mask string {encoded[:24]!r}... does not describe a {height}x{width} mask "
                              f"(run lengths sum to {int(runs.sum())})")
    return {"size": [int(height), int(width)], "counts": counts}


def decode_binary_mask(encoded: str, height: int, width: int) -> np.ndarray:
    """Decode a submission mask string into a boolean ``height x width`` mask (inverse of encoding)."""
    rle = mask_string_to_rle(encoded, height, width)
    with warnings.catch_warnings():  # pycocotools' __array__ predates numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


# --------------------------------------------------------------------------- all cells of a label map


def _column_major_runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, end (exclusive) and value of every run of equal values in a 1-D array."""
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [flat.size]))
    return starts, ends, flat[starts]


def label_map_counts(labels: np.ndarray, ids: Iterable[int] | None = None,
                     out_hw: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    """Uncompressed COCO run-length counts of every cell of ``labels`` (at ``out_hw``, default its own size).

    Returns ``{cell_id: counts}`` (uint32 arrays: alternating background/foreground run lengths
    in column-major order, starting with background, exactly as ``pycocotools.mask.encode``
    counts them). ``ids=None`` means every non-zero label present; a requested id that is
    absent gets the counts of an empty mask.
    """
    labels = np.asarray(labels)
    height, width = out_hw if out_hw is not None else labels.shape
    flat = _transposed_at(labels, int(height), int(width)).ravel()
    total = flat.size
    starts, ends, values = _column_major_runs(flat)
    wanted = None if ids is None else np.unique(np.asarray(list(ids), dtype=np.int64))
    keep = values != 0
    if wanted is not None:
        keep &= np.isin(values, wanted)
    starts, ends, values = starts[keep], ends[keep], values[keep]
    order = np.argsort(values, kind="stable")
    starts, ends, values = starts[order], ends[order], values[order]
    first = np.ones(values.size, dtype=bool)
    first[1:] = values[1:] != values[:-1]
    previous_end = np.concatenate(([0], ends[:-1]))
    previous_end[first] = 0
    pairs = np.empty(2 * values.size, dtype=np.int64)
    pairs[0::2] = starts - previous_end
    pairs[1::2] = ends - starts
    group_starts = np.flatnonzero(first)
    group_ends = np.concatenate((group_starts[1:], [values.size]))
    out: dict[int, np.ndarray] = {}
    for g0, g1 in zip(group_starts.tolist(), group_ends.tolist()):
        counts = pairs[2 * g0: 2 * g1]
        last_end = int(ends[g1 - 1])
        if last_end < total:
            counts = np.concatenate((counts, [total - last_end]))
        out[int(values[g0])] = counts.astype(np.uint32)
    if wanted is not None:
        for cid in wanted.tolist():
            out.setdefault(int(cid), np.array([total], dtype=np.uint32))
    return out


def label_map_rles(labels: np.ndarray, ids: Iterable[int] | None = None,
                   out_hw: tuple[int, int] | None = None) -> dict[int, dict]:
    """pycocotools compressed RLEs (``{'size', 'counts'}``) of every cell of ``labels`` at ``out_hw``.

    Equal to ``pycocotools.mask.encode(np.asfortranarray(labels_at_out_hw == cid))`` per cell.
    """
    height, width = out_hw if out_hw is not None else np.asarray(labels).shape
    counts = label_map_counts(labels, ids=ids, out_hw=(int(height), int(width)))
    if not counts:
        return {}
    keys = list(counts)
    objs = [{"size": [int(height), int(width)], "counts": counts[k].tolist()} for k in keys]
    rles = mask_utils.frPyObjects(objs, int(height), int(width))
    return dict(zip(keys, rles))


def encode_label_map(labels: np.ndarray, ids: Iterable[int] | None = None,
                     out_hw: tuple[int, int] | None = None) -> dict[int, str]:
    """Submission mask strings of every cell of a label map, upscaled to ``out_hw`` (original size).

    ``labels`` is typically at working scale; ``out_hw = (orig_height, orig_width)``. Byte-identical
    to ``encode_binary_mask(upscale_labels(labels, *out_hw) == cid)`` for every cell id.
    """
    rles = label_map_rles(labels, ids=ids, out_hw=out_hw)
    return {cid: rle_counts_to_string(rle) for cid, rle in rles.items()}


def naive_encode_label_map(labels: np.ndarray, ids: Iterable[int] | None = None,
                           out_hw: tuple[int, int] | None = None) -> dict[int, str]:
    """Reference: upscale once, then :func:`encode_binary_mask` of each cell's full-size mask separately."""
    full = upscale_labels(labels, *out_hw) if out_hw is not None else np.asarray(labels)
    if ids is None:
        ids = [int(v) for v in np.unique(full) if v != 0]
    return {int(cid): encode_binary_mask(full == cid) for cid in ids}


# --------------------------------------------------------------------------- cell masks and IoU


@dataclass
class CellMasks:
    """The cell masks of one image at its original size ``height x width``.

    Held either as a label map (``labels``, possibly at working scale; upscaled on demand with
    :func:`upscale_labels`) or as pycocotools RLEs (``rles``, one per id, already at full size).
    ``ids`` are the cells that count (label values for a label map, any ints for RLEs).
    """

    ids: np.ndarray
    height: int
    width: int
    labels: np.ndarray | None = None
    rles: list[dict] | None = None

    def full_labels(self) -> np.ndarray:
        """The label map at the original size (only for label-map masks)."""
        if self.labels is None:
            raise SubmissionError("these cell masks are RLEs, not a label map")
        return upscale_labels(self.labels, self.height, self.width)

    def to_rles(self) -> list[dict]:
        """pycocotools RLEs in the order of ``ids`` (encoded in one pass for a label map)."""
        if self.rles is not None:
            return self.rles
        by_id = label_map_rles(self.labels, ids=self.ids.tolist(), out_hw=(self.height, self.width))
        return [by_id[int(i)] for i in self.ids]


def cell_masks_from_label_map(labels: np.ndarray, height: int, width: int,
                              ids: Iterable[int] | None = None) -> CellMasks:
    """:class:`CellMasks` of a (working-scale) label map whose original size is ``height x width``.

    ``ids=None`` takes every non-zero label present.
    """
    labels = np.asarray(labels)
    if ids is None:
        present = np.bincount(labels.ravel().astype(np.int64))
        present[0] = 0
        ids_arr = np.flatnonzero(present)
    else:
        ids_arr = np.asarray(list(ids), dtype=np.int64)
    return CellMasks(ids=ids_arr, height=int(height), width=int(width), labels=labels)


def cell_masks_from_strings(masks: Sequence[str], height: int, width: int,
                            ids: Iterable[int] | None = None) -> CellMasks:
    """:class:`CellMasks` of submission mask strings (ids default to 1..n)."""
    rles = [mask_string_to_rle(m, height, width) for m in masks]
    ids_arr = np.arange(1, len(rles) + 1) if ids is None else np.asarray(list(ids), dtype=np.int64)
    return CellMasks(ids=ids_arr, height=int(height), width=int(width), rles=rles)


def label_overlap(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise pixel overlap of two same-shape label maps by one ``bincount``.

    ``bincount(a * (max_b + 1) + b)`` counts every (a label, b label) pair at once (labels are
    first mapped to compact indices when their range is large). ``weights`` (same size as the
    maps, optional) counts each pixel that many times. Returns ``(intersection [na x nb], a_ids,
    b_ids, a_areas, b_areas)`` over the non-zero labels present.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise SubmissionError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    fa = a.ravel()
    fb = b.ravel()
    w = None if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if fa.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros((0, 0)), empty, empty, empty, empty
    ma, mb = int(fa.max()), int(fb.max())
    if int(fa.min()) < 0 or int(fb.min()) < 0:
        raise SubmissionError("label maps must not hold negative labels")
    a_vals = b_vals = None
    if (ma + 1) * (mb + 1) > max(4 * fa.size, 1 << 16):   # sparse huge ids: compact them first
        a_vals, fa = np.unique(fa, return_inverse=True)
        b_vals, fb = np.unique(fb, return_inverse=True)
        ma, mb = a_vals.size - 1, b_vals.size - 1
    nb = mb + 1
    joint = np.bincount(fa.astype(np.int64) * nb + fb, weights=w, minlength=(ma + 1) * nb).reshape(ma + 1, nb)
    if w is not None:
        joint = np.rint(joint).astype(np.int64)
    area_a, area_b = joint.sum(axis=1), joint.sum(axis=0)
    ia = np.flatnonzero(area_a)
    ib = np.flatnonzero(area_b)
    a_ids = ia if a_vals is None else a_vals[ia]
    b_ids = ib if b_vals is None else b_vals[ib]
    keep_a, keep_b = a_ids != 0, b_ids != 0
    ia, ib = ia[keep_a], ib[keep_b]
    return joint[np.ix_(ia, ib)], a_ids[keep_a], b_ids[keep_b], area_a[ia], area_b[ib]


def _refined_grid(src_a: int, src_b: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of consecutive destination indices that both nearest-neighbour mappings send to the same sources.

    Returns the source index in ``a``, in ``b`` and the length of every run: two maps upscaled
    to ``dst`` are constant on each run, so the overlap at full size is an overlap on the runs
    weighted by their lengths (at most ``src_a + src_b`` runs).
    """
    ia, ib = nearest_index(src_a, dst), nearest_index(src_b, dst)
    start = np.ones(dst, dtype=bool)
    start[1:] = (ia[1:] != ia[:-1]) | (ib[1:] != ib[:-1])
    starts = np.flatnonzero(start)
    return ia[starts], ib[starts], np.diff(np.append(starts, dst))


def full_size_overlap(a: np.ndarray, b: np.ndarray, height: int, width: int,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`label_overlap` of two label maps (any working scales) as upscaled to ``height x width``.

    Exact for :func:`upscale_labels`, without building the full-size maps: both are sampled on
    the common refinement of their row and column mappings and each sample is weighted by the
    number of full-size pixels it stands for.
    """
    a, b = np.asarray(a), np.asarray(b)
    ra, rb, rw = _refined_grid(a.shape[0], b.shape[0], int(height))
    ca, cb, cw = _refined_grid(a.shape[1], b.shape[1], int(width))
    if rw.size == height and cw.size == width:   # one map is at full size: plain overlap
        return label_overlap(upscale_labels(a, height, width), upscale_labels(b, height, width))
    return label_overlap(a[np.ix_(ra, ca)], b[np.ix_(rb, cb)], weights=np.outer(rw, cw))


def refined_grid_size(a_shape: tuple[int, int], b_shape: tuple[int, int], height: int, width: int) -> int:
    """Number of samples :func:`full_size_overlap` works on for maps of these shapes."""
    rows = _refined_grid(a_shape[0], b_shape[0], int(height))[2].size
    cols = _refined_grid(a_shape[1], b_shape[1], int(width))[2].size
    return rows * cols


def _positions(present: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of each ``wanted`` id in the sorted ``present`` ids, -1 where absent."""
    if present.size == 0:
        return np.full(wanted.size, -1, dtype=np.int64)
    pos = np.clip(np.searchsorted(present, wanted), 0, present.size - 1)
    return np.where(present[pos] == wanted, pos, -1)


def pairwise_iou(a: CellMasks, b: CellMasks) -> np.ndarray:
    """Mask IoU of every cell of ``a`` (rows, order of ``a.ids``) with every cell of ``b`` (columns).

    Two working-scale label maps: one weighted bincount (:func:`full_size_overlap`), exact at the
    original size. When either side is a set of RLEs, or a label map is (near) full size so the
    bincount would touch more than ``max(H * W / 4, BINCOUNT_MAX_SAMPLES)`` pixels, both sides
    go to RLEs (one-pass encoding) and
    ``pycocotools.mask.iou`` (run-length arithmetic; measured 35 ms vs 110 ms for a 2048 px truth
    map against a 512 px prediction). Both paths give identical IoUs. Empty cells get IoU 0.
    """
    if (a.height, a.width) != (b.height, b.width):
        raise SubmissionError(f"cell masks of different image sizes: {a.height}x{a.width} vs {b.height}x{b.width}")
    if a.ids.size == 0 or b.ids.size == 0:
        return np.zeros((a.ids.size, b.ids.size), dtype=np.float64)
    both_maps = a.labels is not None and b.labels is not None
    if both_maps and refined_grid_size(a.labels.shape, b.labels.shape, a.height, a.width) <= max(
            a.height * a.width // 4, BINCOUNT_MAX_SAMPLES):
        full, a_ids, b_ids, a_area, b_area = full_size_overlap(a.labels, b.labels, a.height, a.width)
        ra, rb = _positions(a_ids, a.ids), _positions(b_ids, b.ids)
        va, vb = ra >= 0, rb >= 0
        inter = np.zeros((a.ids.size, b.ids.size), dtype=np.float64)
        inter[np.ix_(va, vb)] = full[np.ix_(ra[va], rb[vb])]
        area_a = np.zeros(a.ids.size)
        area_b = np.zeros(b.ids.size)
        area_a[va] = a_area[ra[va]]
        area_b[vb] = b_area[rb[vb]]
        union = area_a[:, None] + area_b[None, :] - inter
        return np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)
    iou = mask_utils.iou(a.to_rles(), b.to_rles(), [0] * b.ids.size)
    return np.asarray(iou, dtype=np.float64).reshape(a.ids.size, b.ids.size)


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


def average_duplicate_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """Average the probabilities of duplicate ``(image_id, cell_id)`` rows (e.g. one row per fold model).

    Other columns come from the first of the duplicates; a warning states how many rows merged.
    """
    keys = ["image_id", "cell_id"]
    dup = cells.duplicated(keys)
    if not dup.any():
        return cells
    logger.warning("%d duplicate (image_id, cell_id) rows averaged into their first row", int(dup.sum()))
    probs = cells.groupby(keys, sort=False)[PROB_COLUMNS].mean()
    rest = cells.drop(columns=PROB_COLUMNS).drop_duplicates(keys).set_index(keys)
    return rest.join(probs).reset_index()


def read_cell_table(path: Path | str) -> pd.DataFrame:
    """Read a per-cell table (parquet, or CSV with the same columns) and check its key columns.

    A relative ``mask_path`` that does not exist from the working directory but does from the
    table's folder is rewritten to that path. Duplicate cells are averaged
    (:func:`average_duplicate_cells`).
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: per-cell table not found")
    try:
        df = pd.read_csv(path, dtype={"image_id": str}) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as exc:
        raise SubmissionError(f"{path}: cannot read ({exc})") from exc
    missing = [c for c in ("image_id", "cell_id", *PROB_COLUMNS) if c not in df.columns]
    if missing:
        raise SubmissionError(f"{path}: not a per-cell table, missing column(s) {', '.join(missing[:5])}")
    if df[PROB_COLUMNS].isna().any().any():
        raise SubmissionError(f"{path}: NaN probabilities")
    if "mask_path" in df.columns:
        def fix(p: object) -> object:
            if not isinstance(p, str) or not p or Path(p).is_absolute() or Path(p).exists():
                return p
            alt = path.parent / p
            return str(alt) if alt.exists() else p
        df["mask_path"] = df["mask_path"].map(fix)
    df["image_id"] = df["image_id"].astype(str)
    df["cell_id"] = df["cell_id"].astype(np.int64)
    return average_duplicate_cells(df)


def rows_mask_source(rows: pd.DataFrame, height: int, width: int) -> list[str] | LabelMaps:
    """Where one image's per-cell rows take their masks from, checked.

    Returns the rows' mask strings (in row order) when a ``mask`` column is filled for every row,
    else the label maps of the single ``mask_path`` they share (its original size must be
    ``height x width``). Raises :class:`SubmissionError` naming the image or file otherwise.
    """
    image_id = rows["image_id"].iloc[0]
    if "mask" in rows.columns and rows["mask"].map(lambda m: isinstance(m, str) and m != "").all():
        return rows["mask"].tolist()
    if "mask_path" not in rows.columns:
        raise SubmissionError(f"image {image_id}: per-cell rows have neither mask_path nor mask strings")
    paths = rows["mask_path"].dropna().unique()
    if len(paths) != 1:
        raise SubmissionError(f"image {image_id}: rows point to {len(paths)} label-map files "
                              f"({', '.join(map(str, paths[:3]))}); one segmentation per image expected")
    maps = load_label_maps(paths[0])
    if (maps.orig_height, maps.orig_width) != (height, width):
        raise SubmissionError(f"{paths[0]}: label map says original size {maps.orig_height}x{maps.orig_width}, "
                              f"expected {height}x{width} for {image_id}")
    return maps


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
    from wsss.data.io import atomic_write_bytes  # noqa: PLC0415

    path = Path(path)
    missing = [c for c in SUBMISSION_COLUMNS if c not in submission.columns]
    if missing:
        raise SubmissionError(f"submission table lacks column(s) {', '.join(missing)}")
    atomic_write_bytes(path, submission[SUBMISSION_COLUMNS].to_csv(index=False).encode("utf-8"))
    return path


__all__: Sequence[str] = [
    "SUBMISSION_COLUMNS", "PREDICTION_COLUMNS", "SubmissionError", "LabelMaps", "load_label_maps",
    "rows_mask_source",
    "upscale_labels", "nearest_index", "rle_counts_to_string", "encode_binary_mask", "mask_string_to_rle",
    "decode_binary_mask", "coco_string_to_counts", "label_map_counts", "label_map_rles", "encode_label_map",
    "naive_encode_label_map", "CellMasks", "cell_masks_from_label_map", "cell_masks_from_strings", "label_overlap",
    "full_size_overlap", "pairwise_iou",
    "format_confidence", "format_prediction_string", "parse_prediction_string", "Submission", "read_submission",
    "read_image_sizes", "average_duplicate_cells", "read_cell_table", "build_submission", "write_submission",
]
