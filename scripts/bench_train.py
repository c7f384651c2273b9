#!/usr/bin/env python
"""Time Puzzle-CAM training steps per precision and memory format, on this machine, in one run.

For each config: the auto precision choice (:mod:`wsss.precision`, printed with the CPU
capability torch reports), fp32, bf16, and each with channels_last on and off. Printed as
ms per image and as ratios measured in the same run: each variant's Puzzle-CAM step against
fp32's, channels_last on against off, and the Puzzle-CAM step against a plain step.

Puzzle-CAM step: full image + its 2x2 tiles through the network, ComboLoss, backward, Adam step.
Plain step: the full image only, BCE on the logits, backward, Adam step (a regular classifier).
Both step through a GradScaler as training does (active for fp16 on CUDA only); on CUDA every
timed step is bracketed by ``torch.cuda.synchronize``.
The two kinds of step (and the ``--variants``) are interleaved round-robin on the same batch
(random data at the config's size) so that machine load affects all alike; the medians over
``--steps`` repetitions are compared, and the range of the per-repetition ratio is shown. Everything printed is measured in this run.

    python scripts/bench_train.py                       # cpu_demo at its batch size
    python scripts/bench_train.py --variants 32 bf16 bf16+cl --configs configs/seresnext50_512.yaml --batch-sizes 2

On a CPU without native bf16 the bf16 rows are emulated and take an order of magnitude longer.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from wsss.config import load_config, merge
from wsss.losses import ComboLoss, bce_term
from wsss.models import build_model
from wsss.precision import AmpSettings, autocast, cpu_capability, describe, make_scaler, resolve_channels_last, resolve_precision
from wsss.train.defaults import default_config

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS: tuple[str, ...] = ("auto", "32+nocl", "32+cl", "bf16+nocl", "bf16+cl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=[str(ROOT / "configs/cpu_demo.yaml")],
                   help="training configs (default: cpu_demo; e.g. add configs/cpu_tiny.yaml with --batch-sizes 0 4)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[0],
                   help="batch per config (0 = the config's batch size, the default)")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   help="precisions: auto, 32, bf16, 16, config (the config's own); +cl = channels_last on, "
                        "+nocl = off, neither = the precision's auto rule (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="timed repetitions of each step kind (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    p.add_argument("--device", default="cpu")
    return p


def _backward_step(loss: torch.Tensor, opt, scaler: torch.amp.GradScaler) -> None:
    """Backward and optimizer step as in training: through the GradScaler (a no-op unless fp16 on CUDA)."""
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def _plain_step(model, opt, x, y, amp: AmpSettings, scaler: torch.amp.GradScaler) -> None:
    opt.zero_grad(set_to_none=True)
    with autocast(amp):
        logits, _ = model(x)
    _backward_step(bce_term(logits, y), opt, scaler)


def _puzzle_step(model, opt, x, y, amp: AmpSettings, crit: ComboLoss, scaler: torch.amp.GradScaler) -> None:
    opt.zero_grad(set_to_none=True)
    with autocast(amp):
        out = model(x, puzzle=True)
    _backward_step(crit(out, y).total, opt, scaler)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    """Seconds of ``fn()``; on CUDA the queued kernels are waited for before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def parse_variant(variant: str, cfg: dict, device: torch.device) -> tuple[AmpSettings, bool]:
    """``PRECISION[+cl|+nocl]`` -> the resolved AMP settings and whether channels_last is on."""
    base, _, layout = variant.partition("+")
    precision = cfg["train"]["precision"] if base == "config" else base
    amp = resolve_precision(precision, device, warn=False)
    if layout not in ("", "cl", "nocl"):
        raise SystemExit(f"bench_train: variant {variant!r}: the suffix must be +cl or +nocl")
    requested = cfg["train"].get("channels_last", "auto") if base == "config" else "auto"
    channels_last = layout == "cl" if layout else resolve_channels_last(requested, amp)
    return amp, channels_last


def _setup(cfg: dict, batch: int, variant: str, device: torch.device) -> dict:
    """Model, optimizer, batch and AMP settings of one variant (same seed: same weights and data)."""
    amp, channels_last = parse_variant(variant, cfg, device)
    torch.manual_seed(0)
    m = cfg["model"]
    model = build_model(m["name"], output_stride=m.get("output_stride"), grid=int(m.get("puzzle_grid", 2))).to(device)
    size = int(cfg["data"]["size"])
    x = torch.randn(batch, 4, size, size, device=device)
    y = (torch.rand(batch, 19, device=device) < 0.15).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    return {"model": model, "opt": torch.optim.Adam(model.parameters(), lr=1e-4), "x": x, "y": y, "amp": amp,
            "scaler": make_scaler(amp),
            "name": m["name"], "size": size, "batch": batch, "variant": variant,
            "precision": amp.name + ("+cl" if channels_last else ""), "dtype": amp.name, "cl": channels_last,
            "plain": [], "puzzle": []}


