"""Default training config (the writeup's settings); YAML configs and CLI overrides merge onto it.

``task`` picks what is trained: ``image`` (the Puzzle-CAM classifier on whole images) or ``cell``
(the cell classifier on single-cell crops; ``data.size`` is then the crop side and the ``cells``
section says where the cell label maps are and how the crops are cut; see :mod:`wsss.train.data`).
"""

from __future__ import annotations

import copy
from typing import Any

from wsss.config import ConfigError, TypeSpec, check_config
from wsss.data.dataset import DEFAULT_MEAN, DEFAULT_STD

#: ``cells.bag``: multiple-instance training of the cell classifier (wsss.train.data.bag_settings).
DEFAULT_BAG: dict[str, Any] = {"size": 0, "pool": "lse", "lse_r": 5.0, "w_cell": 1.0, "w_bag": 1.0}

DEFAULT_CONFIG: dict[str, Any] = {
    "name": "puzzlecam",
    "task": "image",  # image: Puzzle-CAM on whole images | cell: a classifier on single-cell crops
    "data": {
        "cache": "data/cache",  # wsss-prepare output: {cache}/{ID}.png + manifest.csv
        "folds": "data/folds.csv",  # wsss-folds output: ID,Label,fold
        "size": 512,  # training side; cache images of another size are resized on the fly
        "mean": list(DEFAULT_MEAN),
        "std": list(DEFAULT_STD),
        "train_augment": "configs/augment/writeup.yaml",  # list of transforms or a YAML path; null = none
        "val_augment": None,
        "num_workers": 4,
        # soft training targets (wsss-pseudo output): an image-level table for task image
        # (image_targets.parquet), a per-cell table for task cell (cell_targets.parquet); null = image labels
        "soft_labels": None,
    },
    "cells": {  # task cell only: crops of every cell of the cache images (wsss.data.crops, the stage-2 geometry)
        "masks": None,  # folder of {ID}.npz cell label maps (wsss-segment output) of the cache images
        "margin": 0.1,  # fraction of the cell's longer side added on every side of its square box
        "min_side": 8,  # smallest box side in image px
        "blank": "raw",  # raw (neighbours black) | normalized (neighbours at the mean) | none (kept)
        "antialias": True,
        "image_size": None,  # resize the cache image (longer side) before cutting; null = as cached
        "store": None,  # crop store folder (per-image .npy crops); null = {data.cache}_cellcrops
        # multiple-instance training: items are bags of `size` cells of one image (0 = single cells);
        # loss = w_cell * BCE(cells) + w_bag * BCE(pooled bag, image labels); pool lse | max | mean
        "bag": dict(DEFAULT_BAG),
    },
    "model": {
        "name": "seresnext50_32x4d",
        "pretrained_file": None,  # local timm state dict (3-channel RGB weights are adapted to RGBY)
        "stem_rule": "mean",
        "output_stride": None,  # 16 for finer CAMs
        "num_classes": 19,
        "in_chans": 4,
        "puzzle_grid": 2,
    },
    "loss": {
        "w_full": 1.0,
        "w_puzzle": 1.0,
        "w_rec": 0.25,
        "rec_warmup_epochs": 0.0,  # linear warm-up of w_rec over this many epochs (0 = none)
        "rec_mask_by_labels": False,
    },
    "train": {
        "epochs": 48,
        "batch_size": 32,
        "val_batch_size": None,  # default: batch_size
        "lr": 3.0e-4,
        "betas": [0.9, 0.999],
        "weight_decay": 0.0,
        "scheduler": {"name": "plateau", "factor": 0.3, "patience": 8, "min_lr": 0.0},
        "sampler": "balanced",  # balanced | shuffle
        # which epoch `best` keeps: loss (lowest val loss) | map (highest val macro mAP) | last (the newest epoch:
        # nothing chosen on the validation fold, which the out-of-fold tables then score)
        "select": "loss",
        "sampler_clip_class": 8,
        "samples_per_epoch": None,  # default: number of training images
        "precision": "auto",  # auto (fp16 on CUDA, bf16 on a CPU with native bf16, else fp32) | 16 | bf16 | 32
        "grad_clip": None,
        "channels_last": "auto",  # auto (on for CUDA and native-bf16 CPUs, off for fp32 on a CPU) | true | false
        "sync_bn": False,
        "f1_threshold": 0.5,
        "seed": 0,
        "device": "auto",
        "out": "runs/{name}_fold{fold}",
        "tensorboard": True,  # used only when tensorboard is installed
        "progress": True,
        "resolved": None,  # written by training: the precision/channels_last actually used, and why
    },
}


#: Types of the keys whose default does not tell (see :func:`wsss.config.check_config`); every other
#: key takes the type of its default. ``train.fold`` and ``train.resolved`` are written by training
#: into the saved ``config.yaml`` (which can be given back as ``--config``).
CONFIG_TYPES: dict[str, TypeSpec] = {
    "data.mean": ("auto", list),
    "data.std": ("auto", list),
    "data.train_augment": (str, list, None),
    "data.val_augment": (str, list, None),
    "data.soft_labels": (str, None),
    "cells.masks": (str, None),
    "cells.image_size": (int, None),
    "cells.store": (str, None),
    "model.pretrained_file": (str, None),
    "model.output_stride": (int, None),
    "train.val_batch_size": (int, None),
    "train.samples_per_epoch": (int, None),
    "train.grad_clip": (float, None),
    "train.precision": (str, int),  # auto | 16 | bf16 | 32 (checked by wsss.precision)
    "train.channels_last": ("auto", bool),
    "train.scheduler": (dict,),  # free-form: its keys depend on the scheduler name
    "train.resolved": (dict, None),
    "train.fold": (int, None),
}


#: Values of ``train.select`` (:func:`wsss.train.checkpoint.selection_score`, metric ``map``).
SELECT_CHOICES: tuple[str, ...] = ("loss", "map", "last")


def check_select(select: object, choices: tuple[str, ...] = SELECT_CHOICES) -> str:
    """``train.select`` as a string, or :class:`wsss.config.ConfigError` when it is not one of ``choices`` (the
    watershed trainer passes its own)."""
    if select not in choices:
        raise ConfigError(f"train.select must be one of {', '.join(choices)}, got {select!r}")
    return str(select)


def check_train_config(cfg: dict[str, Any]) -> None:
    """Refuse unknown keys, mistyped values and an unknown ``train.select`` of a resolved training config
    (:class:`wsss.config.ConfigError`)."""
    check_config(cfg, DEFAULT_CONFIG, CONFIG_TYPES)
    check_select(cfg.get("train", {}).get("select", "loss"))


def default_config() -> dict[str, Any]:
    """A fresh deep copy of :data:`DEFAULT_CONFIG`."""
    return copy.deepcopy(DEFAULT_CONFIG)
