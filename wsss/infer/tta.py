"""The dihedral group D4 as test-time augmentation: the 8 flips and quarter turns of a square.

:func:`d4_transforms` is a pure function shared by every TTA user of inference (crops of the cell
classifier and of stage 2, CAMs of stage 1): it returns the 8 transforms of the last two dims of a
tensor with their inverses, so a CAM computed on a transformed view can be mapped back with
``inverse``. Element ``(k, flip)`` is ``rot90(x, k)`` followed by a horizontal flip when ``flip``;
``k = 0, flip = False`` is the identity and comes first. :func:`d4_mean_probs` averages the sigmoid
of a classifier over the 8 views of a batch (one forward pass of ``8 B`` images).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor], torch.Tensor]


class D4Transform(NamedTuple):
    """One element of D4 acting on the last two dims: ``forward`` and its ``inverse``."""

    name: str
    forward: Transform
    inverse: Transform


def _make(k: int, flip: bool) -> D4Transform:
    def forward(x: torch.Tensor) -> torch.Tensor:
        y = torch.rot90(x, k, dims=(-2, -1)) if k else x
        return torch.flip(y, dims=(-1,)) if flip else y

    def inverse(x: torch.Tensor) -> torch.Tensor:
        y = torch.flip(x, dims=(-1,)) if flip else x
        return torch.rot90(y, -k, dims=(-2, -1)) if k else y

    name = ("id" if not k else f"rot{90 * k}") + ("_hflip" if flip else "")
    return D4Transform(name, forward, inverse)


def d4_transforms() -> list[D4Transform]:
    """The 8 elements of D4 (identity first) as ``(name, forward, inverse)`` on the last two dims."""
    return [_make(k, flip) for flip in (False, True) for k in range(4)]


@torch.inference_mode()
def d4_mean_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sigmoid probabilities ``B x C`` of square images ``x`` averaged over the 8 D4 views.

    ``model(batch)`` must return ``(logits, ...)``; the 8 views go through it as one batch.
    Autocast, if any, is the caller's (this function only builds the views and averages).
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"D4 needs square inputs, got {tuple(x.shape[-2:])}")
    views = torch.cat([t.forward(x) for t in d4_transforms()], dim=0)
    logits = model(views)[0]
    return torch.sigmoid(logits.float()).reshape(8, x.shape[0], -1).mean(dim=0)