def bench(cfg: dict, batch: int, variants: Sequence[str], steps: int, warmup: int, device: torch.device) -> list[dict]:
    """Median seconds of a plain and a Puzzle-CAM step for each variant, measured round-robin."""
    setups = [_setup(cfg, batch, v, device) for v in variants]
    crit = ComboLoss()
    for rep in range(warmup + steps):
        for s in setups:
            tp = _timed(lambda: _plain_step(s["model"], s["opt"], s["x"], s["y"], s["amp"], s["scaler"]), device)
            tz = _timed(lambda: _puzzle_step(s["model"], s["opt"], s["x"], s["y"], s["amp"], crit, s["scaler"]), device)
            if rep >= warmup:
                s["plain"].append(tp)
                s["puzzle"].append(tz)
    rows = []
    for s in setups:
        tp, tz = statistics.median(s["plain"]), statistics.median(s["puzzle"])
        rows.append({"model": s["name"], "size": s["size"], "batch": s["batch"], "precision": s["precision"],
                     "variant": s["variant"], "dtype": s["dtype"], "cl": s["cl"], "puzzle_all": list(s["puzzle"]),
                     "plain_s": tp, "puzzle_s": tz, "ratio": tz / tp, "plain_ms_img": 1e3 * tp / s["batch"],
                     "puzzle_ms_img": 1e3 * tz / s["batch"],
                     "ratio_range": (min(z / p for z, p in zip(s["puzzle"], s["plain"])),
                                     max(z / p for z, p in zip(s["puzzle"], s["plain"])))})
    return rows


def _find(rows: list[dict], dtype: str, cl: bool) -> dict | None:
    return next((r for r in rows if r["dtype"] == dtype and r["cl"] == cl and "+" in r["variant"]), None)


def ratio_lines(rows: list[dict]) -> list[str]:
    """The one-run ratios: every variant's Puzzle-CAM step against fp32's, and channels_last on against off."""
    lines = []
    ref = _find(rows, "fp32", False) or next((r for r in rows if r["dtype"] == "fp32"), None)
    if ref is not None:
        for r in rows:
            if r is not ref:
                lines.append(f"  {r['variant']:<10} ({r['precision']}) step time / fp32's: {r['puzzle_s'] / ref['puzzle_s']:.2f}")
    for dtype in ("fp32", "bf16", "fp16"):
        on, off = _find(rows, dtype, True), _find(rows, dtype, False)
        if on is not None and off is not None:
            ratio = on["puzzle_s"] / off["puzzle_s"]
            verdict = "within noise" if abs(ratio - 1) < 0.05 else ("faster" if ratio < 1 else "slower") + " with channels_last"
            lines.append(f"  channels_last on / off ({dtype}): {ratio:.2f} ({verdict})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    batches = list(args.batch_sizes) + [0] * max(0, len(args.configs) - len(args.batch_sizes))
    auto = resolve_precision("auto", device, warn=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
          + (f" ({cpu_capability().describe()})" if device.type == "cpu" else "")
          + f"; auto chooses {describe(auto)}; {args.warmup} warm-up + {args.steps} timed steps of each kind (median)")
    header = (f"{'config':<22}{'model':<16}{'size':>5}{'batch':>6} {'variant':<10} {'precision':<10}{'plain s':>9}"
              f"{'puzzle s':>9}{'ratio':>7}{'plain ms/img':>13}{'puzzle ms/img':>14}   ratio range")
    print(header)
    for path, batch in zip(args.configs, batches):
        cfg = merge(default_config(), load_config(path))
        b = batch or int(cfg["train"]["batch_size"])
        rows = bench(cfg, b, args.variants, args.steps, args.warmup, device)
        for r in rows:
            lo, hi = r["ratio_range"]
            print(f"{Path(path).stem:<22}{r['model']:<16}{r['size']:>5}{r['batch']:>6} {r['variant']:<10} "
                  f"{r['precision']:<10}{r['plain_s']:>9.3f}{r['puzzle_s']:>9.3f}{r['ratio']:>7.2f}"
                  f"{r['plain_ms_img']:>13.1f}{r['puzzle_ms_img']:>14.1f}   {lo:.2f}-{hi:.2f}", flush=True)
        for line in ratio_lines(rows):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
