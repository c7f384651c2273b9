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
from typing import Any

from wsss.cli.train import add_run_arguments, resolve_run_config
from wsss.config import ConfigError
from wsss.precision import PrecisionError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``wsss-seg-train`` (the shared training options of ``wsss-train`` plus the truth)."""
    p = argparse.ArgumentParser(prog="wsss-seg-train", description="Train the deep-watershed cell segmenter on one fold.")
    add_run_arguments(p, "configs/watershed_cpu.yaml", "loss.w_direction=0.5")
    p.add_argument("--masks", help="override data.masks (instance truth: label-map folder)")
    p.add_argument("--cell-table", help="override data.cell_table (per-cell probabilities for the class head)")
    return p


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults <- YAML <- ``--set`` <- shortcut flags."""
    from wsss.watershed.defaults import default_config

    return resolve_run_config(args, default_config(), {"data.masks": args.masks, "data.cell_table": args.cell_table})


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wsss-seg-train``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from wsss.models.checkpoint import CheckpointError
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
