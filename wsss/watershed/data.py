"""Training samples of the watershed model: an RGBY image, its instance truth and the targets.

Images come from a prepared cache or a Kaggle-layout folder (:mod:`wsss.data.source`). Instance
truth comes from a folder of label maps found by the one precomputed-mask discovery
(:func:`wsss.masks.read_precomputed`): the synthetic truth (``wsss-synth``'s ``masks/``), any folder
of precomputed masks, or ``wsss-segment`` output (``{ID}.npz``) as pseudo truth. Both are brought to
the working size (images by area interpolation, label maps by the one nearest-neighbour rule).

Augmentation (training only): a random crop of ``crop`` px (same scale as the working size), random
flips and quarter turns, applied to the image and the label map together; the targets
(:func:`wsss.watershed.targets.make_targets`) are computed afterwards.

Class-head targets (optional): every cell's pixels take that cell's probabilities from a per-cell
table (``image_id, cell_id, p_0 .. p_18``, e.g. out-of-fold stage-1/2 predictions made on the same
label maps) as soft targets; background and cells missing from the table get none (``class_mask``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from wsss.data.dataset import normalize
from wsss.data.io import resize_rgby
from wsss.data.source import ImageSource
from wsss.masks import read_precomputed, resize_labels
from wsss.schema import PROB_COLUMNS
from wsss.watershed.targets import make_targets

logger = logging.getLogger(__name__)


def cell_probabilities(table: pd.DataFrame) -> dict[str, dict[int, np.ndarray]]:
    """``image_id -> {cell_id: p_0..p_18}`` of a per-cell table."""
    out: dict[str, dict[int, np.ndarray]] = {}
    probs = table[PROB_COLUMNS].to_numpy(np.float32)
    for row, (image_id, cell_id) in enumerate(zip(table["image_id"].astype(str), table["cell_id"].astype(int))):
        out.setdefault(image_id, {})[int(cell_id)] = probs[row]
    return out


def class_targets(cells: np.ndarray, probs: Mapping[int, np.ndarray], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Soft per-pixel class targets (C x H x W) and their mask (cells present in ``probs``)."""
    n = int(cells.max(initial=0)) + 1
    lut = np.zeros((n, num_classes), dtype=np.float32)
    known = np.zeros(n, dtype=bool)
    for cid, p in probs.items():
        if 0 < cid < n:
            lut[cid] = p[:num_classes]
            known[cid] = True
    return lut[cells].transpose(2, 0, 1).copy(), known[cells]


def augment(rgby: np.ndarray, labels: np.ndarray, rng: np.random.Generator, crop: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Random crop (``crop`` px, if smaller than the image), flips and quarter turns of image and labels together."""
    h, w = labels.shape
    if crop and crop < min(h, w):
        y0, x0 = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        rgby, labels = rgby[y0:y0 + crop, x0:x0 + crop], labels[y0:y0 + crop, x0:x0 + crop]
    if rng.random() < 0.5:
        rgby, labels = rgby[:, ::-1], labels[:, ::-1]
    if rng.random() < 0.5:
        rgby, labels = rgby[::-1], labels[::-1]
    k = int(rng.integers(0, 4))
    if k:
        rgby, labels = np.rot90(rgby, k), np.rot90(labels, k)
    return np.ascontiguousarray(rgby), np.ascontiguousarray(labels)


class WatershedDataset(Dataset):
    """``(image, targets)`` samples as a dict of tensors (see the module docstring).

    Keys: ``image`` (4 x H x W normalised), ``semantic``, ``energy``, ``direction``,
    ``direction_mask``, ``weight`` and, with a cell table, ``classes`` and ``class_mask``.
    """

    def __init__(self, images: Path | str, masks: Path | str, ids: Sequence[str], size: int,
                 mean: Sequence[float], std: Sequence[float], levels: int, radius: float, span: float,
                 train: bool = False, crop: int | None = None, cell_probs: Mapping[str, Mapping[int, np.ndarray]] | None = None,
                 num_classes: int = 19, seed: int = 0) -> None:
        self.source = ImageSource(images)
        self.masks = Path(masks)
        self.ids = list(ids)
        self.size = int(size)
        self.mean, self.std = list(mean), list(std)
        self.levels, self.radius, self.span = int(levels), float(radius), float(span)
        self.train = bool(train)
        self.crop = int(crop) if crop else None
        self.cell_probs = cell_probs
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Augmentations of epoch ``epoch`` (drawn from ``(seed, epoch, index)``: exact on resume)."""
        self.epoch = int(epoch)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The RGBY image and the cell label map of sample ``index`` at the working size."""
        image_id = self.ids[index]
        rgby = self.source.read(image_id)[0]
        if rgby.shape[:2] != (self.size, self.size):
            rgby = resize_rgby(rgby, self.size)
        cells, _, _ = read_precomputed(self.masks, image_id)
        if cells.shape != rgby.shape[:2]:
            cells = resize_labels(cells, *rgby.shape[:2])
        return rgby, cells.astype(np.int32)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgby, cells = self.load(index)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            rgby, cells = augment(rgby, cells, rng, self.crop)
        t = make_targets(cells, self.levels, self.radius, self.span)
        sample = {
            "image": normalize(rgby, self.mean, self.std),
            "semantic": torch.from_numpy(t.semantic),
            "energy": torch.from_numpy(t.energy),
            "direction": torch.from_numpy(t.direction),
            "direction_mask": torch.from_numpy(t.direction_mask),
            "weight": torch.from_numpy(t.weight),
            "cells": torch.from_numpy(cells),
        }
        if self.cell_probs is not None:
            probs = self.cell_probs.get(self.ids[index], {})
            cls, mask = class_targets(cells, probs, self.num_classes)
            sample["classes"] = torch.from_numpy(cls)
            sample["class_mask"] = torch.from_numpy(mask)
        return sample
