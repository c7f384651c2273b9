"""Benchmark: submission mask encoding of every cell of an image, per-cell vs one pass.

For each real reference label map in ``../shared/data/hpa_sample/masks`` (2048 and 3072 px),
measured in this one run:

* ``naive``: the usual way -- per cell, the full-size boolean mask, its Fortran-ordered copy,
  ``pycocotools.mask.encode``, zlib level 9, base64 (:func:`wsss.masks.naive_encode_label_map`);
* ``one-pass``: :func:`wsss.masks.encode_label_map` on the same full-resolution map;
* ``one-pass from 512``: the pipeline's real path, a 512 px working-scale map upscaled by
  nearest neighbour to the original size inside the encoder (its naive counterpart upscales
  once, then encodes per cell).

It checks the strings are byte-identical and prints per-image times and the ratios.
Usage: ``python scripts/bench_encode.py [--repeats 3] [--data ../shared/data]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2

from wsss.masks import encode_label_map, naive_encode_label_map

ROOT = Path(__file__).resolve().parents[1]


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Smallest wall time of ``repeats`` calls (seconds) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the fast path (best kept)")
    parser.add_argument("--naive-repeats", type=int, default=1, help="repeats of the naive path (best kept)")
    args = parser.parse_args()
    paths = sorted((args.data / "hpa_sample" / "masks").glob("*_predictedmask.png"))
    if not paths:
        print(f"no reference masks under {args.data}/hpa_sample/masks", file=sys.stderr)
        return 1
    cv2.setNumThreads(1)
    print(f"{'image':10s} {'size':>5s} {'cells':>5s} {'path':18s} {'naive ms':>9s} {'ms/cell':>8s} "
          f"{'one-pass ms':>11s} {'ratio':>7s}")
    for path in paths:
        full = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # uint8 label map as published
        h, w = full.shape
        small = cv2.resize(full, (512, 512), interpolation=cv2.INTER_NEAREST)
        for label, labels, out_hw in (("full-res map", full, None), ("512 map upscaled", small, (h, w))):
            t_naive, ref = best_time(lambda: naive_encode_label_map(labels, out_hw=out_hw), args.naive_repeats)
            t_fast, got = best_time(lambda: encode_label_map(labels, out_hw=out_hw), args.repeats)
            if got != ref:
                print(f"{path.name}: MISMATCH between one-pass and per-cell strings", file=sys.stderr)
                return 1
            print(f"{path.name[:8]:10s} {h:5d} {len(ref):5d} {label:18s} {t_naive * 1e3:9.1f} "
                  f"{t_naive * 1e3 / max(len(ref), 1):8.1f} {t_fast * 1e3:11.1f} {t_naive / t_fast:6.1f}x")
    print(f"strings byte-identical in every case (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
