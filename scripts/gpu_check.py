#!/usr/bin/env python
"""GPU acceptance check: mixed-precision Puzzle-CAM training, throughput, inference, watershed, DDP; one JSON.

Run through ``bash scripts/gpu_check.sh`` on a machine with a CUDA GPU (it caps the run at 8 minutes
and exits 0 with one line on a machine without one). Everything uses this checkout and random
initialisation: nothing is downloaded or installed. Checks, in order (each is recorded in the
summary; a failing check is recorded with its one-line error and the others still run):

1. ``fp16``: ``--steps`` Puzzle-CAM training steps (``--model`` at ``--size``, batch ``--train-batch``,
   synthetic images and labels) with fp16 autocast + GradScaler (``wsss.precision``, the project's
   ``train_step``); every loss must be finite;
2. ``bf16``: ``--bf16-steps`` steps in bf16 autocast where the GPU supports it (else skipped);
3. ``train_img_s``: img/s of the fp16 training step at batch ``--bench-batch`` with channels_last
   on and off (a batch that does not fit is halved until it does; the batch used is recorded);
4. ``stage1_img_s``: img/s of the stage-1 forward (CAMs + probabilities) at batch ``--infer-batch``;
5. ``stage2_crops_s``: crops/s of the stage-2 forward (crops of ``--crop-size`` px, ``--crop-batch``
   per pass), and the end-to-end drivers ``run_stage1`` / ``run_stage2`` over ``--e2e-images``
   synthetic 512 px images with ``--workers`` DataLoader workers (pinned memory, asynchronous copies);
6. ``watershed_img_s``: img/s of the deep-watershed network's forward (``wsss.watershed``, encoder
   ``--ws-encoder``) at ``--size``;
7. ``ddp``: a one-process DistributedDataParallel group on NCCL (gloo for ``--device cpu``): two
   training steps of a small model, the object collectives of ``wsss.dist``.

``--device cpu`` runs the same code at whatever small sizes are given (a dry run of the code paths,
used by the tests); the GPU defaults are the writeup's setting (seresnext50_32x4d at 512).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.data.classes import NUM_CLASSES
from wsss.data.dataset import DEFAULT_MEAN, DEFAULT_STD
from wsss.losses import ComboLoss
from wsss.models import build_model
from wsss.precision import PrecisionError, cpu_capability, make_scaler, resolve_precision
from wsss.train.loop import PuzzleObjective, train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(n: int, size: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic normalised images and multi-hot labels (at least one class each)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, size, size, generator=g)
    y = (torch.rand(n, NUM_CLASSES, generator=g) < 0.15).float()
    y[torch.arange(n), torch.randint(0, NUM_CLASSES, (n,), generator=g)] = 1.0
    return x.to(device), y.to(device)


def _oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def train_steps(model_name: str, size: int, batch: int, steps: int, precision: str, device: torch.device,
                channels_last: bool = False) -> dict[str, Any]:
    """``steps`` Puzzle-CAM steps (the first one untimed); losses, finiteness and img/s of the timed ones."""
    torch.manual_seed(0)
    amp = resolve_precision(precision, device, warn=False)
    model = build_model(model_name).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = make_scaler(amp)
    criterion = PuzzleObjective(ComboLoss())
    x, y = _batch(batch, size, device)
    x = x.contiguous(memory_format=fmt)
    losses: list[float | None] = []
    start = 0.0
    for step in range(steps):
        if step == 1:
            _sync(device)
            start = time.perf_counter()
        terms = train_step(model, x, y, criterion, optimizer, scaler, amp, w_rec=0.25)
        losses.append(None if terms is None else float(terms.total.detach()))
    _sync(device)
    seconds = time.perf_counter() - start
    timed = max(1, steps - 1)
    finite = all(v is not None and np.isfinite(v) for v in losses)
    return {"precision": amp.name, "scaler": amp.use_scaler, "batch": batch, "steps": steps,
            "channels_last": channels_last, "finite": finite, "first_loss": losses[0], "last_loss": losses[-1],
            "img_s": round(timed * batch / seconds, 2) if steps > 1 else None,
            "scale": float(scaler.get_scale()) if amp.use_scaler else None}


def train_throughput(args: argparse.Namespace, device: torch.device, channels_last: bool) -> dict[str, Any]:
    """fp16 training img/s at ``--bench-batch``, halving the batch on out-of-memory."""
    batch = args.bench_batch
    while True:
        try:
            result = train_steps(args.model, args.size, batch, args.bench_steps + 1, args.precision, device,
                                 channels_last=channels_last)
            result["requested_batch"] = args.bench_batch
            return result
        except RuntimeError as exc:
            if not _oom(exc) or batch == 1:
                raise
        # out of the except block: the failed attempt's tensors are no longer referenced by the traceback
        gc.collect()
        torch.cuda.empty_cache()
        batch //= 2


@torch.inference_mode()
def _timed_forward(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def inference(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Stage-1 img/s and stage-2 crops/s of the bare forwards (the project's forward functions)."""
    from wsss.infer.cams import forward_cams
    from wsss.infer.runner import forward_probs
    from wsss.infer.settings import crop_side

    torch.manual_seed(0)
    model = build_model(args.model).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    x, _ = _batch(args.infer_batch, args.size, device)
    s1 = _timed_forward(lambda: forward_cams(model, x, (), args.precision), device, args.bench_steps)
    crop = crop_side(args.crop_size, args.size)
    crops, _ = _batch(args.crop_batch, crop, device, seed=1)
    s2 = _timed_forward(lambda: forward_probs(model, crops, (), args.precision), device, args.bench_steps)
    return {"stage1_img_s": round(args.infer_batch / s1, 2), "stage1_batch": args.infer_batch,
            "stage2_crops_s": round(args.crop_batch / s2, 1), "stage2_crop_batch": args.crop_batch,
            "crop_size": crop}


