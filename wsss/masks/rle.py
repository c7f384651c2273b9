"""The COCO RLE codec of the HPA single-cell submission masks.

A submission ``mask`` encodes one cell's boolean mask *at the image's original size* exactly as
the competition did:

1. the mask in Fortran (column-major) order, encoded by ``pycocotools.mask.encode``;
2. the ``counts`` bytes of that COCO RLE (pycocotools' compressed string form);
3. ``zlib.compress(counts, zlib.Z_BEST_COMPRESSION)`` (level 9);
4. base64, as ASCII text.

:func:`encode_binary_mask` is that recipe written out for one mask (the reference).
:func:`encode_label_map` produces byte-identical strings for *every* cell of a label map in one
pass: it transposes the (small, working-scale) label map once, upscales the transpose with
:func:`wsss.masks.labels.resize_labels`, finds all column-major runs of every label with one
vectorised comparison and builds each cell's COCO run-length counts from them, never
materialising a per-cell full-size mask (upscaling the transpose equals transposing the upscaled
map, see :mod:`wsss.masks.labels`).
"""

from __future__ import annotations

import base64
import logging
import warnings
import zlib
from collections.abc import Iterable, Mapping

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from wsss.masks.labels import CV2_LABEL_DTYPES, MaskError, resize_labels

logger = logging.getLogger(__name__)


def _transposed_at(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """The transpose (``width x height``, C-contiguous) of ``labels`` upscaled to ``height x width``.

    Transposes first (cheap at working scale), then resizes: equal to transposing the upscaled
    map because nearest-neighbour row and column mappings are independent.
    """
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        labels = labels.view(np.uint8)
    if labels.dtype in CV2_LABEL_DTYPES:
        transposed = cv2.transpose(labels)
    else:
        transposed = np.ascontiguousarray(labels.T)
    return np.ascontiguousarray(resize_labels(transposed, width, height))


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
        raise MaskError(f"mask must be 2-D (H x W), got shape {mask.shape}")
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
        raise MaskError("COCO counts string holds characters outside the RLE alphabet")
    last = (chars & 0x20) == 0
    if not last[-1]:
        raise MaskError("COCO counts string ends inside a number")
    group = np.concatenate(([0], np.cumsum(last)[:-1]))
    group_start = np.concatenate(([0], np.flatnonzero(last)[:-1] + 1))
    position = np.arange(chars.size) - group_start[group]
    if position.max() > 12:
        raise MaskError("COCO counts string holds a number too long to be a run length")
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
    Raises :class:`MaskError` when the string is not base64/zlib/COCO counts or its run
    lengths do not add up to ``height * width`` (pycocotools would read past its buffers).
    """
    try:
        counts = zlib.decompress(base64.b64decode(encoded.encode("ascii"), validate=True))
    except (ValueError, zlib.error, UnicodeEncodeError) as exc:
        raise MaskError(f"invalid mask string {encoded[:24]!r}...: {exc}") from exc
    runs = coco_string_to_counts(counts)
    if runs.size == 0 or runs.min() < 0 or int(runs.sum()) != int(height) * int(width):
        raise MaskError(f"mask string {encoded[:24]!r}... does not describe a {height}x{width} mask "
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
    to ``encode_binary_mask(resize_labels(labels, *out_hw) == cid)`` for every cell id.
    """
    rles = label_map_rles(labels, ids=ids, out_hw=out_hw)
    return {cid: rle_counts_to_string(rle) for cid, rle in rles.items()}


def naive_encode_label_map(labels: np.ndarray, ids: Iterable[int] | None = None,
                           out_hw: tuple[int, int] | None = None) -> dict[int, str]:
    """Reference: upscale once, then :func:`encode_binary_mask` of each cell's full-size mask separately."""
    full = resize_labels(labels, *out_hw) if out_hw is not None else np.asarray(labels)
    if ids is None:
        ids = [int(v) for v in np.unique(full) if v != 0]
    return {int(cid): encode_binary_mask(full == cid) for cid in ids}
