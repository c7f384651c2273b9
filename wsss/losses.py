"""Puzzle-CAM ComboLoss: full-image BCE + puzzle BCE + L1 between full and merged CAMs.

``total = w_full * BCE(logits, y) + w_puzzle * BCE(puzzle_logits, y) + w_rec * L1(cams, puzzle_cams)``

* ``BCE`` is binary cross-entropy with logits, averaged over images and classes.
* ``puzzle_logits`` is the global mean of the merged tile CAMs (GAP after the classifier).
* ``L1`` is the mean absolute difference between the raw full-image CAMs and the merged tile CAMs,
  averaged over every element ``B x C x h x w``. With ``mask_by_labels=True`` the difference is
  multiplied by the image's label of each class before averaging (over all elements, as in the
  Puzzle-CAM paper's "masking" option), so only maps of classes present in the image are pulled
  together and absent classes are free.
* ``w_rec`` can be warmed up linearly from 0 (:func:`rec_weight`).

The cell classifier (``task: cell``) trains a plain classifier on single-cell crops:
:func:`classifier_loss` is its BCE (soft targets allowed) in the same :class:`LossTerms` form
(``full`` = the BCE, ``puzzle`` and ``rec`` zero), so both tasks share the training loop and logs.
With bags (``cells.bag.size`` > 0, multiple-instance learning) :func:`bag_loss` adds the BCE of each
bag's pooled prediction (:func:`pool_cells`: the K cells of one image merged into one image-level
logit, as the puzzle term merges the tiles) against the image labels: ``full`` = the cells' BCE,
``puzzle`` = the bag's BCE, ``rec`` zero.

All terms are computed in float32 even under autocast. The pure functions below take tensors and
return tensors; :class:`ComboLoss` is a thin module holding the weights.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class LossTerms(NamedTuple):
    """The weighted total and each unweighted term (all scalar tensors)."""

    total: torch.Tensor
    full: torch.Tensor
    puzzle: torch.Tensor
    rec: torch.Tensor


def bce_term(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy with logits over all images and classes (float32)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="mean")


def reconstruction_l1(
    cams: torch.Tensor,
    puzzle_cams: torch.Tensor,
    targets: torch.Tensor | None = None,
    mask_by_labels: bool = False,
) -> torch.Tensor:
    """Mean ``|cams - puzzle_cams|`` over ``B x C x h x w``, optionally masked by the labels ``B x C``."""
    if cams.shape != puzzle_cams.shape:
        raise ValueError(f"CAM shapes differ: {tuple(cams.shape)} vs {tuple(puzzle_cams.shape)}")
    diff = (cams.float() - puzzle_cams.float()).abs()
    if mask_by_labels:
        if targets is None:
            raise ValueError("mask_by_labels needs the targets")
        diff = diff * targets.float()[:, :, None, None]
    return diff.mean()


def rec_weight(w_rec: float, step: float, warmup_steps: float) -> float:
    """Linearly warmed-up L1 weight: ``w_rec * min(1, step / warmup_steps)`` (no warm-up when ``warmup_steps <= 0``)."""
    if warmup_steps <= 0:
        return float(w_rec)
    return float(w_rec) * min(1.0, max(0.0, step) / warmup_steps)


def combo_loss(
    logits: torch.Tensor,
    cams: torch.Tensor,
    puzzle_logits: torch.Tensor,
    puzzle_cams: torch.Tensor,
    targets: torch.Tensor,
    w_full: float = 1.0,
    w_puzzle: float = 1.0,
    w_rec: float = 0.25,
    mask_by_labels: bool = False,
) -> LossTerms:
    """The ComboLoss and its three unweighted terms (see the module doc)."""
    full = bce_term(logits, targets)
    puzzle = bce_term(puzzle_logits, targets)
    rec = reconstruction_l1(cams, puzzle_cams, targets, mask_by_labels)
    total = w_full * full + w_puzzle * puzzle + w_rec * rec
    return LossTerms(total, full, puzzle, rec)


def classifier_loss(logits: torch.Tensor, targets: torch.Tensor) -> LossTerms:
    """BCE of a plain classifier (hard or soft targets in ``[0, 1]``) as :class:`LossTerms` (no puzzle terms)."""
    full = bce_term(logits, targets)
    zero = torch.zeros((), dtype=full.dtype, device=full.device)
    return LossTerms(full, full, zero, zero)


POOLS: tuple[str, ...] = ("lse", "max", "mean")


def pool_cells(logits: torch.Tensor, pool: str = "lse", r: float = 5.0) -> torch.Tensor:
    """Image-level logits ``B x C`` of bags of cell logits ``B x K x C``.

    ``max`` takes the most confident cell, ``mean`` averages the cells, ``lse`` is the smooth
    maximum ``log(mean_k exp(r x_k)) / r`` (log-sum-exp pooling): ``r -> 0`` gives the mean, large
    ``r`` the maximum. Computed in float32.
    """
    if logits.dim() != 3:
        raise ValueError(f"pool_cells needs B x K x C logits, got shape {tuple(logits.shape)}")
    x = logits.float()
    if pool == "max":
        return x.amax(dim=1)
    if pool == "mean":
        return x.mean(dim=1)
    if pool == "lse":
        if r <= 0:
            raise ValueError(f"lse pooling needs r > 0, got {r}")
        return (torch.logsumexp(r * x, dim=1) - math.log(x.shape[1])) / r
    raise ValueError(f"unknown pooling {pool!r}; choose one of {', '.join(POOLS)}")


def bag_loss(cell_logits: torch.Tensor, cell_targets: torch.Tensor, image_targets: torch.Tensor,
             w_cell: float = 1.0, w_bag: float = 1.0, pool: str = "lse", r: float = 5.0) -> LossTerms:
    """Multiple-instance loss of bags of cells: ``w_cell * BCE(cells) + w_bag * BCE(pool_cells(cells), image)``.

    ``cell_logits`` and ``cell_targets`` are ``B x K x C`` (the K cells of each of B images, hard or
    soft targets), ``image_targets`` is ``B x C`` (the image labels). Returns :class:`LossTerms` with
    ``full`` = the cells' BCE and ``puzzle`` = the bag's BCE (``rec`` zero).
    """
    cells = bce_term(cell_logits, cell_targets)
    bag = bce_term(pool_cells(cell_logits, pool, r), image_targets)
    zero = torch.zeros((), dtype=cells.dtype, device=cells.device)
    return LossTerms(w_cell * cells + w_bag * bag, cells, bag, zero)


class ComboLoss(nn.Module):
    """Module form of :func:`combo_loss` holding the weights; ``forward(out, targets, w_rec=None)``.

    ``out`` is a :class:`wsss.models.PuzzleOutput` (or any 4-tuple in that order); ``w_rec``
    overrides the stored L1 weight for one call (used for the warm-up).
    """

    def __init__(self, w_full: float = 1.0, w_puzzle: float = 1.0, w_rec: float = 0.25, mask_by_labels: bool = False) -> None:
        super().__init__()
        self.w_full = float(w_full)
        self.w_puzzle = float(w_puzzle)
        self.w_rec = float(w_rec)
        self.mask_by_labels = bool(mask_by_labels)

    def forward(self, out: tuple, targets: torch.Tensor, w_rec: float | None = None) -> LossTerms:
        logits, cams, puzzle_logits, puzzle_cams = out
        return combo_loss(
            logits, cams, puzzle_logits, puzzle_cams, targets,
            w_full=self.w_full, w_puzzle=self.w_puzzle,
            w_rec=self.w_rec if w_rec is None else float(w_rec),
            mask_by_labels=self.mask_by_labels,
        )

    def extra_repr(self) -> str:
        return f"w_full={self.w_full}, w_puzzle={self.w_puzzle}, w_rec={self.w_rec}, mask_by_labels={self.mask_by_labels}"
