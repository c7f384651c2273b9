"""Label-map arithmetic: the one nearest-neighbour resize rule, renumbering and border flags.

A label map is a 2-D integer array, 0 = background, one id per cell (or nucleus).

The resize rule. Every resize of a label map in hpa-wsss (segmentation at the working scale,
precomputed masks for ``wsss-segment --masks`` and ``wsss-infer --masks``, submission encoding,
IoU matching, pictures) is :func:`resize_labels`: ``cv2.INTER_NEAREST`` semantics, output pixel
``(y, x)`` takes input pixel ``(floor(y / (H / h)), floor(x / (W / w)))`` (top-left aligned, *not*
``INTER_NEAREST_EXACT``'s centre alignment). :func:`nearest_index` is that mapping along one
axis; because rows and columns map independently, resizing the transpose equals transposing
the resized map.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

logger = logging.getLogger(__name__)

#: Label-map dtypes cv2.resize handles itself; others go through :func:`nearest_index`.
CV2_LABEL_DTYPES: tuple[type, ...] = (np.uint8, np.uint16, np.int16, np.int32, np.float32)


class MaskError(ValueError):
    """A label map, mask file or mask string that cannot be used (the message names it)."""


def nearest_index(src: int, dst: int) -> np.ndarray:
    """Source index of every destination index of a nearest-neighbour resize from ``src`` to ``dst``.

    The project's one rule for label maps (``cv2.INTER_NEAREST`` semantics, as OpenCV computes it:
    ``min(floor(i * (1 / (dst / src))), src - 1)`` in double precision). For integer upscaling
    factors (512 -> 2048 or 3072) every working pixel becomes an exact block.
    """
    idx = np.floor(np.arange(dst) * (1.0 / (dst / src))).astype(np.int64)
    return np.minimum(idx, src - 1)


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D label map to ``height x width`` by nearest neighbour (see :func:`nearest_index`).

    Returns the input itself when it already has that size; keeps the dtype. A map that is not
    2-D raises :class:`MaskError`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise MaskError(f"label map must be 2-D, got shape {labels.shape}")
    h, w = labels.shape
    if (h, w) == (int(height), int(width)):
        return labels
    if labels.dtype in CV2_LABEL_DTYPES:
        return cv2.resize(labels, (int(width), int(height)), interpolation=cv2.INTER_NEAREST)
    return labels[nearest_index(h, int(height))[:, None], nearest_index(w, int(width))[None, :]]


def working_shape(height: int, width: int, working_size: int | None) -> tuple[int, int]:
    """Shape with the longer side shrunk to ``working_size`` (never enlarged; ``None`` keeps it)."""
    longest = max(height, width)
    if not working_size or longest <= working_size:
        return height, width
    scale = working_size / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def label_areas(labels: np.ndarray) -> np.ndarray:
    """Pixel count of every label value ``0..max`` (index = label)."""
    flat = np.asarray(labels).reshape(-1)
    if flat.size == 0:
        return np.zeros(1, dtype=np.int64)
    return np.bincount(flat.astype(np.int64, copy=False))


def apply_lut(labels: np.ndarray, lut: np.ndarray, dtype: type = np.int32) -> np.ndarray:
    """Map every label value through ``lut`` (``lut[old] = new``) and return ``dtype``."""
    return lut.astype(dtype, copy=False)[labels]


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber the non-zero ids to ``1..n`` (``int32``), keeping their order."""
    labels = np.asarray(labels)
    top = int(labels.max(initial=0))
    if top > max(4 * labels.size, 1 << 16):  # sparse huge ids: avoid a giant lookup table
        ids = np.unique(labels)
        ids = ids[ids != 0]
        return np.searchsorted(np.concatenate(([0], ids)), labels).astype(np.int32)
    present = label_areas(labels) > 0
    present[0] = False
    lut = np.zeros(len(present), dtype=np.int64)
    lut[present] = np.arange(1, int(present.sum()) + 1)
    return apply_lut(labels, lut)


