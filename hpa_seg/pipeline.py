"""Whole weight-free segmentation of an RGBY image: nuclei, then cells seeded by them."""

from __future__ import annotations

import logging
import os

import numpy as np

from hpa_seg.cells import segment_cells
from hpa_seg.nuclei import segment_nuclei
from hpa_seg.params import SegParams, scale_factor
from hpa_seg.postprocess import apply_border_policy, make_consistent

logger = logging.getLogger(__name__)


class SegmentationError(ValueError):
    """Input that cannot be segmented (wrong shape or type)."""


def to_working_scale(rgby: np.ndarray, size: int | None) -> np.ndarray:
    """Validate an RGBY image (uint8 or uint16, H x W x 4) and resize it to ``size x size``.

    ``uint16`` input is mapped to 8 bits over its full range; ``size=None`` keeps the
    original resolution.
    """
    from wsss.data.io import resize_rgby, to_uint8

    arr = np.asarray(rgby)
    if arr.ndim != 3 or arr.shape[2] != 4 or min(arr.shape[:2]) == 0:
        raise SegmentationError(f"expected an H x W x 4 RGBY image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype != np.uint16 and not np.issubdtype(arr.dtype, np.floating):
            raise SegmentationError(f"expected uint8, uint16 or float pixels, got {arr.dtype}")
        arr = to_uint8(arr)
    if size is not None:
        if int(size) < 16:
            raise SegmentationError(f"working size must be at least 16 px, got {size}")
        arr = resize_rgby(arr, int(size))
    return np.ascontiguousarray(arr)


def resolve_factor(blue: np.ndarray, params: SegParams, diameter: float | str | None) -> float:
    """The linear scale of the parameters for an image: from its size (``diameter=None``), from an
    expected cell ``diameter`` in px at the working scale, or ``"auto"``: estimated from the nuclei
    found at the size-based scale (median nucleus diameter / the reference nucleus diameter)."""
    from hpa_seg.params import diameter_factor, nucleus_factor
    from wsss.masks import label_areas

    if diameter is None:
        return scale_factor(blue.shape)
    if diameter == "auto":
        first = segment_nuclei(blue, params, scale_factor(blue.shape))
        estimated = nucleus_factor(label_areas(first)[1:])
        return scale_factor(blue.shape) if estimated is None else estimated
    return diameter_factor(float(diameter))


def segment(rgby: np.ndarray, size: int | None = 512, params: SegParams | None = None,
            border: str = "keep", diameter: float | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Segment an RGBY image into ``(cells, nuclei)`` ``uint16`` label maps at the working scale.

    Args:
        rgby: ``H x W x 4`` image (red, green, blue, yellow), ``uint8`` or ``uint16``.
        size: working side in px (the image is resized to ``size x size``); ``None`` = full
            resolution. Size thresholds follow the scale (see :mod:`hpa_seg.params`).
        params: segmentation parameters (defaults when ``None``).
        border: ``"keep"`` or ``"drop"`` (remove cells touching the image border with their nuclei).
        diameter: ``None`` (sizes follow the image side), the expected cell diameter in px at the
            working scale (cellpose's convention), or ``"auto"`` (estimated from the nuclei).

    Returns:
        ``(cells, nuclei)``: background 0, ids ``1..n``, nucleus ``i`` inside cell ``i``, every
        cell holding a nucleus. An image without nuclei gives two all-zero maps.
    """
    params = params or SegParams()
    img = to_working_scale(rgby, size)
    red, blue, yellow = img[:, :, 0], img[:, :, 2], img[:, :, 3]
    factor = resolve_factor(blue, params, diameter)
    nuclei = segment_nuclei(blue, params, factor)
    cells = segment_cells(red, yellow, nuclei, params, factor)
    cells, nuclei = make_consistent(cells, nuclei)
    return apply_border_policy(cells, nuclei, border)


def segment_with_masks(rgby: np.ndarray, mask_dir: str | os.PathLike[str], image_id: str, size: int | None = 512,
                       params: SegParams | None = None, border: str = "keep",
                       orig_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`segment`, but the cells (and nuclei, if present) come from precomputed masks.

    The masks of ``image_id`` in ``mask_dir`` (see :mod:`hpa_seg.masks`) are resized to the
    working scale by nearest neighbour; missing nuclei are taken from the blue channel. A mask
    whose aspect ratio differs from the image's original size ``orig_hw`` (default: ``rgby``'s
    size; a prepared cache is square) is refused.
    """
    from hpa_seg.masks import load_precomputed

    img = to_working_scale(rgby, size)
    cells, nuclei = load_precomputed(mask_dir, image_id, img.shape[:2], blue=img[:, :, 2], params=params,
                                     image_hw=orig_hw)
    return apply_border_policy(cells, nuclei, border)


def segment_with_model(rgby: np.ndarray, model: object, cfg: dict, size: int | None = 512, params: SegParams | None = None,
                       border: str = "keep", tta: bool = True, markers: str = "nuclei") -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`segment`, but the cells come from a trained watershed model (``wsss-seg-train``).

    ``model``/``cfg`` as returned by :func:`wsss.watershed.predict.load_watershed`. The nuclei are
    the classical ones (blue channel); ``markers="nuclei"`` (default, measured better in
    docs/watershed.md) also seeds the watershed with them (``"cores"``: the model's own high-energy cores). Each cell's nuclear pixels carry its id and
    cells without a nucleus are dropped, so the maps keep the ``(cells, nuclei)`` contract.
    """
    from hpa_seg.postprocess import assign_nuclei_to_cells
    from wsss.watershed.predict import segment_image

    params = params or SegParams()
    img = to_working_scale(rgby, size)
    nuclei = segment_nuclei(img[:, :, 2], params, scale_factor(img.shape))
    seeds = nuclei if markers == "nuclei" else None
    cells, _ = segment_image(model, cfg, img, None, tta=tta, markers=seeds)
    cells, nuclei = make_consistent(cells, assign_nuclei_to_cells(cells, nuclei > 0))
    return apply_border_policy(cells, nuclei, border)
