"""Tune the stage-1 scoring and the ensemble on out-of-fold tables, under both cell-metric protocols.

Runs ``wsss-infer --stage 1`` in-process once per setting (each in its own folder under
``OUT/runs/``, so a re-run reuses finished settings), scores every table against the synthetic
truth with :func:`wsss.metrics.cell.match_predictions` (mask IoU 0.6, group ties) under the
official and the strict protocol, on all images and on the heterogeneous ones, and writes
``OUT/stage1.csv``. With ``--stage2 TABLE`` it also scores ensembles of the base stage-1 table
and of the best official one with the stage-2 table (methods x stage-2 weights) into
``OUT/ensemble.csv``.

Settings: the base (``configs/infer.yaml`` plus ``--base KEY=VALUE``), then every ``--sweep
KEY=V1,V2,...`` varied one at a time around it, then every ``--combo "K1=V1 K2=V2"``. Example::

    python scripts/tune_stage1.py --ckpt run_fold0 --images cache --masks seg --truth synth \\
        --fold 0 --folds folds.csv --out tune --precision 32 \\
        --sweep stage1.cam_weight=0,0.25,0.5,0.75,1 --sweep stage1.threshold=0.15,0.5 \\
        --stage2 pred/cells_stage2.parquet
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from wsss.cli.demo import heterogeneous_ids
from wsss.cli.infer import main as infer_main
from wsss.ensemble import METHODS as ENSEMBLE_METHODS
from wsss.ensemble import Source, ensemble, naive_cells_from_images
from wsss.metrics.cell import PROTOCOLS, TruthImage, describe, match_predictions, preds_from_cell_table
from wsss.metrics.cell import truth_from_label_dir
from wsss.submission import read_cell_table

logger = logging.getLogger(__name__)

SCORE_COLUMNS: tuple[str, ...] = tuple(f"{p} {s}" for p in PROTOCOLS for s in ("all", "heterogeneous"))


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the tuning script."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint or run folder (wsss-infer --ckpt)")
    p.add_argument("--images", type=Path, required=True, help="prepared cache (wsss-infer --images)")
    p.add_argument("--masks", type=Path, required=True, help="label maps (wsss-infer --masks)")
    p.add_argument("--truth", type=Path, required=True, help="synthetic folder with the per-cell truth")
    p.add_argument("--out", type=Path, required=True, help="working folder (runs/, stage1.csv, ensemble.csv)")
    p.add_argument("--fold", type=int, default=None, help="out-of-fold ids of this fold (with --folds)")
    p.add_argument("--folds", type=Path, default=None, help="folds CSV")
    p.add_argument("--ids", type=Path, default=None, help="id list (default: the fold's ids, else every image)")
    p.add_argument("--precision", default="32", help="wsss-infer --precision (default 32)")
    p.add_argument("--base", action="append", default=[], metavar="KEY=VALUE", help="base setting overrides")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2", help="one-at-a-time sweep")
    p.add_argument("--combo", action="append", default=[], metavar="'K1=V1 K2=V2'", help="extra setting")
    p.add_argument("--stage2", type=Path, default=None, help="stage-2 table for the ensemble grid")
    p.add_argument("--weights", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                   help="stage-2 weights of the ensemble grid (stage 1 has weight 1; default 0.5 1 2)")
    return p


def settings_list(base: Sequence[str], sweeps: Sequence[str], combos: Sequence[str]) -> list[tuple[str, ...]]:
    """The settings to run, each a tuple of ``KEY=VALUE`` overrides (the base first, no repeats)."""
    out: list[tuple[str, ...]] = [tuple(base)]
    for sweep in sweeps:
        key, _, values = sweep.partition("=")
        for value in values.split(","):
            out.append(tuple([b for b in base if not b.startswith(f"{key}=")] + [f"{key}={value}"]))
    for combo in combos:
        keys = {item.partition("=")[0] for item in combo.split()}
        out.append(tuple([b for b in base if b.partition("=")[0] not in keys] + combo.split()))
    unique: list[tuple[str, ...]] = []
    for setting in out:
        if setting not in unique:
            unique.append(setting)
    return unique


def slug(setting: Sequence[str]) -> str:
    """A folder name for a setting."""
    text = "_".join(s.replace("stage1.", "") for s in setting) or "base"
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text)


def run_setting(args: argparse.Namespace, setting: Sequence[str]) -> Path:
    """Stage 1 with ``setting``; returns its cell table (skipped when already finished)."""
    out = args.out / "runs" / slug(setting)
    argv = ["--stage", "1", "--ckpt", str(args.ckpt), "--images", str(args.images), "--masks", str(args.masks),
            "--out", str(out), "--workers", "0", "--precision", str(args.precision)]
    if args.fold is not None:
        argv += ["--fold", str(args.fold), "--folds", str(args.folds)]
    if args.ids is not None:
        argv += ["--ids", str(args.ids)]
    for item in setting:
        argv += ["--set", item]
    if infer_main(argv) != 0:
        raise RuntimeError(f"wsss-infer failed for {' '.join(setting)}")
    return out


def scores(table: pd.DataFrame, truth: dict[str, TruthImage], hetero: Sequence[str]) -> dict[str, float]:
    """mAP of a per-cell table under both protocols, on all truth images and on ``hetero``."""
    preds = preds_from_cell_table(table)
    every = match_predictions(preds, truth)
    subset = match_predictions({i: preds[i] for i in hetero if i in preds}, {i: truth[i] for i in hetero})
    out: dict[str, float] = {}
    for protocol in PROTOCOLS:
        out[f"{protocol} all"] = every.result(protocol).map
        out[f"{protocol} heterogeneous"] = subset.result(protocol).map
    out["official all best ties"] = every.tie_range("official")[1]
    return out


def ensemble_grid(stage1: dict[str, pd.DataFrame], stage2: pd.DataFrame, weights: Sequence[float],
                  truth: dict[str, TruthImage], hetero: Sequence[str]) -> pd.DataFrame:
    """Scores of ensembles of each stage-1 table with ``stage2`` for every method and stage-2 weight."""
    rows = []
    for name, table in stage1.items():
        for method in ENSEMBLE_METHODS:
            for weight in weights:
                combined = ensemble([Source("stage1", table), Source("stage2", stage2, weight=weight)],
                                    method=method, match="id")
                rows.append({"stage1": name, "method": method, "stage2 weight": weight,
                             **scores(combined, truth, hetero)})
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid and print the tables."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    rows, tables = [], {}
    truth: dict[str, TruthImage] | None = None
    hetero: list[str] = []
    for setting in settings_list(args.base, args.sweep, args.combo):
        table = read_cell_table(run_setting(args, setting) / "cells_stage1.parquet")
        if truth is None:
            ids = sorted(table["image_id"].unique())
            truth = truth_from_label_dir(args.truth, ids)
            hetero = heterogeneous_ids(args.truth, ids)
            images = pd.read_parquet(args.out / "runs" / slug(setting) / "images_stage1.parquet")
            rows.append({"setting": "naive", **scores(naive_cells_from_images(table, images), truth, hetero)})
        name = " ".join(setting) or "base"
        tables[name] = table
        rows.append({"setting": name, **scores(table, truth, hetero)})
        print(f"{name}: " + "  ".join(f"{k} {v:.4f}" for k, v in rows[-1].items() if k != "setting"), flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "stage1.csv", index=False)
    print(f"stage 1 per-cell mAP ({describe('official', 'mask')} / strict), {len(truth or {})} images, "
          f"{len(hetero)} heterogeneous")
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.stage2 is not None and truth is not None:
        base = " ".join(args.base) or "base"
        stage1_rows = frame.loc[frame["setting"] != "naive"]
        best = stage1_rows.sort_values("official all", ascending=False)["setting"].iloc[0]
        stage2 = read_cell_table(args.stage2)
        grid = ensemble_grid({k: tables[k] for k in dict.fromkeys([base, best])}, stage2, args.weights, truth,
                             hetero)
        grid = pd.concat([pd.DataFrame([{"stage1": "(stage 2 alone)", "method": "", "stage2 weight": float("nan"),
                                         **scores(stage2, truth, hetero)}]), grid], ignore_index=True)
        grid.to_csv(args.out / "ensemble.csv", index=False)
        print("ensemble per-cell mAP (official / strict protocol, mask IoU 0.6)")
        print(grid.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
