"""``wsss-train --config configs/X.yaml --fold 0``: train a Puzzle-CAM classifier (or, with
``--task cell`` / ``task: cell`` in the YAML, the cell classifier on single-cell crops) on one fold.

Config resolution: built-in defaults (:mod:`wsss.train.defaults`) <- the YAML file <- every
``--set key.sub=value`` <- the shortcut flags (``--task``, ``--masks``, ``--soft-labels``,
``--epochs``, ``--batch-size``, ``--lr``, ``--precision``, ``--device``, ``--out``, ``--cache``,
``--folds``; taken as typed, the strings
never parsed as YAML, so ``--out '{fold}'`` or ``--cache 512`` stay strings). The resolved config is saved
as ``{out}/config.yaml``. Multi-GPU/multi-node: launch the same command under ``torchrun``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsss.cli.common import EXIT_EPILOG, EXIT_INTERRUPTED, EXIT_OK, one_line, refuse
from wsss.config import ConfigError, apply_overrides, load_config, merge, set_dotted
from wsss.fileio import OutputPathError, check_output_dir
from wsss.precision import PRECISION_CHOICES, PrecisionError

logger = logging.getLogger(__name__)


def add_run_arguments(p: argparse.ArgumentParser, config_example: str, set_example: str) -> None:
    """The options every training command shares (config, fold, epochs, precision, device, data, out, resume, set, quiet)."""
    p.add_argument("--config", type=Path, required=True, help=f"experiment YAML (e.g. {config_example})")
    p.add_argument("--fold", type=int, default=0, help="validation fold of folds.csv (default 0)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--precision", choices=list(PRECISION_CHOICES),
                   help="auto (default): fp16+GradScaler on CUDA, bf16 on a CPU with native bf16 (AMX/AVX512-BF16), "
                        "else fp32; 16: fp16 on CUDA / bf16 on CPU; bf16; 32: off")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--cache", help="override data.cache (wsss-prepare output folder)")
    p.add_argument("--folds", help="override data.folds (wsss-folds output CSV)")
    p.add_argument("--out", help="run folder (override train.out; {name}, {model}, {fold} are filled in)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue {out}/last.safetensors (or CKPT); starts fresh if there is none yet")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"any config field, e.g. --set {set_example} (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``wsss-train``."""
    p = argparse.ArgumentParser(prog="wsss-train", epilog=EXIT_EPILOG,
                                description="Train a Puzzle-CAM classifier (ComboLoss) on one fold, or with --task cell "
                                            "a classifier on single-cell crops (configs/cell_*.yaml).")
    add_run_arguments(p, "configs/seresnext50_512.yaml or configs/cell_cpu.yaml", "loss.w_rec=0.5")
    p.add_argument("--task", choices=("image", "cell"), help="override task: image (Puzzle-CAM) or cell (cell crops)")
    p.add_argument("--masks", help="override cells.masks (task cell: the {ID}.npz label maps of wsss-segment)")
    p.add_argument("--soft-labels", help="override data.soft_labels (wsss-pseudo output: image_targets.parquet "
                                         "for task image, cell_targets.parquet for task cell)")
    p.add_argument("--batch-size", type=int, help="override train.batch_size (per process)")
    p.add_argument("--lr", type=float, help="override train.lr")
    return p


def resolve_run_config(args: argparse.Namespace, defaults: dict[str, Any], extra: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """``defaults`` <- YAML <- ``--set`` <- the shared shortcut flags and ``extra`` (dotted key -> value; ``None`` = not given)."""
    cfg = apply_overrides(merge(defaults, load_config(args.config)), args.overrides)
    shortcuts = {
        "train.epochs": args.epochs, "train.precision": args.precision, "train.device": args.device,
        "train.out": args.out, "data.cache": args.cache, "data.folds": args.folds, **(extra or {}),
    }
    for key, value in shortcuts.items():
        if value is not None:
            set_dotted(cfg, key, value)
    if args.quiet:
        cfg["train"]["progress"] = False
    return cfg


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults <- YAML <- ``--set`` <- shortcut flags, checked (unknown keys, types: :class:`ConfigError`)."""
    from wsss.train.defaults import check_train_config, default_config

    cfg = resolve_run_config(args, default_config(), {"train.batch_size": args.batch_size, "train.lr": args.lr,
                                                      "task": args.task, "cells.masks": args.masks,
                                                      "data.soft_labels": args.soft_labels})
    check_train_config(cfg)
    return cfg


def _num(value: float | None) -> str:
    """``value`` with 4 decimals, ``n/a`` when there is none (e.g. ``--epochs 0``: no epoch ran)."""
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wsss-train``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # torchrun: only rank 0 logs progress
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from wsss.data.io import ImageReadError
    from wsss.models.checkpoint import CheckpointError
    from wsss.train.loop import TrainError, fit, resolve_out_dir

    try:
        cfg = resolve_config(args)
        check_output_dir(resolve_out_dir(cfg, args.fold))
        summary = fit(cfg, args.fold, resume=args.resume)
    except (ConfigError, TrainError, CheckpointError, PrecisionError, OutputPathError) as exc:
        return refuse("wsss-train", exc)
    except ImageReadError as exc:  # a corrupt cache image, found while reading (maybe in a loader worker)
        return refuse("wsss-train", f"{one_line(exc)}; re-run wsss-prepare on that id (delete its cache PNG first)")
    except KeyboardInterrupt:
        print("wsss-train: interrupted; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if rank != 0:
        return EXIT_OK
    print(f"wsss-train: {summary['epochs']} epochs -> {summary['out']}  best epoch {summary['best_epoch']} "
          f"(by {summary['select']}; val loss {_num(summary['best_val_loss'])})  "
          f"last val macro mAP {_num(summary['val_map'])} "
          f"(chance {_num(summary['val_map_chance'])})  macro F1 {_num(summary['val_f1'])}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
