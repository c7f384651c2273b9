"""``wsss-seg-train --config configs/watershed_cpu.yaml --fold 0``: train the watershed cell segmenter.

Config resolution as in ``wsss-train``: built-in defaults (:mod:`wsss.watershed.defaults`) <- the
YAML file <- every ``--set key.sub=value`` <- the shortcut flags (``--epochs``, ``--out``,
``--cache``, ``--folds``, ``--masks``, ``--cell-table``, ``--precision``, ``--device``). Instance
truth (``--masks``): the synthetic ``masks/`` folder, precomputed masks, or ``wsss-segment`` output.
Multi-GPU/multi-node: the same command under ``torchrun``. The work is done by
:mod:`wsss.watershed.train`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsss.config import ConfigError, apply_overrides, load_config, merge, set_dotted
from wsss.precision import PRECISION_CHOICES, PrecisionError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``wsss-seg-train``."""
    p = argparse.ArgumentParser(prog="wsss-seg-train", description="Train the deep-watershed cell segmenter on one fold.")
    p.add_argument("--config", type=Path, required=True, help="experiment YAML (e.g. configs/watershed_cpu.yaml)")
    p.add_argument("--fold", type=int, default=0, help="validation fold of folds.csv (default 0)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--precision", choices=list(PRECISION_CHOICES), help="auto (default) | 16 | bf16 | 32")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--cache", help="override data.cache (images: prepared cache or Kaggle layout)")
    p.add_argument("--folds", help="override data.folds (wsss-folds output CSV)")
    p.add_argument("--masks", help="override data.masks (instance truth: label-map folder)")
    p.add_argument("--cell-table", help="override data.cell_table (per-cell probabilities for the class head)")
    p.add_argument("--out", help="run folder (override train.out; {name}, {model}, {fold} are filled in)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue {out}/last.safetensors (or CKPT); starts fresh if there is none yet")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set loss.w_direction=0.5 (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults <- YAML <- ``--set`` <- shortcut flags."""
    from wsss.watershed.defaults import default_config

    cfg = apply_overrides(merge(default_config(), load_config(args.config)), args.overrides)
    shortcuts = {"train.epochs": args.epochs, "train.precision": args.precision, "train.device": args.device,
                 "train.out": args.out, "data.cache": args.cache, "data.folds": args.folds, "data.masks": args.masks,
                 "data.cell_table": args.cell_table}
    for key, value in shortcuts.items():
        if value is not None:
            set_dotted(cfg, key, value)
    if args.quiet:
        cfg["train"]["progress"] = False
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wsss-seg-train``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from wsss.train.checkpoint import CheckpointError
    from wsss.train.loop import TrainError
    from wsss.watershed.train import fit_watershed

    try:
        summary = fit_watershed(resolve_config(args), args.fold, resume=args.resume)
    except (ConfigError, TrainError, CheckpointError, PrecisionError) as exc:
        print(f"wsss-seg-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wsss-seg-train: interrupted; continue with --resume", file=sys.stderr)
        return 130
    if rank == 0:
        ap = summary["val_ap"]
        print(f"wsss-seg-train: {summary['epochs']} epochs -> {summary['out']}  best epoch {summary['best_epoch']}  "
              f"last val AP@0.6 {'n/a' if ap is None else f'{ap:.4f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
