"""Class-balanced weighted sampling, as the writeup trains (and shardable across DDP ranks).

Weights:

* class weight ``w_c = N / n_c`` (inverse frequency; ``n_c`` images hold class ``c``; a class no
  image holds gets weight 0);
* a sample's weight is the largest weight among its classes, so an image is drawn as often as its
  rarest class asks;
* every sample weight is clipped at the weight of ``clip_class`` (default 8, Intermediate
  filaments), so the rarest classes (11 Mitotic spindle, 15 Aggresome) are not oversampled
  beyond it.

Each epoch draws ``num_samples`` indices with replacement from one generator seeded by
``seed + epoch``, identical on every rank; rank ``r`` of ``R`` takes positions ``r, r + R, ...``,
so the ranks share one draw without overlap and each gets ``ceil(num_samples / R)`` indices
(the draw is padded by wrapping when ``num_samples`` is not a multiple of ``R``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from wsss.data.classes import INTERMEDIATE_FILAMENTS, NUM_CLASSES

logger = logging.getLogger(__name__)


def class_weights(targets: np.ndarray) -> np.ndarray:
    """Inverse-frequency weight of each class: ``N / n_c`` (0 for a class no sample holds)."""
    targets = np.asarray(targets) > 0
    counts = targets.sum(axis=0).astype(np.float64)
    weights = np.zeros(targets.shape[1], dtype=np.float64)
    present = counts > 0
    weights[present] = targets.shape[0] / counts[present]
    return weights


def sample_weights(targets: np.ndarray, clip_class: int | None = INTERMEDIATE_FILAMENTS) -> np.ndarray:
    """Weight of each sample: max class weight over its classes, clipped at ``clip_class``'s weight.

    A sample with no class at all gets the smallest positive weight. ``clip_class=None`` disables
    clipping; a clip class no sample holds disables it too (with a warning).
    """
    targets = np.asarray(targets) > 0
    if targets.ndim != 2 or targets.shape[1] != NUM_CLASSES:
        raise ValueError(f"targets must be N x {NUM_CLASSES}, got shape {targets.shape}")
    per_class = class_weights(targets)
    weights = np.where(targets, per_class[None, :], 0.0).max(axis=1)
    if clip_class is not None:
        cap = per_class[clip_class]
        if cap > 0:
            weights = np.minimum(weights, cap)
        else:
            logger.warning("clip class %d is absent from the targets: weights are not clipped", clip_class)
    if (weights == 0).any():
        positive = weights[weights > 0]
        weights[weights == 0] = positive.min() if positive.size else 1.0
    return weights


def _dist_info(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is None or rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            num_replicas = torch.distributed.get_world_size() if num_replicas is None else num_replicas
            rank = torch.distributed.get_rank() if rank is None else rank
        else:
            num_replicas = 1 if num_replicas is None else num_replicas
            rank = 0 if rank is None else rank
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
    return num_replicas, rank


class BalancedSampler(Sampler[int]):
    """Weighted random sampler with clipped inverse-frequency weights, shardable across ranks.

    Args:
        targets: ``N x 19`` multi-hot matrix of the training images.
        num_samples: indices drawn per epoch over all ranks (default ``N``).
        clip_class: class whose weight caps the sample weights (``None``: no cap).
        seed: base seed; epoch ``e`` draws with seed ``seed + e``.
        num_replicas, rank: DDP world size and rank (default: from ``torch.distributed`` if
            initialised, else a single process).
    """

    def __init__(self, targets: np.ndarray, num_samples: int | None = None,
                 clip_class: int | None = INTERMEDIATE_FILAMENTS, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        self.weights = torch.as_tensor(sample_weights(targets, clip_class), dtype=torch.double)
        self.num_samples = int(num_samples) if num_samples is not None else len(self.weights)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        self.num_replicas, self.rank = _dist_info(num_replicas, rank)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw the next iteration returns."""
        self.epoch = int(epoch)

    def _draw(self) -> torch.Tensor:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        total = math.ceil(self.num_samples / self.num_replicas) * self.num_replicas
        drawn = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        if total > self.num_samples:  # wrap around (repeatedly, for draws smaller than the world size)
            drawn = drawn.repeat(math.ceil(total / self.num_samples))[:total]
        return drawn

    def __iter__(self) -> Iterator[int]:
        return iter(self._draw()[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs: seed and epoch (the draw is a function of both)."""
        return {"seed": self.seed, "epoch": self.epoch, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.num_samples = int(state["num_samples"])
