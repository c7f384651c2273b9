"""Default config of ``wsss-seg-train``; YAML configs (``configs/watershed_*.yaml``) and ``--set`` merge onto it."""

from __future__ import annotations

import copy
from typing import Any

from wsss.data.dataset import DEFAULT_MEAN, DEFAULT_STD

FORMAT: str = "wsss-watershed-1"

DEFAULT_CONFIG: dict[str, Any] = {
    "name": "watershed",
    "data": {
        "cache": "data/cache",  # images: a prepared cache or a Kaggle-layout folder
        "folds": "data/folds.csv",  # ID,Label,fold; fold k validates, the others train
        "masks": "data/masks",  # instance truth: synthetic masks/, precomputed masks, or wsss-segment output
        "cell_table": None,  # per-cell table (parquet/CSV) of out-of-fold probabilities: class-head soft targets
        "size": 512,  # working side
        "crop": 256,  # training crops (same scale as size); null = whole images
        "mean": list(DEFAULT_MEAN),
        "std": list(DEFAULT_STD),
        "num_workers": 0,
    },
    "model": {
        "encoder": "resnet10t_w32",  # timm name or a wsss.models.VARIANTS narrow variant
        "pretrained_file": None,
        "stem_rule": "mean",
        "channels": [0, 1, 2, 3],  # RGBY indices; [0, 2, 3] = a model that never sees the protein
        "decoder_channels": [96, 64, 48, 32],
        "levels": 16,  # quantised energy levels
        "direction": True,
        "num_classes": 0,  # 19 adds the class head (needs data.cell_table)
    },
    "targets": {
        "cell_radius": 40.0,  # typical cell radius at 512 px; scaled with data.size
        "span": 0.75,  # energy levels spread over span x cell_radius
    },
    "loss": {
        "w_semantic": 1.0,
        "w_energy": 1.0,
        "w_direction": 0.2,
        "w_classes": 1.0,
        "semantic_class_weights": [1.0, 1.0, 2.0],  # background, interior, wall
        "dice": 1.0,
        "energy_boundary_boost": 2.0,
        "energy_boundary_levels": 3,
    },
    "post": {"fg_threshold": 0.5, "core_level": 6.0, "min_core_area": 30.0, "min_area": 300.0, "tta": True},
    "train": {
        "epochs": 20,
        "batch_size": 4,
        "val_batch_size": 1,
        "val_images": 8,  # validation images (loss and AP@0.6 after the watershed) every epoch; null = all
        "select": "ap",  # best checkpoint: highest val AP (ap), lowest val loss (loss) or the newest epoch (last)
        "lr": 2.0e-3,
        "betas": [0.9, 0.999],
        "weight_decay": 0.0,
        "scheduler": {"name": "none"},
        "precision": "auto",
        "channels_last": "auto",
        "grad_clip": None,
        "sync_bn": False,
        "seed": 0,
        "device": "auto",
        "threads": None,  # torch intra-op threads (1 on a shared CPU); null = torch's default
        "out": "runs/{name}_fold{fold}",
        "tensorboard": False,
        "progress": True,
        "resolved": None,
    },
}


#: Values of ``train.select`` (:func:`wsss.train.checkpoint.selection_score`, metric ``ap``).
SELECT_CHOICES: tuple[str, ...] = ("ap", "loss", "last")


def default_config() -> dict[str, Any]:
    """A fresh deep copy of :data:`DEFAULT_CONFIG`."""
    return copy.deepcopy(DEFAULT_CONFIG)
