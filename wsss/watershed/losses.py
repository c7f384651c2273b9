"""Loss terms of the watershed model as pure functions (tensors in, scalar tensor out).

Every term takes the network's logits and the batched targets of :mod:`wsss.watershed.targets`
(``semantic`` N x H x W int64, ``energy`` N x H x W int64, ``direction`` N x 2 x H x W,
``direction_mask`` N x H x W bool, ``weight`` N x H x W float; optional ``classes`` N x C x H x W
soft targets with ``class_mask`` N x H x W bool). :func:`watershed_loss` weights them with the
config's ``loss`` section and returns every term for the logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

TERMS: tuple[str, ...] = ("semantic", "energy", "direction", "classes")


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (values * weight).sum() / weight.sum().clamp_min(1e-6)


def semantic_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                  class_weights: Sequence[float] = (1.0, 1.0, 1.0), dice: float = 1.0) -> torch.Tensor:
    """Per-class sigmoid BCE (pixel-weighted) + ``dice`` x soft Dice, each class weighted by ``class_weights``."""
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    w = weight.unsqueeze(1)
    bce_c = (bce * w).sum(dim=(0, 2, 3)) / w.sum().clamp_min(1e-6)
    prob = torch.sigmoid(logits)
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice_c = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
    cw = torch.as_tensor(list(class_weights), dtype=logits.dtype, device=logits.device)
    return ((bce_c + float(dice) * dice_c) * cw).sum() / cw.sum()


def energy_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                boundary_boost: float = 2.0, boundary_levels: int = 3) -> torch.Tensor:
    """Pixel-weighted cross-entropy over the energy levels, ``1 + boundary_boost`` times heavier on
    interior pixels of the lowest ``boundary_levels`` levels (those next to a boundary)."""
    ce = F.cross_entropy(logits, target, reduction="none")
    near = (target > 0) & (target <= int(boundary_levels))
    w = weight * (1.0 + float(boundary_boost) * near.to(weight.dtype))
    return _weighted_mean(ce, w)


def direction_loss(raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared angle between the predicted and the target direction, on ``mask`` pixels only."""
    pred = raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-6)
    cos = (pred * target).sum(dim=1).clamp(-1.0 + 1e-6, 1.0 - 1e-6)
    angle = torch.acos(cos)
    m = mask.to(weight.dtype) * weight
    if float(m.sum()) == 0.0:
        return raw.sum() * 0.0
    return _weighted_mean(angle * angle, m)


def class_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE of the per-pixel class logits against soft targets, on ``mask`` (cell) pixels only."""
    bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none").mean(dim=1)
    m = mask.to(weight.dtype) * weight
    if float(m.sum()) == 0.0:
        return logits.sum() * 0.0
    return _weighted_mean(bce, m)


def watershed_loss(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                   cfg: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Weighted sum of the terms the network has (``total``) and every term, from the ``loss`` config.

    ``cfg`` keys: ``w_semantic``, ``w_energy``, ``w_direction``, ``w_classes``, ``semantic_class_weights``,
    ``dice``, ``energy_boundary_boost``, ``energy_boundary_levels``. The class term is computed only
    when the network has a class head and the batch carries class targets.
    """
    weight = batch["weight"].float()
    terms: dict[str, torch.Tensor] = {}
    sem = out["semantic"].float()
    terms["semantic"] = semantic_loss(sem, batch["semantic"], weight, cfg.get("semantic_class_weights", (1.0, 1.0, 1.0)),
                                      float(cfg.get("dice", 1.0)))
    terms["energy"] = energy_loss(out["energy"].float(), batch["energy"], weight,
                                  float(cfg.get("energy_boundary_boost", 2.0)), int(cfg.get("energy_boundary_levels", 3)))
    if "direction" in out:
        terms["direction"] = direction_loss(out["direction"].float(), batch["direction"], batch["direction_mask"], weight)
    if "classes" in out and "classes" in batch:
        terms["classes"] = class_loss(out["classes"].float(), batch["classes"], batch["class_mask"], weight)
    total = sum(float(cfg.get(f"w_{name}", 1.0)) * value for name, value in terms.items())
    terms["total"] = total if isinstance(total, torch.Tensor) else sem.sum() * 0.0
    return terms
