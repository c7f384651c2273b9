#!/usr/bin/env python
"""Per-image cost and peak memory of every pipeline step, measured here, and a projection to the real data.

Steps, per image (the real ``../shared/data/hpa_sample`` fields of view, 2048 and 3072 px, and
``--synthetic`` synthetic ones at each of ``--sides``: a 512 px ``wsss.data.synth`` field upscaled
with sensor-like noise, written as four PNGs like the Kaggle layout):

* ``read+resize``: the four PNGs decoded at full resolution and shrunk to 512 (``wsss-prepare``);
* ``segment``: ``hpa_seg`` on the 512 px image (``wsss-segment`` from the cache);
* ``stage1``: normalise + one forward of ``--model`` (random init) + CAM x cell scoring;
* ``stage2``: the crops of every cell + their forward, ``--crop-batch`` crops per pass (crops/s);
* ``encode``: the submission strings of every cell at the original size (``wsss-submit``).

Each step's time is wall time on ``--device`` (``torch.cuda.synchronize`` on a GPU) and its peak
RSS is the rise of the process's high-water mark above the RSS before the step (Linux: the mark is
reset through ``/proc/self/clear_refs`` before each step, after ``malloc_trim`` gave freed heap
memory back, so memory an earlier step freed does not hide this step's). Then, on the same images, the real
drivers ``run_stage1`` / ``run_stage2`` (DataLoader with ``--workers``, pinned memory on CUDA)
give end-to-end images/s and crops/s; and ``--procs`` processes share ``--scale-images`` images
(1 thread each) against one process doing them all: the measured speed-up on this machine.

The projection for ``--test-images`` and ``--oof-images`` on each of ``--processes`` counts of
processes prints its assumptions. The image-size mix is the one of the sample submission's 559
test images (``--mix`` overrides it). A GPU figure is never invented: pass ``--gpu-stage1-img-s``
and ``--gpu-stage2-crops-s`` (measured by ``scripts/gpu_check.sh`` or this script with
``--device cuda``) for the GPU lines. The same command runs unchanged on a GPU machine
(``--device cuda``).

    OMP_NUM_THREADS=1 python scripts/bench_pipeline.py --procs 2
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from wsss.data.dataset import DEFAULT_MEAN, DEFAULT_STD, normalize
from wsss.data.io import read_rgby, resize_rgby
from wsss.dist import share_of
from wsss.infer.cams import amp_settings, forward_cams
from wsss.infer.crops import CropParams, extract_crops
from wsss.infer.runner import InferSettings, forward_probs, run_stage1, run_stage2
from wsss.infer.scoring import ScoreParams, cell_footprints, cell_measures, cell_probabilities
from wsss.infer.settings import crop_side
from wsss.infer.sources import ImageSource, MaskSource
from wsss.masks import encode_label_map, index_cells, save_label_maps
from wsss.models import build_model
from wsss.precision import cpu_capability, describe

ROOT = Path(__file__).resolve().parents[1]
STEPS: tuple[str, ...] = ("read+resize", "segment", "stage1", "stage2", "encode")
WORK_SIDE = 512
SIZE_DEPENDENT = frozenset({"read+resize", "encode"})


@dataclass(frozen=True)
class Sample:
    """One field of view in the Kaggle layout."""

    image_id: str
    root: Path
    kind: str  # real | synthetic
    side: int


# ----- memory -----------------------------------------------------------------------------------------------

def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _trim() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so a step's rise is its own memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    """Reset the process's RSS high-water mark (Linux ``clear_refs``); False when not possible."""
    _trim()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measured(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """``(result, seconds, peak RSS rise in MB)`` of one call (NaN MB when the mark cannot be reset)."""
    ok = _reset_peak()
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    rise = (_status_kb("VmHWM") - before) / 1024 if ok else float("nan")
    return result, seconds, rise


# ----- inputs -----------------------------------------------------------------------------------------------

def synthetic_samples(out: Path, sides: list[int], count: int, seed: int) -> list[Sample]:
    """``count`` synthetic fields per side: a 512 px synthetic render upscaled, plus sensor-like noise."""
    from wsss.data.synth import SynthOptions, render_image

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for k in range(count):
        base = render_image(SynthOptions(size=WORK_SIDE, seed=seed, cells_min=12, cells_max=25), k)
        for side in sides:
            big = cv2.resize(base.rgby, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.int16)
            noisy = np.clip(big + rng.normal(0, 3, big.shape), 0, 255).astype(np.uint8)
            image_id = f"synth{side}_{k}"
            for c, name in enumerate(("red", "green", "blue", "yellow")):
                cv2.imwrite(str(out / f"{image_id}_{name}.png"), noisy[:, :, c])
            samples.append(Sample(image_id, out, "synthetic", side))
    return samples


def real_samples(data: Path) -> list[Sample]:
    """The hpa_sample fields of view (empty when absent)."""
    images = data / "hpa_sample" / "images"
    if not images.is_dir():
        return []
    from wsss.data.io import list_image_ids

    out = []
    for image_id in list_image_ids(images):
        side = cv2.imread(str(images / f"{image_id}_blue.png"), cv2.IMREAD_UNCHANGED).shape[0]
        out.append(Sample(image_id, images, "real", int(side)))
    return out


# ----- steps ------------------------------------------------------------------------------------------------

class Pipeline:
    """The model and settings every step uses."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(0)
        self.device = device
        self.model = build_model(args.model).eval().to(device)
        self.precision = args.precision
        self.input_size = args.input_size
        self.crop = CropParams(size=crop_side(args.crop_size, args.input_size))
        self.crop_batch = args.crop_batch
        self.score = ScoreParams()
        self.raw_zero = [-m / s for m, s in zip(DEFAULT_MEAN, DEFAULT_STD)]
        with torch.inference_mode():
            _, cams = self.model(torch.zeros(1, 4, args.input_size, args.input_size, device=device))
        self.cam_hw = (int(cams.shape[-2]), int(cams.shape[-1]))

    def warm_up(self) -> None:
        """One stage-1 and one stage-2 forward on zeros (first calls set up the kernels)."""
        with torch.inference_mode():
            self.model(torch.zeros(1, 4, self.input_size, self.input_size, device=self.device))
            self.model(torch.zeros(self.crop_batch, 4, self.crop.size, self.crop.size, device=self.device))

    def read_resize(self, s: Sample) -> np.ndarray:
        return resize_rgby(read_rgby(s.root, s.image_id), WORK_SIDE)

    @staticmethod
    def segment(small: np.ndarray) -> np.ndarray:
        from hpa_seg.pipeline import segment

        cells, _ = segment(small, WORK_SIDE)
        return cells

    def stage1(self, small: np.ndarray, labels: np.ndarray) -> np.ndarray:
        x = normalize(resize_rgby(small, self.input_size))[None].to(self.device)
        probs, cams = forward_cams(self.model, x, (), self.precision)
        cells = index_cells(labels)
        fp = cell_footprints(cells, self.cam_hw)
        return cell_probabilities(*cell_measures(fp, cams[0], self.score.threshold), probs[0].cpu().numpy(), self.score)

    def crops(self, small: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        crops, _ = extract_crops(normalize(small), labels, index_cells(labels), self.crop, self.raw_zero)
        return crops

    def stage2_forward(self, crops: torch.Tensor) -> np.ndarray:
        outs = [forward_probs(self.model, crops[i:i + self.crop_batch].to(self.device), (), self.precision).cpu()
                for i in range(0, crops.shape[0], self.crop_batch)]
        return torch.cat(outs).numpy() if outs else np.zeros((0, 19), np.float32)

    @staticmethod
    def encode(labels: np.ndarray, side: int) -> dict[int, str]:
        return encode_label_map(labels, out_hw=(side, side))


def measure_samples(pipe: Pipeline, samples: list[Sample]) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """One row per (image, step): seconds, peak RSS rise, cells, crops; plus each image's 512 px image and map."""
    rows, kept = [], {}
    for s in samples:
        small, t_read, m_read = measured(lambda: pipe.read_resize(s), torch.device("cpu"))
        labels, t_seg, m_seg = measured(lambda: pipe.segment(small), torch.device("cpu"))
        n_cells = int(labels.max(initial=0))
        _, t_s1, m_s1 = measured(lambda: pipe.stage1(small, labels), pipe.device)
        crops, t_crop, m_crop = measured(lambda: pipe.crops(small, labels), torch.device("cpu"))
        _, t_fwd, m_fwd = measured(lambda: pipe.stage2_forward(crops), pipe.device)
        _, t_enc, m_enc = measured(lambda: pipe.encode(labels, s.side), torch.device("cpu"))
        base = {"image": s.image_id[:12], "kind": s.kind, "side": s.side, "cells": n_cells}
        for step, sec, mb in (("read+resize", t_read, m_read), ("segment", t_seg, m_seg), ("stage1", t_s1, m_s1),
                              ("stage2", t_crop + t_fwd, max(m_crop, m_fwd)), ("encode", t_enc, m_enc)):
            rows.append({**base, "step": step, "seconds": sec, "peak_mb": mb})
        rows.append({**base, "step": "stage2 crops only", "seconds": t_crop, "peak_mb": m_crop, "crops": len(crops)})
        rows.append({**base, "step": "stage2 forward only", "seconds": t_fwd, "peak_mb": m_fwd, "crops": len(crops)})
        kept[s.image_id] = (small, labels)
        print(f"  measured {s.kind} {s.side} px {s.image_id[:12]}: {n_cells} cells, "
              f"{sum(r['seconds'] for r in rows[-7:-2]):.2f} s", flush=True)
    return pd.DataFrame(rows), kept


# ----- end to end: the real stage drivers -------------------------------------------------------------------

def end_to_end(pipe: Pipeline, samples: list[Sample], kept: dict, args: argparse.Namespace, tmp: Path) -> dict:
    """images/s of ``run_stage1`` and crops/s of ``run_stage2`` over a cache of ``--e2e-images`` copies."""
    from wsss.data.io import write_rgby_png

    cache, masks = tmp / "cache", tmp / "masks"
    cache.mkdir()
    masks.mkdir()
    rows = ["ID,width,height,source"]
    for k in range(args.e2e_images):
        s = samples[k % len(samples)]
        small, labels = kept[s.image_id]
        image_id = f"e2e{k:04d}"
        write_rgby_png(cache / f"{image_id}.png", small)
        save_label_maps(masks / f"{image_id}.npz", labels, labels, (s.side, s.side))
        rows.append(f"{image_id},{s.side},{s.side},bench")
    (cache / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = {}
    for stage, runner in ((1, run_stage1), (2, run_stage2)):
        folder = tmp / f"out{stage}"
        st = InferSettings(out_dir=folder, input_size=args.input_size, mean=DEFAULT_MEAN, std=DEFAULT_STD,
                           device=pipe.device, batch_size=args.stage1_batch if stage == 1 else args.crop_batch,
                           workers=args.workers, precision=args.precision, chunk_images=64,
                           source=f"bench{stage}", crop=pipe.crop, images_per_batch=args.images_per_batch)
        ids = ImageSource(cache).list_ids()
        start = time.perf_counter()
        summary = runner(pipe.model, ids, ImageSource(cache), MaskSource(masks, folder), st)
        seconds = time.perf_counter() - start
        out[stage] = {"images": len(summary.processed), "cells": summary.n_cells, "seconds": seconds}
    return out


# ----- 1 vs P processes -------------------------------------------------------------------------------------

def _scale_worker(args: argparse.Namespace, samples: list[Sample], barrier: Any, queue: Any) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    pipe = Pipeline(args, torch.device("cpu"))
    pipe.warm_up()
    barrier.wait()
    start = time.time()
    for s in samples:
        small = pipe.read_resize(s)
        labels = pipe.segment(small)
        pipe.stage1(small, labels)
        pipe.stage2_forward(pipe.crops(small, labels))
        pipe.encode(labels, s.side)
    queue.put((start, time.time()))


def timed_processes(args: argparse.Namespace, shares: list[list[Sample]]) -> float:
    """Wall seconds from the common start of ``len(shares)`` processes to the last one's end."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(len(shares)), ctx.Queue()
    procs = [ctx.Process(target=_scale_worker, args=(args, share, barrier, queue)) for share in shares]
    for p in procs:
        p.start()
    spans = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return max(e for _, e in spans) - min(s for s, _ in spans)


def scaling(args: argparse.Namespace, samples: list[Sample], table: pd.DataFrame) -> tuple[float, float, int]:
    """``(seconds with 1 process, seconds with --procs processes, images)`` on the same images.

    The shares are balanced (:func:`wsss.dist.share_of`) by each image's cost measured above: after
    ``read+resize`` everything runs at 512 px, so the pixel count alone would mis-balance this mix.
    """
    work = [samples[k % len(samples)] for k in range(args.scale_images)]
    steps = table[table["step"].isin(STEPS)]
    measured_cost = steps.groupby("image")["seconds"].sum().to_dict()
    ids = [f"{k}" for k in range(len(work))]
    costs = [measured_cost.get(s.image_id[:12], 1.0) for s in work]
    shares = [[work[int(i)] for i in share_of(ids, costs, args.procs, r)] for r in range(args.procs)]
    print(f"scaling shares: {[len(sh) for sh in shares]} images, "
          f"{[round(sum(costs[int(i)] for i in share_of(ids, costs, args.procs, r)), 1) for r in range(args.procs)]} "
          "s of measured work", flush=True)
    return timed_processes(args, [work]), timed_processes(args, shares), len(work)


# ----- projection -------------------------------------------------------------------------------------------

def size_mix(data: Path, override: str | None) -> dict[int, float]:
    """Fraction of images per side: ``--mix 2048:0.8,3072:0.2`` or the sample submission's test images."""
    if override:
        pairs = [item.split(":") for item in override.split(",")]
        mix = {int(side): float(frac) for side, frac in pairs}
    else:
        path = data / "hpa_sample_submission.csv"
        if not path.is_file():
            return {2048: 1.0}
        sides = pd.read_csv(path)["ImageWidth"].astype(int)
        mix = (sides.value_counts() / len(sides)).to_dict()
    total = sum(mix.values())
    return {int(k): v / total for k, v in sorted(mix.items())}


def cost_at(per_side: dict[int, float], side: int) -> float:
    """A step's cost at ``side``: measured there, else the nearest measured side scaled by pixel count."""
    if side in per_side:
        return per_side[side]
    near = min(per_side, key=lambda s: abs(s - side))
    return per_side[near] * (side / near) ** 2


def projection(table: pd.DataFrame, mix: dict[int, float], speedup: float, procs_measured: int,
               args: argparse.Namespace) -> list[str]:
    """The projection lines (see the module doc), assumptions first."""
    med = table.groupby(["step", "side"])["seconds"].median()
    per_step = {}
    for step in STEPS:
        by_side = {int(s): float(med[(step, s)]) for s in med[step].index}
        if step in SIZE_DEPENDENT:
            per_step[step] = sum(frac * cost_at(by_side, side) for side, frac in mix.items())
        else:  # works on the 512 px cache: the same at every original side
            per_step[step] = statistics.mean(by_side.values())
    crops = table[table["step"] == "stage2 crops only"]
    crops_per_image = float(crops["crops"].mean())
    crop_s = float(med["stage2 crops only"].mean())
    cpu_image = sum(per_step.values())
    eff = speedup / procs_measured
    lines = ["assumptions:",
             f"  image sides {', '.join(f'{s} px {100 * f:.1f}%' for s, f in mix.items())} "
             f"({'--mix' if args.mix else 'the 559 test images of hpa_sample_submission.csv'}); OOF images take the same mix",
             "  a step's per-image cost = the median measured here at that side (1 thread, CPU above); read+resize "
             "and encode scale with the original pixel count (other sides from the nearest measured one), the "
             "others work on the 512 px cache (mean over the sides)",
             f"  P CPU processes of 1 thread on P free cores: 'ideal' = efficiency 1, 'measured' = the parallel "
             f"efficiency measured here with {procs_measured} processes ({eff:.2f}; a shared machine lowers it)",
             f"  {crops_per_image:.1f} cells (crops) per image, the mean of the measured images",
             "  the pipeline: wsss-prepare (read+resize) -> wsss-segment on the 512 px cache -> stage 1 -> stage 2 -> "
             "encode; one model, no TTA",
             "  the CPU per-image cost by step (s): " + ", ".join(f"{k} {v:.3f}" for k, v in per_step.items())
             + f" = {cpu_image:.2f} s"]
    gpu = args.gpu_stage1_img_s and args.gpu_stage2_crops_s
    if gpu:
        cpu_side = per_step["read+resize"] + per_step["segment"] + per_step["encode"] + crop_s
        gpu_side = 1.0 / args.gpu_stage1_img_s + crops_per_image / args.gpu_stage2_crops_s
        lines += [f"  GPU (given, not measured here): stage 1 {args.gpu_stage1_img_s:g} img/s, stage 2 "
                  f"{args.gpu_stage2_crops_s:g} crops/s; per image {gpu_side:.3f} s of GPU time",
                  f"  per GPU process, {args.cpu_per_gpu} CPU cores do the reading, segmentation, crop extraction and "
                  f"encoding ({cpu_side:.2f} s per image on one core) in DataLoader workers overlapping the GPU: "
                  "time per image = max(GPU time, CPU time / cores)"]
    else:
        lines.append("  no GPU figures given (--gpu-stage1-img-s, --gpu-stage2-crops-s): CPU lines only")
    lines.append(f"{'images':>8} {'P':>4} {'CPU h ideal':>12} {'CPU h measured':>15}"
                 + (f" {'GPU h':>8}" if gpu else ""))
    for n in (args.test_images, args.oof_images):
        for p in args.processes:
            ideal = n * cpu_image / p / 3600
            text = f"{n:>8} {p:>4} {ideal:>12.2f} {ideal / (eff if p > 1 else 1.0):>15.2f}"
            if gpu:
                per = max(gpu_side, cpu_side / max(1, args.cpu_per_gpu))
                text += f" {n * per / p / 3600:>8.2f}"
            lines.append(text)
    return lines


# ----- main -------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder holding hpa_sample/")
    p.add_argument("--sides", type=int, nargs="+", default=[2048, 3072], help="synthetic image sides")
    p.add_argument("--synthetic", type=int, default=1, help="synthetic images per side (0: none)")
    p.add_argument("--model", default="seresnext50_32x4d", help="backbone (random init; the writeup's by default)")
    p.add_argument("--input-size", type=int, default=512)
    p.add_argument("--crop-size", default="auto", help="stage-2 crop side ('auto' = input/4 rounded to 32)")
    p.add_argument("--crop-batch", type=int, default=32, help="crops per stage-2 forward")
    p.add_argument("--stage1-batch", type=int, default=8, help="images per stage-1 forward (end-to-end run)")
    p.add_argument("--images-per-batch", type=int, default=8, help="images whose crops are pooled (end-to-end run)")
    p.add_argument("--e2e-images", type=int, default=8, help="images of the end-to-end stage runs (0: skip)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the end-to-end runs")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--precision", default="auto", choices=("auto", "32", "16", "bf16"))
    p.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    p.add_argument("--procs", type=int, default=2, help="processes of the scaling measurement (1: skip it)")
    p.add_argument("--scale-images", type=int, default=4, help="images of the scaling measurement")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 8, 32], help="process counts of the projection")
    p.add_argument("--test-images", type=int, default=559)
    p.add_argument("--oof-images", type=int, default=100_000)
    p.add_argument("--mix", default=None, help="image-side mix, e.g. 2048:0.9,3072:0.1 (default: the test set's)")
    p.add_argument("--gpu-stage1-img-s", type=float, default=None, help="GPU stage-1 images/s (measured elsewhere)")
    p.add_argument("--gpu-stage2-crops-s", type=float, default=None, help="GPU stage-2 crops/s (measured elsewhere)")
    p.add_argument("--cpu-per-gpu", type=int, default=4, help="CPU cores feeding each GPU process (GPU projection)")
    p.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    p.add_argument("--from-json", type=Path, default=None,
                   help="measure nothing: print the table and the projection of a saved --json (e.g. with GPU figures)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        table = pd.DataFrame(saved["steps"])
        print(f"measurements of {args.from_json}: {saved.get('machine', '')}")
        print_table(table)
        for line in projection(table, size_mix(args.data, args.mix), saved["speedup"], saved["procs"], args):
            print(line)
        return 0
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    device = torch.device(args.device)
    machine = (f"{cpu_capability().describe()}; {describe(amp_settings(args.precision, device))}; "
               f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), OMP_NUM_THREADS="
               f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs visible, device {device}")
    print(machine)
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        samples = real_samples(args.data) + synthetic_samples(tmp / "synth", args.sides, args.synthetic, 3)
        if not samples:
            print("no images: neither hpa_sample nor --synthetic", file=sys.stderr)
            return 1
        pipe = Pipeline(args, device)
        pipe.warm_up()
        print(f"model {args.model} at {args.input_size} px (random init), crops {pipe.crop.size} px x "
              f"{args.crop_batch} per forward; {len(samples)} images")
        table, kept = measure_samples(pipe, samples)
        print_table(table)
        print(f"process RSS after every image was measured: {_status_kb('VmRSS') / 1024:.0f} MB (model, libraries and "
              "the 512 px copies kept for the end-to-end run included); each image's full-resolution arrays are freed "
              "after its steps")
        e2e = end_to_end(pipe, samples, kept, args, tmp) if args.e2e_images else {}
        for stage, r in e2e.items():
            unit = f"{r['images'] / r['seconds']:.2f} images/s" if stage == 1 else \
                f"{r['cells'] / r['seconds']:.1f} crops/s ({r['images'] / r['seconds']:.2f} images/s)"
            print(f"end to end run_stage{stage} on {device}, {args.workers} workers: {r['images']} images, "
                  f"{r['cells']} cells in {r['seconds']:.1f} s: {unit}")
        speedup, procs_measured = 1.0, 1
        if args.procs > 1:
            t1, tp, n = scaling(args, samples, table)
            speedup, procs_measured = t1 / tp, args.procs
            print(f"scaling: {n} images (read+resize, segment, stage 1, stage 2, encode; 1 thread per process): "
                  f"1 process {t1:.1f} s, {args.procs} processes {tp:.1f} s: speed-up {speedup:.2f}x "
                  f"(efficiency {speedup / args.procs:.2f})")
        for line in projection(table, size_mix(args.data, args.mix), speedup, procs_measured, args):
            print(line)
        if args.json:
            args.json.write_text(json.dumps({"machine": machine, "model": args.model,
                                             "steps": table.to_dict(orient="records"), "end_to_end": e2e,
                                             "speedup": speedup, "procs": procs_measured}, indent=2, default=str))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def print_table(table: pd.DataFrame) -> None:
    """Per-step seconds and peak RSS rise by side and kind (median over images), crops/s of stage 2."""
    print(f"{'step':<20} {'kind':<9} {'side':>5} {'n':>2} {'s/image':>8} {'peak MB':>8}")
    for (step, kind, side), g in table.groupby(["step", "kind", "side"], sort=False):
        print(f"{step:<20} {kind:<9} {side:>5} {len(g):>2} {statistics.median(g['seconds']):>8.3f} "
              f"{g['peak_mb'].max():>8.1f}")
    crops = table[table["step"].str.startswith("stage2 ")]
    for step, g in crops.groupby("step"):
        print(f"{step}: {g['crops'].sum() / g['seconds'].sum():.1f} crops/s over {int(g['crops'].sum())} crops")


if __name__ == "__main__":
    sys.exit(main())
