"""Stage-1 per-cell scores: class activation maps intersected with a cell label map.

Notation, for one image: ``L`` the cell label map (``H x W``, 0 = background, cell ``k`` = the
pixels ``Omega_k`` with ``L == k``, ``n_k = |Omega_k|``); ``A_c`` the *normalised* CAM of class
``c`` at the CAM resolution ``h x w`` (ReLU, divided by its image max, see
:func:`wsss.infer.cams.normalize_cams`), ``U[.]`` bilinear resizing from ``h x w`` to ``H x W``
(``align_corners=False``); ``P_c`` the image-level sigmoid probability of class ``c``.

Per cell ``k`` and class ``c``:

* magnitude ``M_kc = mean_{p in Omega_k} U[A_c](p)``: how strong the class's activation is inside
  the cell, relative to the image's peak (which is 1 after normalisation);
* overlap ``O_kc = mean_{p in Omega_k} U[1{A_c >= tau}](p)``: the fraction of the cell covered by
  the class's activated region ``{A_c >= tau}`` (the region's edge is bilinearly smoothed, like
  the CAM itself);
* combined ``S_kc = O_kc^w * M_kc^(1-w)`` (``combine: geometric``, the default: a cell needs both
  coverage and strength, either being zero gives zero) or ``S_kc = w O_kc + (1-w) M_kc``
  (``combine: arithmetic``); ``0 <= S_kc <= 1``;
* cell probability ``p_kc = P_c * ((1 - lambda) + lambda * S_kc)`` for every class ``c != 18``
  (Negative), ``lambda`` (``cam_weight``) in ``[0, 1]`` being how far the CAM may lower a cell
  below its image's probability: ``lambda = 1`` is the pure CAM score ``P_c * S_kc``, ``lambda = 0``
  gives every cell its image's probability. A cell never scores above its image.

Negative (class 18): ``b_k = max_{c != 18} p_kc`` is the cell's best positive score. A cell with
``b_k < floor`` has no class left and gets ``p_k,18 = max(1 - b_k, P_18)``; any other cell gets
``p_k,18 = P_18`` (the image-level Negative probability; with ``image_negative: false`` it gets 0
instead, and floor cells get ``1 - b_k``). So a cell outside every activation ends with Negative
near 1, and an image the classifier calls Negative passes that probability to all its cells.

Parameters and defaults live in ``configs/infer.yaml`` (section ``stage1``): ``tau``
(``threshold``) 0.1, ``w`` (``overlap_weight``) 0.5, ``combine`` geometric, ``lambda``
(``cam_weight``) 0.9, ``floor`` (``negative_floor``) 1.0 (every cell then gets
``max(1 - b_k, P_18)``), ``image_negative`` true, tuned under the official cell-metric protocol.
Tune them on the out-of-fold tables (``scripts/tune_stage1.py``; ``docs/inference.md`` has the
measurements behind the defaults).

Computation: because ``U`` is linear, a cell's mean of any resized map equals a fixed weighting of
the low-resolution map, ``mean_{Omega_k} U[X] = sum_{ij} F_k[ij] X[ij]`` with the cell's
*footprint* ``F_k = (1/n_k) sum_{(y,x) in Omega_k} Ry[y, i] Rx[x, j]`` (``Ry``, ``Rx`` the 1-D
bilinear weights). :func:`cell_footprints` builds ``F`` (``K x h*w``) for all cells at once with
two ``bincount`` calls over the foreground pixels and one batched product; then both measures
for all cells and classes are one matrix product each. The result is identical (to float
rounding) to resizing the maps to ``H x W`` and averaging inside every cell, without ever
materialising ``C x H x W`` maps, and it has no Python loop over cells.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from wsss.data.classes import NEGATIVE, NUM_CLASSES
from wsss.masks import CellIndex

logger = logging.getLogger(__name__)

COMBINE_MODES: tuple[str, ...] = ("geometric", "arithmetic")


class ScoringError(ValueError):
    """Scoring parameters or inputs that cannot be used."""


@dataclass(frozen=True)
class ScoreParams:
    """Stage-1 scoring parameters (see the module doc for the formula)."""

    threshold: float = 0.1
    overlap_weight: float = 0.5
    combine: str = "geometric"
    negative_floor: float = 1.0
    image_negative: bool = True
    cam_weight: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.cam_weight) <= 1.0:
            raise ScoringError(f"stage1.cam_weight must be in [0, 1], got {self.cam_weight}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ScoringError(f"stage1.threshold must be in [0, 1], got {self.threshold}")
        if not 0.0 <= float(self.overlap_weight) <= 1.0:
            raise ScoringError(f"stage1.overlap_weight must be in [0, 1], got {self.overlap_weight}")
        if self.combine not in COMBINE_MODES:
            raise ScoringError(f"stage1.combine must be one of {', '.join(COMBINE_MODES)}, got {self.combine!r}")
        if not 0.0 <= float(self.negative_floor) <= 1.0:
            raise ScoringError(f"stage1.negative_floor must be in [0, 1], got {self.negative_floor}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> ScoreParams:
        """Build from a config section, ignoring keys that are not scoring parameters."""
        cfg = cfg or {}
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})


@functools.lru_cache(maxsize=64)
def bilinear_weights(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1-D bilinear resize weights of ``F.interpolate(..., align_corners=False)``.

    Returns ``(i0, i1, w0, w1)`` of length ``out_size``: output position ``t`` is
    ``w0[t] * src[i0[t]] + w1[t] * src[i1[t]]``.
    """
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.where(i1 == i0, 0.0, src - i0)
    w0 = 1.0 - w1
    for arr in (i0, i1, w0, w1):
        arr.flags.writeable = False
    return i0, i1, w0, w1