def end_to_end(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``run_stage1`` / ``run_stage2`` over synthetic 512 px images on disk (loader, pinned memory, workers)."""
    from wsss.data.io import write_rgby_png
    from wsss.infer.crops import CropParams
    from wsss.infer.runner import InferSettings, run_stage1, run_stage2
    from wsss.infer.settings import crop_side
    from wsss.infer.sources import ImageSource, MaskSource
    from wsss.masks import save_label_maps

    torch.manual_seed(0)
    model = build_model(args.model).to(device).eval()
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        cache, masks = Path(tmp) / "cache", Path(tmp) / "masks"
        cache.mkdir()
        masks.mkdir()
        side = 512
        step = side // 5  # a 5 x 5 grid of square cells
        grid = np.kron(np.arange(1, 26, dtype=np.uint16).reshape(5, 5), np.ones((step, step), np.uint16))
        labels = np.zeros((side, side), np.uint16)
        labels[:grid.shape[0], :grid.shape[1]] = grid
        rows = ["ID,width,height,source"]
        for k in range(args.e2e_images):
            write_rgby_png(cache / f"g{k:03d}.png", rng.integers(0, 255, (side, side, 4), dtype=np.uint8))
            save_label_maps(masks / f"g{k:03d}.npz", labels, labels, (2048, 2048))
            rows.append(f"g{k:03d},2048,2048,gpu_check")
        (cache / "manifest.csv").write_text("\n".join(rows) + "\n")
        crop = CropParams(size=crop_side(args.crop_size, args.size))
        for stage, runner in ((1, run_stage1), (2, run_stage2)):
            folder = Path(tmp) / f"out{stage}"
            st = InferSettings(out_dir=folder, input_size=args.size, mean=DEFAULT_MEAN, std=DEFAULT_STD, device=device,
                               batch_size=args.infer_batch if stage == 1 else args.crop_batch, workers=args.workers,
                               precision=args.precision, source=f"gpu_check{stage}", crop=crop,
                               images_per_batch=args.images_per_batch)
            start = time.perf_counter()
            summary = runner(model, ImageSource(cache).list_ids(), ImageSource(cache), MaskSource(masks, folder), st)
            seconds = time.perf_counter() - start
            key = "e2e_stage1_img_s" if stage == 1 else "e2e_stage2_crops_s"
            count = len(summary.processed) if stage == 1 else summary.n_cells
            out[key] = round(count / seconds, 2)
            out[f"e2e_stage{stage}_skipped"] = len(summary.skipped)
    out["e2e_images"] = args.e2e_images
    out["workers"] = args.workers
    return out


def watershed(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """img/s of the deep-watershed network's forward at ``--size`` (random init)."""
    from wsss.precision import autocast
    from wsss.watershed.defaults import DEFAULT_CONFIG
    from wsss.watershed.model import build_watershed_model

    torch.manual_seed(0)
    net = build_watershed_model({**DEFAULT_CONFIG["model"], "encoder": args.ws_encoder}).to(device).eval()
    amp = resolve_precision(args.precision, device, warn=False)
    x, _ = _batch(args.ws_batch, args.size, device)

    def run() -> None:
        with autocast(amp):
            net(x)

    seconds = _timed_forward(run, device, args.bench_steps)
    return {"encoder": args.ws_encoder, "batch": args.ws_batch, "precision": amp.name,
            "img_s": round(args.ws_batch / seconds, 2)}


def ddp_smoke(device: torch.device, tmp: Path) -> dict[str, Any]:
    """A one-process DDP group (NCCL on CUDA, gloo on CPU): two steps of a small model and the wsss.dist collectives."""
    import torch.distributed as dist

    from wsss import dist as wdist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{tmp / 'ddp_init'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = build_model("resnet10t_w16").to(device).train()
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index is not None else None)
        amp = resolve_precision("16" if device.type == "cuda" else "32", device, warn=False)
        optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.01)
        scaler = make_scaler(amp)
        x, y = _batch(4, 64, device)
        losses = []
        for _ in range(2):
            terms = train_step(ddp_model, x, y, PuzzleObjective(ComboLoss()), optimizer, scaler, amp, w_rec=0.25)
            losses.append(None if terms is None else float(terms.total.detach()))
        total = float(wdist.all_reduce_sum(torch.tensor([2.0]))[0])
        gathered = wdist.all_gather_objects({"rank": dist.get_rank()})
        told = wdist.on_main(lambda: "planned on rank 0")
        wdist.barrier()
        ok = (all(v is not None and np.isfinite(v) for v in losses) and total == 2.0
              and gathered == [{"rank": 0}] and told == "planned on rank 0")
        return {"backend": backend, "world_size": dist.get_world_size(), "losses": losses, "ok": ok}
    finally:
        dist.destroy_process_group()


