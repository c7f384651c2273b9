#!/usr/bin/env python
"""Benchmark the two inference stages against a bare forward pass, measured in one run.

For every backbone (random init; no weights needed) at ``--size`` px:

* stage 1 = one forward pass + CAM normalisation + cell indexing, footprints and scores of every
  image (what ``wsss-infer --stage 1`` does per batch; image reading and segmentation excluded),
  over the bare ``model(x)`` forward of the same batch (goal <= 1.15);
* stage 2 = crop extraction of every cell of the batch's images + forward of the pooled crops
  ``--crop-batch`` at a time + sigmoid, over a bare forward of the same crops in the same batches
  (goal <= 1.3).

Label maps are the reference masks of ``../shared/data/hpa_sample/masks`` shrunk to the working
size when that folder exists (real cell counts and shapes), else a synthetic grid of cells.
Timings are the best of ``--repeats`` interleaved repetitions after one warm-up (the machine may
be shared; the fastest repetition is the one least disturbed by other load).

    python scripts/bench_infer.py --models resnet10t seresnext50_32x4d --size 512 --batch 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from wsss.infer.cams import amp_settings, autocast_context, forward_cams
from wsss.infer.crops import CropParams, extract_crops
from wsss.infer.runner import forward_probs
from wsss.infer.scoring import ScoreParams, cell_footprints, cell_measures, cell_probabilities
from wsss.masks import index_cells, resize_labels
from wsss.models import build_model
from wsss.precision import cpu_capability, describe

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_MASKS = ROOT.parent / "shared" / "data" / "hpa_sample" / "masks"


def label_maps(size: int, count: int) -> list[np.ndarray]:
    """``count`` label maps at ``size`` px: the hpa_sample reference masks if present, else a grid."""
    maps = []
    for path in sorted(SAMPLE_MASKS.glob("*_predictedmask.png")) if SAMPLE_MASKS.is_dir() else []:
        full = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        maps.append(resize_labels(full, size, size).astype(np.uint16))
    if not maps:
        step = max(8, size // 8)
        grid = np.arange(1, (size // step) ** 2 + 1, dtype=np.uint16).reshape(size // step, size // step)
        maps.append(np.kron(grid, np.ones((step, step), np.uint16))[:size, :size])
    return [maps[i % len(maps)] for i in range(count)]


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def bench_model(name: str, size: int, batch: int, crop_size: int, crop_batch: int, repeats: int,
                precision: str = "auto") -> dict:
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.randn(batch, 4, size, size)
    maps = label_maps(size, batch)
    probs_dummy = ScoreParams()
    crop_params = CropParams(size=crop_size)
    raw_zero = [-0.5] * 4

    def bare1() -> None:
        with torch.inference_mode(), autocast_context(x.device, precision):
            model(x)

    def stage1() -> None:
        probs, cams = forward_cams(model, x, precision=precision)
        p = probs.numpy()
        for j, labels in enumerate(maps):
            cells = index_cells(labels)
            fp = cell_footprints(cells, tuple(cams.shape[-2:]))
            cell_probabilities(*cell_measures(fp, cams[j], probs_dummy.threshold), p[j], probs_dummy)

    def crops_of_batch() -> torch.Tensor:
        return torch.cat([extract_crops(x[j], labels, index_cells(labels), crop_params, raw_zero)[0]
                          for j, labels in enumerate(maps)])

    crops = crops_of_batch()

    def bare2() -> None:
        with torch.inference_mode(), autocast_context(crops.device, precision):
            for s in range(0, crops.shape[0], crop_batch):
                model(crops[s:s + crop_batch])

    def stage2() -> None:
        pooled = crops_of_batch()
        for s in range(0, pooled.shape[0], crop_batch):
            forward_probs(model, pooled[s:s + crop_batch], precision=precision)

    for fn in (bare1, stage1, bare2, stage2):  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in ("bare1", "stage1", "bare2", "stage2")}
    for _ in range(repeats):  # interleaved so load changes hit every measure alike
        for key, fn in (("bare1", bare1), ("stage1", stage1), ("bare2", bare2), ("stage2", stage2)):
            times[key] += timed(fn, 1)
    med = {k: min(v) for k, v in times.items()}  # best of N: the run least disturbed by other load
    return {
        "model": name, "cells": int(crops.shape[0]),
        "bare1_ms_img": 1000 * med["bare1"] / batch, "stage1_ms_img": 1000 * med["stage1"] / batch,
        "ratio1": med["stage1"] / med["bare1"],
        "bare2_ms_img": 1000 * med["bare2"] / batch, "stage2_ms_img": 1000 * med["stage2"] / batch,
        "ratio2": med["stage2"] / med["bare2"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet10t", "seresnext50_32x4d"],
                        help="backbones (resnet10t = configs/cpu_tiny.yaml)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4, help="images per batch")
    parser.add_argument("--crop-size", type=int, default=CropParams().size)
    parser.add_argument("--crop-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--precision", default="auto", choices=("auto", "32", "16", "bf16"),
                        help="autocast precision of every forward pass, bare ones included (default auto)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_capability().describe()}; {describe(amp_settings(args.precision, 'cpu'))}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, size {args.size}, batch {args.batch}, "
          f"crops {args.crop_size}px x {args.crop_batch}, best of {args.repeats}; label maps from "
          f"{'hpa_sample reference masks' if SAMPLE_MASKS.is_dir() else 'a synthetic grid'}")
    header = (f"{'model':<20} {'cells':>5} {'bare1 ms/img':>12} {'stage1 ms/img':>13} {'ratio1':>7} "
              f"{'bare2 ms/img':>12} {'stage2 ms/img':>13} {'ratio2':>7}")
    print(header)
    for name in args.models:
        r = bench_model(name, args.size, args.batch, args.crop_size, args.crop_batch, args.repeats, args.precision)
        print(f"{r['model']:<20} {r['cells']:>5} {r['bare1_ms_img']:>12.1f} {r['stage1_ms_img']:>13.1f} "
              f"{r['ratio1']:>7.3f} {r['bare2_ms_img']:>12.1f} {r['stage2_ms_img']:>13.1f} {r['ratio2']:>7.3f}",
              flush=True)
    print("goals: ratio1 <= 1.15, ratio2 <= 1.3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
