"""Cell crops: a square box around every cell, cut out and resized in one batched call.

The one crop implementation of the project: stage-2 inference (:mod:`wsss.infer.runner`, on the
normalised image: :func:`extract_crops`) and the cell classifier (:mod:`wsss.data.cells`, training
and ``wsss-infer --stage cell``, on the raw uint8 image: :func:`raw_crops`) both cut their crops here.

Boxes. A cell's box ``x0, y0, x1, y1`` (half-open, label-map pixels; see
:class:`wsss.masks.CellIndex`) is mapped to the image the crops are cut from (which may
be larger than the label map: the full-resolution original) by the ratio of the two sizes, then
made square around its centre with side ``max(width, height) * (1 + 2 * margin)`` (``margin``
is a fraction of the longer side added on every side), never smaller than ``min_side`` image
pixels. The square may reach past the image edge.

Pixels. The square is resampled to ``size x size`` by bilinear sampling at the crop pixels'
centres (:func:`torch.nn.functional.grid_sample`, ``align_corners=False``) of the *normalised*
image, all cells of an image in one call. With ``antialias`` (default) an image whose median
square box is more than ``size / 0.75`` px wide (full-resolution originals) is first shrunk once,
with an antialiased resize, by ``size / median side``, so most cells are sampled near 1:1 instead
of skipping pixels. Pixels outside the image, and, with ``blank``, pixels outside the cell, are
set to a fill value:

* ``blank: raw`` (default): raw zero, i.e. a black pixel, ``(0 - mean) / std`` after
  normalisation. Fluorescence backgrounds are dark, so a blanked neighbour looks like empty
  background, which is what the model saw around cells in training;
* ``blank: normalized``: zero after normalisation, i.e. the dataset's mean intensity (also used
  outside the image);
* ``blank: none``: the neighbours stay visible; only outside-image pixels get raw zero.

Cell membership of a crop pixel is the label-map value at the pixel's centre (nearest neighbour),
so the blanking follows the label map's own resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss.masks import CellIndex

logger = logging.getLogger(__name__)

BLANK_MODES: tuple[str, ...] = ("raw", "normalized", "none")


class CropError(ValueError):
    """Crop parameters that cannot be used."""


@dataclass(frozen=True)
class CropParams:
    """Stage-2 crop parameters (see the module doc)."""

    size: int = 128
    margin: float = 0.1
    min_side: float = 8.0
    blank: str = "raw"
    antialias: bool = True

    def __post_init__(self) -> None:
        if int(self.size) < 1:
            raise CropError(f"stage2.size must be a positive number of pixels, got {self.size}")
        if float(self.margin) < 0:
            raise CropError(f"stage2.margin must be >= 0, got {self.margin}")
        if self.blank not in BLANK_MODES:
            raise CropError(f"stage2.blank must be one of {', '.join(BLANK_MODES)}, got {self.blank!r}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> CropParams:
        """Build from a config section, ignoring keys that are not crop parameters."""
        cfg = cfg or {}
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})


def square_boxes(boxes: np.ndarray, label_hw: tuple[int, int], image_hw: tuple[int, int],
                 margin: float = 0.1, min_side: float = 8.0) -> np.ndarray:
    """Square crop boxes (``K x 4`` float ``x0, y0, x1, y1`` in image pixel-edge coordinates).

    ``boxes`` are half-open label-map boxes; ``label_hw`` and ``image_hw`` the two sizes.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sy = image_hw[0] / label_hw[0]
    sx = image_hw[1] / label_hw[1]
    x0, y0, x1, y1 = boxes[:, 0] * sx, boxes[:, 1] * sy, boxes[:, 2] * sx, boxes[:, 3] * sy
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = np.maximum(np.maximum(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin), min_side)
    half = side / 2
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)