@functools.lru_cache(maxsize=64)
def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """Dense ``out_size x in_size`` form of :func:`bilinear_weights` (rows sum to 1; read-only, cached)."""
    i0, i1, w0, w1 = bilinear_weights(out_size, in_size)
    mat = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(mat, (rows, i0), w0)
    np.add.at(mat, (rows, i1), w1)
    mat.flags.writeable = False
    return mat


def cell_footprints(cells: CellIndex, cam_hw: tuple[int, int]) -> np.ndarray:
    """``K x (h*w)`` footprints: row ``k`` averages a bilinearly resized ``h x w`` map over cell ``k``.

    ``footprints @ X.reshape(-1)`` equals ``resize(X, (H, W))[L == id_k].mean()`` for any map ``X``.
    Separable: two ``bincount`` calls over the foreground pixels sum the column weights per
    (cell, row), then one batched product with the row weights finishes all cells.
    """
    h, w = int(cam_hw[0]), int(cam_hw[1])
    height, width = cells.shape
    k = cells.num_cells
    if k == 0:
        return np.zeros((0, h * w))
    xi0, xi1, xw0, xw1 = bilinear_weights(width, w)
    px = cells.pix_x
    rows = (cells.pix_k * height + cells.pix_y) * w
    per_row = np.bincount(rows + xi0[px], weights=xw0[px], minlength=k * height * w)
    per_row += np.bincount(rows + xi1[px], weights=xw1[px], minlength=k * height * w)
    per_row = per_row.reshape(k, height, w)
    ry = bilinear_matrix(height, h)  # H x h
    out = np.matmul(per_row.transpose(0, 2, 1), ry).transpose(0, 2, 1).reshape(k, h * w)
    return out / cells.area[:, None].astype(np.float64)


def cell_measures(footprints: np.ndarray, cams: torch.Tensor | np.ndarray, threshold: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Overlap and magnitude (``K x C`` each) of every cell with every normalised CAM ``C x h x w``."""
    cam = cams.detach().float().cpu().numpy() if isinstance(cams, torch.Tensor) else np.asarray(cams, np.float32)
    if cam.ndim != 3:
        raise ScoringError(f"CAMs must be C x h x w, got shape {cam.shape}")
    flat = cam.reshape(cam.shape[0], -1).astype(np.float64)
    if footprints.shape[1] != flat.shape[1]:
        raise ScoringError(f"footprints are for {footprints.shape[1]} CAM pixels, CAMs have {flat.shape[1]}")
    magnitude = footprints @ flat.T
    overlap = footprints @ (flat >= threshold).T.astype(np.float64)
    return np.clip(overlap, 0.0, 1.0), np.clip(magnitude, 0.0, 1.0)


def combine_measures(overlap: np.ndarray, magnitude: np.ndarray, params: ScoreParams) -> np.ndarray:
    """``S = O^w M^(1-w)`` (geometric) or ``w O + (1-w) M`` (arithmetic), elementwise."""
    w = float(params.overlap_weight)
    if params.combine == "geometric":
        with np.errstate(divide="ignore"):
            return np.power(overlap, w) * np.power(magnitude, 1.0 - w)
    return w * overlap + (1.0 - w) * magnitude


def cell_probabilities(overlap: np.ndarray, magnitude: np.ndarray, image_probs: np.ndarray,
                       params: ScoreParams) -> np.ndarray:
    """``K x 19`` per-cell probabilities from the measures and the image's 19 probabilities."""
    probs = np.asarray(image_probs, dtype=np.float64).reshape(-1)
    if probs.size != NUM_CLASSES:
        raise ScoringError(f"image probabilities must have {NUM_CLASSES} values, got {probs.size}")
    if overlap.shape != magnitude.shape or overlap.ndim != 2 or overlap.shape[1] != NUM_CLASSES:
        raise ScoringError(f"overlap/magnitude must both be K x {NUM_CLASSES}, got {overlap.shape}, {magnitude.shape}")
    lam = float(params.cam_weight)
    out = ((1.0 - lam) + lam * combine_measures(overlap, magnitude, params)) * probs[None, :]
    positive = np.delete(out, NEGATIVE, axis=1)
    best = positive.max(axis=1) if positive.shape[0] else np.zeros(0)
    image_neg = probs[NEGATIVE] if params.image_negative else 0.0
    low = best < float(params.negative_floor)
    out[:, NEGATIVE] = np.where(low, np.maximum(1.0 - best, image_neg), image_neg)
    return np.clip(out, 0.0, 1.0)


def score_cells(cells: CellIndex, cams: torch.Tensor | np.ndarray, image_probs: np.ndarray | torch.Tensor,
                params: ScoreParams) -> np.ndarray:
    """Stage-1 ``K x 19`` probabilities for all cells of one image (normalised CAMs ``C x h x w``)."""
    if isinstance(image_probs, torch.Tensor):
        image_probs = image_probs.detach().float().cpu().numpy()
    footprints = cell_footprints(cells, tuple(cams.shape[-2:]))
    overlap, magnitude = cell_measures(footprints, cams, params.threshold)
    return cell_probabilities(overlap, magnitude, image_probs, params)
