"""Nuclei from the blue (DAPI) channel: smoothing, a robust threshold, watershed splitting.

Steps (sizes from :class:`hpa_seg.params.SegParams`, converted to the image's scale):

1. Gaussian smoothing; threshold at a fraction of the Otsu level (never below a floor), hole
   filling, removal of specks.
2. Touching nuclei: every local maximum of the distance transform seeds a basin of a watershed
   of the inverted distance; neighbouring basins are merged back unless the saddle between
   them lies at least ``nuc_split_h`` below the lower peak (h-maxima criterion) and the neck
   joining them is narrower than ``nuc_split_ratio`` times that peak. So touching round
   nuclei are split at their constriction while lobed nuclei stay whole.
3. Nuclei smaller than ``nuc_min_area`` are removed; ids are renumbered ``1..n``.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
from skimage.segmentation import watershed

from hpa_seg.params import SegParams, scale_factor
from hpa_seg.postprocess import fill_holes, remove_small_labels, remove_small_objects
from wsss.masks import relabel_sequential

logger = logging.getLogger(__name__)


def smooth(channel: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a 2-D channel as ``float32`` (no-op for ``sigma < 0.3``)."""
    img = np.asarray(channel, dtype=np.float32)
    if sigma < 0.3:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT)


def otsu_level(img: np.ndarray) -> float:
    """Otsu threshold of a ``0..255`` float image (computed on its ``uint8`` histogram)."""
    u8 = np.clip(img, 0, 255).astype(np.uint8)
    level, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(level)


def disk(radius: float) -> np.ndarray:
    """Elliptic structuring element of the given radius (at least 3x3)."""
    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def nucleus_foreground(blue: np.ndarray, params: SegParams, factor: float) -> np.ndarray:
    """Binary nucleus foreground of a blue channel (``0..255``) at linear scale ``factor``.

    Smoothing, threshold at ``nuc_threshold_scale`` x Otsu (at least ``nuc_min_level``), or the
    adaptive rule of :func:`adaptive_foreground` when ``nuc_local_fraction > 0``; hole filling,
    removal of specks below half the minimum nucleus area.
    """
    sm = smooth(blue, params.nuc_sigma * factor)
    if params.nuc_local_fraction > 0:
        mask = adaptive_foreground(sm, params.nuc_local_fraction, params.nuc_local_radius * factor, params.nuc_min_level)
    else:
        level = max(params.nuc_min_level, params.nuc_threshold_scale * otsu_level(sm))
        mask = sm > level
    if not mask.any():
        return mask
    mask = fill_holes(mask)
    return remove_small_objects(mask, 0.5 * params.nuc_min_area * factor**2)


def adaptive_foreground(sm: np.ndarray, fraction: float, radius: float, min_level: float) -> np.ndarray:
    """Foreground where the background-corrected signal exceeds ``fraction`` of its local peak.

    Background: a grey opening with a disk of ``2 x radius`` (wider than any nucleus); local peak:
    the maximum of the corrected signal within ``radius``. Pixels must also rise above the
    background by ``min_level`` and by a quarter of the corrected signal's Otsu level (so residues
    of the background estimate, e.g. at the corners of a bright patch, stay background).
    """
    background = cv2.morphologyEx(sm, cv2.MORPH_OPEN, disk(2.0 * radius))
    signal = sm - background
    peak = cv2.dilate(signal, disk(radius))
    floor = max(float(min_level), 0.25 * otsu_level(signal))
    return (signal > fraction * peak) & (signal > floor)


def split_touching(mask: np.ndarray, split_h: float, neck_ratio: float) -> np.ndarray:
    """Split a binary mask into instances by a distance-transform watershed.

    Every local maximum of the distance transform seeds a basin; neighbouring basins are then
    merged (see :func:`merge_basins`) unless they are separated by a saddle at least ``split_h``
    px below the lower peak *and* by a neck narrower than ``neck_ratio`` times that peak.
    Returns ``int32`` labels ``1..n``.
    """
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    seeds = local_maxima_seeds(dist)
    labels = watershed(-dist, seeds, mask=mask)
    labels = merge_basins(labels, dist, split_h, neck_ratio)
    labels = relabel_sequential(labels)
    return labels