def border_flags(cells: np.ndarray) -> np.ndarray:
    """Boolean array indexed by cell id: True when the cell touches the image border.

    Its length is ``max_id + 1`` (index 0, the background, is always False).
    """
    cells = np.asarray(cells)
    n = int(cells.max()) + 1 if cells.size else 1
    flags = np.zeros(n, dtype=bool)
    if cells.size == 0:
        return flags
    edge = np.concatenate([cells[0, :], cells[-1, :], cells[:, 0], cells[:, -1]])
    flags[np.unique(edge)] = True
    flags[0] = False
    return flags


def align_nuclei_ids(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Give each nucleus the id of the cell holding most of its pixels (pixels outside it cleared).

    Used for precomputed masks whose nucleus ids need not follow the cell ids.
    """
    cells = np.asarray(cells).astype(np.int64, copy=False)
    nuclei = np.asarray(nuclei).astype(np.int64, copy=False)
    if not nuclei.any() or not cells.any():
        return np.zeros_like(cells)
    both = (nuclei > 0) & (cells > 0)
    nmax = int(nuclei.max()) + 1
    cmax = int(cells.max()) + 1
    pair = np.bincount(nuclei[both] * cmax + cells[both], minlength=nmax * cmax).reshape(nmax, cmax)
    best = pair.argmax(axis=1)
    best[pair.max(axis=1) == 0] = 0
    mapped = best[nuclei]
    return np.where(mapped == cells, mapped, 0)


def check_aspect(mask_hw: tuple[int, int], image_hw: tuple[int, int], name: str = "mask") -> None:
    """Refuse a mask whose aspect ratio differs from its image's by more than the rounding of sizes.

    Sizes rounded to whole pixels (a working scale, a shrunk cache) change the ratio by at most
    about one pixel on the shorter side; anything more would stretch the cells, so it raises
    :class:`MaskError` naming ``name`` and both sizes (height x width).
    """
    mh, mw = int(mask_hw[0]), int(mask_hw[1])
    ih, iw = int(image_hw[0]), int(image_hw[1])
    if min(mh, mw, ih, iw) <= 0:
        raise MaskError(f"{name}: empty mask {mh}x{mw} or image {ih}x{iw}")
    mismatch = abs(mh * iw - ih * mw) / (ih * mw)  # relative difference of the height/width ratios
    if mismatch > 1.0 / min(mh, mw, ih, iw) + 0.01:
        raise MaskError(f"{name}: mask is {mh}x{mw} but its image is {ih}x{iw} (height x width): the aspect "
                        "ratios differ, the mask would be stretched")


def fit_label_maps(cells: np.ndarray, nuclei: np.ndarray | None, shape: tuple[int, int],
                   image_hw: tuple[int, int] | None = None, name: str = "mask",
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Bring precomputed label maps made elsewhere to the working ``shape`` (the one rule for them).

    The cell map must have the aspect ratio of its image (``image_hw``, default ``shape``;
    :func:`check_aspect`, ``name`` names the file in the error). Cells are renumbered ``1..n``
    (compact ids, so the resize can work on ``int32``), resized by :func:`resize_labels` and
    renumbered again (cells lost by the resize disappear); nuclei likewise and then given the id
    of their cell (:func:`align_nuclei_ids`). Returns ``uint16`` ``(cells, nuclei or None)``; more
    cells than ``uint16`` holds raise :class:`MaskError`.
    """
    height, width = int(shape[0]), int(shape[1])
    check_aspect(np.shape(cells)[:2], image_hw or (height, width), name)
    fitted = relabel_sequential(resize_labels(relabel_sequential(np.asarray(cells)), height, width))
    if fitted.max(initial=0) > np.iinfo(np.uint16).max:
        raise MaskError(f"{int(fitted.max())} cells do not fit a uint16 label map")
    nuc = None
    if nuclei is not None:
        nuc = resize_labels(relabel_sequential(np.asarray(nuclei)), height, width)
        nuc = align_nuclei_ids(fitted, nuc).astype(np.uint16)
    return fitted.astype(np.uint16), nuc