def _sample_positions(boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Continuous image coordinates (pixel edges at integers) of the crop pixels' centres, ``K x size`` each."""
    steps = (np.arange(size, dtype=np.float64) + 0.5) / size
    xs = boxes[:, 0:1] + steps[None] * (boxes[:, 2:3] - boxes[:, 0:1])
    ys = boxes[:, 1:2] + steps[None] * (boxes[:, 3:4] - boxes[:, 1:2])
    return xs, ys


def _membership(labels: np.ndarray, ids: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(in_cell, in_image)`` bool ``K x S x S``: the label-map value at every crop pixel's centre."""
    height, width = image_hw
    in_image = ((ys >= 0) & (ys < height))[:, :, None] & ((xs >= 0) & (xs < width))[:, None, :]
    lab_h, lab_w = labels.shape
    lx = np.clip(np.floor(xs * (lab_w / width)).astype(np.intp), 0, lab_w - 1)
    ly = np.clip(np.floor(ys * (lab_h / height)).astype(np.intp), 0, lab_h - 1)
    sampled = np.take(labels.reshape(-1), ly[:, :, None] * lab_w + lx[:, None, :])
    in_cell = (sampled == ids.astype(labels.dtype)[:, None, None]) & in_image
    return in_cell, in_image


def antialias_scale(boxes: np.ndarray, size: int) -> float:
    """Factor (<= 1) that brings the median square side of ``boxes`` down to ``size`` px."""
    if len(boxes) == 0:
        return 1.0
    side = float(np.median(boxes[:, 2] - boxes[:, 0]))
    return min(1.0, size / side) if side > 0 else 1.0


def extract_crops(image: torch.Tensor, labels: np.ndarray, cells: CellIndex, params: CropParams,
                  raw_zero: Sequence[float], normalized_fill: Sequence[float] | None = None
                  ) -> tuple[torch.Tensor, np.ndarray]:
    """Crops ``K x C x size x size`` of every cell of one normalised image ``C x H x W``.

    ``raw_zero`` is the per-channel value of a black pixel after normalisation (``-mean / std``);
    ``normalized_fill`` the per-channel fill of ``blank: normalized`` (default 0, the mean intensity
    of a normalised image). Returns the crops and their square boxes (coordinates of ``image``, see
    :func:`square_boxes`).
    """
    if image.ndim != 3:
        raise CropError(f"image must be C x H x W, got shape {tuple(image.shape)}")
    channels, height, width = image.shape
    size = int(params.size)
    if cells.num_cells == 0:
        return image.new_zeros((0, channels, size, size)), np.zeros((0, 4))
    boxes = square_boxes(cells.boxes, cells.shape, (height, width), params.margin, params.min_side)
    source, src_boxes = image, boxes
    scale = antialias_scale(boxes, size) if params.antialias else 1.0
    if scale < 0.75:  # shrink the whole image once (antialiased) so most cells are sampled near 1:1
        new_hw = (max(1, round(height * scale)), max(1, round(width * scale)))
        source = F.interpolate(image[None], size=new_hw, mode="bilinear", antialias=True, align_corners=False)[0]
        src_boxes = boxes * np.array([new_hw[1] / width, new_hw[0] / height] * 2)
    src_h, src_w = source.shape[-2:]
    # axis-aligned boxes -> one affine map per crop: output [-1, 1] onto the box in normalised input coords
    theta = np.zeros((len(boxes), 2, 3))
    theta[:, 0, 0] = (src_boxes[:, 2] - src_boxes[:, 0]) / src_w
    theta[:, 1, 1] = (src_boxes[:, 3] - src_boxes[:, 1]) / src_h
    theta[:, 0, 2] = (src_boxes[:, 0] + src_boxes[:, 2]) / src_w - 1.0
    theta[:, 1, 2] = (src_boxes[:, 1] + src_boxes[:, 3]) / src_h - 1.0
    k = len(boxes)
    grid = F.affine_grid(torch.as_tensor(theta, dtype=image.dtype, device=image.device), [k, channels, size, size],
                         align_corners=False)
    crops = F.grid_sample(source[None].expand(k, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                          align_corners=False)
    in_cell, in_image = _membership(np.ascontiguousarray(labels), cells.ids, *_sample_positions(boxes, size),
                                    (height, width))
    drop = torch.from_numpy(~(in_cell if params.blank != "none" else in_image)).to(crops.device)
    if params.blank == "normalized":
        fill = [0.0] * channels if normalized_fill is None else [float(v) for v in normalized_fill]
    else:
        fill = [float(v) for v in raw_zero]
    for c in range(channels):
        crops[:, c].masked_fill_(drop, fill[c])
    return crops, boxes


def raw_crops(rgby: np.ndarray, labels: np.ndarray, cells: CellIndex, params: CropParams,
              mean: Sequence[float] | None = None) -> np.ndarray:
    """Crops ``K x size x size x C`` (uint8) of every cell of a raw ``H x W x C`` uint8 image.

    The geometry and blanking of :func:`extract_crops`, in raw intensities: blanked and outside-image
    pixels are 0 (black) for ``blank: raw``/``none``, and ``mean * 255`` (the dataset's mean intensity,
    ``mean`` of ``x / 255`` per channel) for ``blank: normalized``. Bilinear values are rounded to
    uint8, so the crops can be augmented and normalised exactly like a cache image
    (:class:`wsss.data.dataset.HPADataset`). This is how the cell classifier sees cells, in training
    and in ``wsss-infer --stage cell``.
    """
    if rgby.ndim != 3:
        raise CropError(f"image must be H x W x C, got shape {rgby.shape}")
    channels = rgby.shape[2]
    image = torch.from_numpy(np.ascontiguousarray(rgby.transpose(2, 0, 1))).float()
    fill = None if mean is None else [255.0 * float(m) for m in mean]
    crops, _ = extract_crops(image, labels, cells, params, [0.0] * channels, normalized_fill=fill)
    return crops.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