def local_maxima_seeds(dist: np.ndarray) -> np.ndarray:
    """Label the local maxima (3 x 3 neighbourhood, plateaus included) of a distance map.

    Connected maxima pixels (8-connectivity) form one seed.
    """
    peaks = (dist >= cv2.dilate(dist, np.ones((3, 3), np.uint8))) & (dist > 0)
    _, seeds = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return seeds


def _boundary_pairs(labels: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of 4-adjacent different non-zero labels with the smaller ``values`` of the two pixels."""
    a_parts: list[np.ndarray] = []
    b_parts: list[np.ndarray] = []
    v_parts: list[np.ndarray] = []
    for sl_a, sl_b in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                       ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
        la, lb = labels[sl_a], labels[sl_b]
        edge = (la != lb) & (la > 0) & (lb > 0)
        if not edge.any():
            continue
        a_parts.append(la[edge])
        b_parts.append(lb[edge])
        v_parts.append(np.minimum(values[sl_a][edge], values[sl_b][edge]))
    if not a_parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    a = np.concatenate(a_parts).astype(np.int64)
    b = np.concatenate(b_parts).astype(np.int64)
    v = np.concatenate(v_parts)
    return np.minimum(a, b), np.maximum(a, b), v


def merge_basins(labels: np.ndarray, dist: np.ndarray, split_h: float, neck_ratio: float) -> np.ndarray:
    """Merge neighbouring watershed basins of a distance map that do not form separate objects.

    For each pair of touching basins the *neck* is the highest distance value on their shared
    boundary (half the width of the connection). Pairs are visited from the widest neck down, on
    the current merged components, whose *peak* is their highest distance value. Two components
    merge when ``neck > min(peaks) - split_h`` (the saddle is shallow: an h-maxima criterion) or
    ``neck > neck_ratio * min(peaks)`` (the connection is wide compared with the smaller
    object: a lobe, not a second nucleus). Ids are not renumbered.
    """
    n = int(labels.max())
    if n < 2:
        return labels
    a, b, v = _boundary_pairs(labels, dist)
    if a.size == 0:
        return labels
    key = a * (n + 1) + b
    order = np.argsort(key, kind="stable")
    key, v = key[order], v[order]
    uniq, start = np.unique(key, return_index=True)
    necks = np.maximum.reduceat(v, start)
    pa, pb = uniq // (n + 1), uniq % (n + 1)
    peak = np.zeros(n + 1, dtype=np.float32)  # same dtype as dist: keeps ufunc.at on its fast path
    np.maximum.at(peak, labels.reshape(-1).astype(np.intp), dist.reshape(-1).astype(np.float32))
    peak = peak.astype(np.float64)
    parent = np.arange(n + 1)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    merged = False
    for k in np.argsort(-necks, kind="stable"):
        ra, rb = find(int(pa[k])), find(int(pb[k]))
        if ra == rb:
            continue
        low = min(peak[ra], peak[rb])
        neck = float(necks[k])
        if neck > low - split_h or neck > neck_ratio * low:
            root, other = min(ra, rb), max(ra, rb)
            parent[other] = root
            peak[root] = max(peak[ra], peak[rb])
            merged = True
    if not merged:
        return labels
    roots = np.array([find(i) for i in range(n + 1)])
    return roots[labels]


def segment_nuclei(blue: np.ndarray, params: SegParams | None = None, factor: float | None = None) -> np.ndarray:
    """Nucleus instance labels (``int32``, ``1..n``) of a 2-D blue channel in ``0..255``.

    ``factor`` is the linear scale of the image relative to the 2048 px reference field of view
    (computed from the shape when ``None``).
    """
    params = params or SegParams()
    factor = scale_factor(blue.shape) if factor is None else factor
    mask = nucleus_foreground(blue, params, factor)
    labels = split_touching(mask, params.nuc_split_h * factor, params.nuc_split_ratio)
    labels = remove_small_labels(labels, params.nuc_min_area * factor**2)
    labels = relabel_sequential(labels)
    return labels