def environment(device: torch.device) -> dict[str, Any]:
    """What the machine is."""
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                           "cpu": cpu_capability().describe(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gb=round(props.total_memory / 2 ** 30, 1), bf16=torch.cuda.is_bf16_supported(),
                   gpus=torch.cuda.device_count())
    return env


def run_check(name: str, fn: Callable[[], dict[str, Any]], summary: dict[str, Any]) -> None:
    """Run one check, record its result (or its one-line error) and its seconds; print one progress line."""
    start = time.perf_counter()
    try:
        result = fn()
        result["ok"] = bool(result.get("ok", result.get("finite", True)))
    except Exception as exc:  # noqa: BLE001 - a failing check is recorded and the others still run
        traceback.print_exc(file=sys.stderr)
        result = {"ok": False, "error": f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    result["seconds"] = round(time.perf_counter() - start, 1)
    summary["checks"][name] = result
    print(f"gpu_check: {name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']} s) "
          f"{ {k: v for k, v in result.items() if k not in ('ok', 'seconds')} }", file=sys.stderr, flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (a dry run of the code paths)")
    p.add_argument("--model", default="seresnext50_32x4d", help="Puzzle-CAM backbone (random init)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--precision", default="16", help="precision of the throughput checks (16 = fp16 + GradScaler)")
    p.add_argument("--steps", type=int, default=20, help="fp16 training steps that must all have a finite loss")
    p.add_argument("--train-batch", type=int, default=8, help="batch of the fp16 and bf16 step checks")
    p.add_argument("--bf16-steps", type=int, default=5)
    p.add_argument("--bench-batch", type=int, default=32, help="batch of the training img/s measurement")
    p.add_argument("--bench-steps", type=int, default=5, help="timed repetitions of each throughput measure")
    p.add_argument("--infer-batch", type=int, default=32, help="stage-1 images per forward")
    p.add_argument("--crop-size", default="auto", help="stage-2 crop side ('auto' = size/4 rounded to 32)")
    p.add_argument("--crop-batch", type=int, default=256, help="stage-2 crops per forward")
    p.add_argument("--images-per-batch", type=int, default=32, help="stage 2: images whose crops are pooled")
    p.add_argument("--e2e-images", type=int, default=64, help="images of the end-to-end stage runs")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the end-to-end runs")
    p.add_argument("--ws-encoder", default="seresnext50_32x4d", help="watershed network encoder")
    p.add_argument("--ws-batch", type=int, default=8)
    p.add_argument("--skip", nargs="*", default=[], help="checks to leave out (fp16 bf16 train_img_s inference "
                                                        "end_to_end watershed ddp)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON summary to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = torch.device(args.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                print("gpu_check: no CUDA GPU visible: nothing to check", file=sys.stderr)
                return 0
            device = torch.device("cuda", device.index or 0)
            torch.backends.cudnn.benchmark = True
        precision = resolve_precision(args.precision, device, warn=False)
    except (RuntimeError, PrecisionError) as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    summary: dict[str, Any] = {"environment": environment(device), "checks": {}, "settings": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    print(f"gpu_check: {summary['environment']}; throughput precision {precision.name}", file=sys.stderr, flush=True)
    checks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("fp16", lambda: train_steps(args.model, args.size, args.train_batch, args.steps, "16", device)),
        ("bf16", lambda: bf16_check(args, device)),
        ("train_img_s_channels_last", lambda: train_throughput(args, device, True)),
        ("train_img_s_contiguous", lambda: train_throughput(args, device, False)),
        ("inference", lambda: inference(args, device)),
        ("end_to_end", lambda: end_to_end(args, device)),
        ("watershed", lambda: watershed(args, device)),
    ]
    try:
        for name, fn in checks:
            if not any(name.startswith(s) for s in args.skip):
                run_check(name, fn, summary)
        if "ddp" not in args.skip:
            with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
                run_check("ddp", lambda: ddp_smoke(device, Path(tmp)), summary)
    except KeyboardInterrupt:  # gpu_check.sh's time limit (SIGINT): still print what was measured
        summary["interrupted"] = "stopped by the time limit or Ctrl-C; the checks not listed did not run"
    summary["ok"] = all(c["ok"] for c in summary["checks"].values()) and "interrupted" not in summary
    text = json.dumps(summary, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0 if summary["ok"] else 1


def bf16_check(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """bf16 autocast steps where the device has bf16 (CUDA: ``is_bf16_supported``; CPU: native bf16 only)."""
    supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_capability().native_bf16
    if not supported:
        return {"skipped": "bf16 not supported on this device", "ok": True}
    return train_steps(args.model, args.size, args.train_batch, args.bf16_steps, "bf16", device)


if __name__ == "__main__":
    sys.exit(main())
