"""Torch dataset over a prepared RGBY cache, with normalisation and albumentations.

Each item is ``(image, target)``: ``image`` a float32 tensor ``4 x H x W`` (channels red, green,
blue, yellow) normalised as ``(x / 255 - mean) / std``, ``target`` the 19-dim float32 multi-hot
vector (zeros when the dataset has no targets, e.g. test images).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from wsss.data.classes import NUM_CLASSES
from wsss.data.io import read_rgby_png
from wsss.data.prepare import cache_path

logger = logging.getLogger(__name__)

#: Per-channel mean and std (of x / 255) measured with :func:`channel_stats` on the three real HPA
#: fields of view of ``shared/data/hpa_sample`` at 512 px. Use the stats of your own cache in a
#: config (``data.mean`` / ``data.std``) when you have more data.
DEFAULT_MEAN: tuple[float, float, float, float] = (0.0626, 0.0183, 0.0333, 0.0517)
DEFAULT_STD: tuple[float, float, float, float] = (0.1149, 0.0640, 0.1137, 0.1057)


def normalize(rgby: np.ndarray, mean: Sequence[float] = DEFAULT_MEAN,
              std: Sequence[float] = DEFAULT_STD) -> torch.Tensor:
    """Turn an ``H x W x 4`` uint8 RGBY array into a normalised float32 ``4 x H x W`` tensor
    (a stack ``N x H x W x 4``, e.g. cell crops, into ``N x 4 x H x W``)."""
    if rgby.ndim not in (3, 4) or rgby.shape[-1] != 4:
        raise ValueError(f"normalize expects H x W x 4 (or N x H x W x 4), got shape {rgby.shape}")
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    scaled = (rgby.astype(np.float32) * (1.0 / 255.0) - mean_arr) / std_arr
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(scaled, -1, -3)))


def channel_stats(cache_dir: Path | str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``x / 255`` over the cached images of ``ids``."""
    total = np.zeros(4, dtype=np.float64)
    total_sq = np.zeros(4, dtype=np.float64)
    count = 0
    for image_id in ids:
        pixels = read_rgby_png(cache_path(cache_dir, image_id)).reshape(-1, 4).astype(np.float64) / 255.0
        total += pixels.sum(axis=0)
        total_sq += (pixels**2).sum(axis=0)
        count += pixels.shape[0]
    if count == 0:
        raise ValueError("channel_stats needs at least one image")
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))


class HPADataset(Dataset):
    """Images of a prepared cache with their multi-hot targets.

    Args:
        cache_dir: folder written by ``wsss-prepare`` (``{ID}.png`` per id).
        ids: image ids, in item order.
        targets: ``N x 19`` multi-hot matrix aligned with ``ids``, or ``None``.
        transform: an albumentations transform applied to the uint8 RGBY array, or ``None``.
        mean, std: per-channel normalisation of ``x / 255``.
    """

    def __init__(self, cache_dir: Path | str, ids: Sequence[str], targets: np.ndarray | None = None,
                 transform=None, mean: Sequence[float] = DEFAULT_MEAN,
                 std: Sequence[float] = DEFAULT_STD) -> None:
        self.cache_dir = Path(cache_dir)
        self.ids = [str(i) for i in ids]
        if targets is not None:
            targets = np.asarray(targets, dtype=np.float32)
            if targets.shape != (len(self.ids), NUM_CLASSES):
                raise ValueError(f"targets must be {len(self.ids)} x {NUM_CLASSES}, got {targets.shape}")
        self.targets = targets
        self.transform = transform
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> np.ndarray:
        """The uint8 RGBY array of item ``index``, before augmentation."""
        return read_rgby_png(cache_path(self.cache_dir, self.ids[index]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        target = self.targets[index] if self.targets is not None else np.zeros(NUM_CLASSES, np.float32)
        return normalize(image, self.mean, self.std), torch.from_numpy(np.array(target, dtype=np.float32))
