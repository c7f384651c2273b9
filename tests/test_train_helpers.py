"""Helpers for the training tests: a tiny prepared cache + folds.csv built from simple arrays.

Each image is 64x64 RGBY with dim random "cells" in red/blue/yellow; each class present adds its
own pattern to the green (protein) channel, so a tiny network can learn the labels quickly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsss.data.classes import format_label
from wsss.data.io import write_rgby_png

CLASSES = (0, 5, 16)


def _pattern(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((size, size), np.float32)
    if cls == 0:  # one big bright disc
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        out[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2] = 200
    elif cls == 5:  # a few small dots
        for _ in range(6):
            cy, cx = rng.integers(4, size - 4, 2)
            out[(yy - cy) ** 2 + (xx - cx) ** 2 < 4] = 255
    else:  # diffuse stripes
        out += 90 * (np.sin(xx / 2.0 + rng.random() * 6) > 0.3)
    return out


def make_cache(root: Path, n: int = 24, size: int = 64, n_folds: int = 2, seed: int = 0) -> tuple[Path, Path]:
    """Write ``n`` images to ``root/cache`` (+ manifest) and ``root/folds.csv``; return both paths."""
    rng = np.random.default_rng(seed)
    cache = root / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    rows, manifest = [], ["ID,width,height,source"]
    for i in range(n):
        labels = [c for c in CLASSES if rng.random() < 0.45] or [CLASSES[i % len(CLASSES)]]
        img = rng.integers(0, 40, (size, size, 4)).astype(np.float32)
        for c in labels:
            img[:, :, 1] += _pattern(c, size, rng)
        image_id = f"img{i:03d}"
        write_rgby_png(cache / f"{image_id}.png", np.clip(img, 0, 255).astype(np.uint8))
        manifest.append(f"{image_id},{size},{size},synthetic")
        rows.append(f"{image_id},{format_label(labels)},{i % n_folds}")
    (cache / "manifest.csv").write_text("\n".join(manifest) + "\n")
    folds = root / "folds.csv"
    folds.write_text("ID,Label,fold\n" + "\n".join(rows) + "\n")
    return cache, folds


def tiny_config(root: Path, cache: Path, folds: Path, **train: object) -> dict:
    """A resolved config for fast CPU tests (test_resnet at 64 px, fp32, no augmentation)."""
    from wsss.config import merge
    from wsss.train.defaults import default_config

    cfg = merge(default_config(), {
        "name": "t",
        "data": {"cache": str(cache), "folds": str(folds), "size": 64, "train_augment": None, "num_workers": 0,
                 "mean": [0.08, 0.15, 0.08, 0.08], "std": [0.05, 0.2, 0.05, 0.05]},
        "model": {"name": "test_resnet"},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "precision": "32", "device": "cpu",
                  "out": str(root / "run"), "progress": False, "seed": 0},
    })
    cfg["train"].update(train)
    return cfg


def test_make_cache_round_trip(tmp_path: Path) -> None:
    from wsss.data.folds import read_folds
    from wsss.data.io import read_rgby_png

    cache, folds = make_cache(tmp_path, n=6)
    frame = read_folds(folds)
    assert len(frame) == 6 and set(frame["fold"]) == {0, 1}
    assert read_rgby_png(cache / "img000.png").shape == (64, 64, 4)
