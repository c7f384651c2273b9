"""Tune the stage-1 scoring and the ensemble on out-of-fold tables, under both cell-metric protocols.

Runs ``wsss-infer --stage 1`` once (in-process, base setting, into ``OUT/base/``) and records each
image's CAMs, cell footprints and image probabilities on the way (``OUT/stage1_inputs.pkl``);
every other setting is then re-scored from the recording with the same
:mod:`wsss.infer.scoring` functions the runner uses, without another forward pass (the base
setting's re-score is checked against the written table). Every setting is scored against the
synthetic truth (mask IoU 0.6, computed once per image and checked against
:func:`wsss.metrics.cell.match_predictions` on the base table; group ties) under the official and the
strict protocol, on all images and on the heterogeneous ones, into ``OUT/stage1.csv``. With
``--stage2 TABLE`` it also scores ensembles of the base stage-1 table and of the best official
one with the stage-2 table (methods x stage-2 weights) into ``OUT/ensemble.csv``.

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
import pickle
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wsss.cli.demo import heterogeneous_ids
from wsss.cli.infer import main as infer_main
from wsss.config import apply_overrides
from wsss.ensemble import METHODS as ENSEMBLE_METHODS
from wsss.ensemble import Source, ensemble, naive_cells_from_images
from wsss.infer.scoring import ScoreParams, cell_measures, cell_probabilities
from wsss.infer.settings import default_config
from wsss.metrics.cell import (
    PROTOCOLS,
    ImageCells,
    TruthImage,
    describe,
    image_cells_from_scores,
    match_cells,
    match_predictions,
    pairwise_overlap,
    preds_from_cell_table,
    truth_from_label_dir,
)
from wsss.schema import PROB_COLUMNS
from wsss.tables import read_cell_table

logger = logging.getLogger(__name__)

Recording = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the tuning script."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint or run folder (wsss-infer --ckpt)")
    p.add_argument("--images", type=Path, required=True, help="prepared cache (wsss-infer --images)")
    p.add_argument("--masks", type=Path, required=True, help="label maps (wsss-infer --masks)")
    p.add_argument("--truth", type=Path, required=True, help="synthetic folder with the per-cell truth")
    p.add_argument("--out", type=Path, required=True, help="working folder (base/, stage1.csv, ensemble.csv)")
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
    """The settings to score, each a tuple of ``KEY=VALUE`` overrides (the base first, no repeats)."""
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


def score_params(setting: Sequence[str]) -> ScoreParams:
    """Stage-1 parameters of a setting: the ``wsss-infer`` defaults with its overrides."""
    return ScoreParams.from_mapping(apply_overrides(default_config(), list(setting))["stage1"])


@contextmanager
def recording(store: Recording) -> Iterator[None]:
    """Record ``(footprints, normalised CAMs, image probabilities)`` per image id while stage 1 runs.

    Wraps the runner's ``cell_measures`` (called once per image, with its footprints and CAMs) and
    ``image_frame`` (called right after with the image's id and probabilities).
    """
    import wsss.infer.runner as runner  # noqa: PLC0415

    measures, frame = runner.cell_measures, runner.image_frame
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def recorded_measures(footprints, cams, threshold):
        cam = cams.detach().float().cpu().numpy() if isinstance(cams, torch.Tensor) else np.asarray(cams)
        pending.append((np.asarray(footprints), cam))
        return measures(footprints, cams, threshold)

    def recorded_frame(ids, source, fold, probs):
        footprints, cam = pending.pop()
        store[str(ids[0])] = (footprints, cam, np.asarray(probs, dtype=np.float64).reshape(-1))
        return frame(ids, source, fold, probs)

    runner.cell_measures, runner.image_frame = recorded_measures, recorded_frame
    try:
        yield
    finally:
        runner.cell_measures, runner.image_frame = measures, frame


def run_base(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, Recording]:
    """Stage 1 with the base setting (recorded); its cell and image tables and the recording."""
    out = args.out / "base"
    cache = args.out / "stage1_inputs.pkl"
    if cache.is_file() and (out / "cells_stage1.parquet").is_file():
        with open(cache, "rb") as handle:
            store = pickle.load(handle)
    else:
        if out.exists():
            raise SystemExit(f"{out} exists without {cache}: delete it to record again")
        argv = ["--stage", "1", "--ckpt", str(args.ckpt), "--images", str(args.images), "--masks", str(args.masks),
                "--out", str(out), "--workers", "0", "--precision", str(args.precision)]
        if args.fold is not None:
            argv += ["--fold", str(args.fold), "--folds", str(args.folds)]
        if args.ids is not None:
            argv += ["--ids", str(args.ids)]
        for item in args.base:
            argv += ["--set", item]
        store: Recording = {}
        with recording(store):
            if infer_main(argv) != 0:
                raise SystemExit("wsss-infer --stage 1 failed")
        with open(cache, "wb") as handle:
            pickle.dump(store, handle)
    return read_cell_table(out / "cells_stage1.parquet"), pd.read_parquet(out / "images_stage1.parquet"), store


def rescore(table: pd.DataFrame, store: Recording, params: ScoreParams) -> pd.DataFrame:
    """``table`` with every image's probabilities recomputed from the recording under ``params``."""
    out = table.copy()
    probs = out[PROB_COLUMNS].to_numpy(dtype=np.float64, copy=True)
    for image_id, rows in out.groupby("image_id", sort=False).indices.items():
        footprints, cams, image_probs = store[str(image_id)]
        probs[rows] = cell_probabilities(*cell_measures(footprints, cams, params.threshold), image_probs, params)
    out[PROB_COLUMNS] = probs
    return out


class Scorer:
    """Scores per-cell tables whose cells are those of one reference table, against the truth.

    Cell masks and mask IoUs are computed once (from the reference table); each table is then
    matched from its ``p_0..p_18`` only (rows found by ``image_id, cell_id``), under both
    protocols, on all truth images and on the heterogeneous ones.
    """

    def __init__(self, reference: pd.DataFrame, truth: dict[str, TruthImage], hetero: Sequence[str]) -> None:
        preds = preds_from_cell_table(reference)
        self.truth, self.hetero = truth, list(hetero)
        self.iou = {i: pairwise_overlap(preds[i].masks, truth[i].masks) for i in truth if i in preds}
        self.cells = {i: preds[i].masks.ids for i in self.iou}

    def _images(self, probs: dict[str, np.ndarray], ids: Sequence[str]) -> list[ImageCells]:
        out = []
        for image_id in ids:
            gt = self.truth[image_id].labels
            if image_id in probs:
                out.append(image_cells_from_scores(image_id, self.iou[image_id], gt, probs[image_id]))
            else:
                out.append(image_cells_from_scores(image_id, np.zeros((0, gt.shape[0])), gt,
                                                   np.zeros((0, len(PROB_COLUMNS)))))
        return out

    def __call__(self, table: pd.DataFrame) -> dict[str, float]:
        """mAP of ``table`` under both protocols on all images and on the heterogeneous ones."""
        indexed = table.set_index(["image_id", "cell_id"])[PROB_COLUMNS]
        probs = {i: indexed.loc[i].reindex(self.cells[i]).to_numpy(dtype=np.float64) for i in self.cells}
        every = match_cells(self._images(probs, list(self.truth)))
        subset = match_cells(self._images(probs, self.hetero))
        out: dict[str, float] = {}
        for protocol in PROTOCOLS:
            out[f"{protocol} all"] = every.result(protocol).map
            out[f"{protocol} heterogeneous"] = subset.result(protocol).map
        out["official all best ties"] = every.tie_range("official")[1]
        return out


def ensemble_grid(stage1: dict[str, pd.DataFrame], stage2: pd.DataFrame, weights: Sequence[float],
                  scores: Scorer) -> pd.DataFrame:
    """Scores of ensembles of each stage-1 table with ``stage2`` for every method and stage-2 weight."""
    rows = []
    for name, table in stage1.items():
        for method in ENSEMBLE_METHODS:
            for weight in weights:
                combined = ensemble([Source("stage1", table), Source("stage2", stage2, weight=weight)],
                                    method=method, match="id")
                rows.append({"stage1": name, "method": method, "stage2 weight": weight, **scores(combined)})
    return pd.DataFrame(rows)


def _print(title: str, frame: pd.DataFrame) -> None:
    print(title)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid and print the tables."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    base_table, images, store = run_base(args)
    check = rescore(base_table, store, score_params(args.base))
    gap = float(np.abs(check[PROB_COLUMNS].to_numpy() - base_table[PROB_COLUMNS].to_numpy()).max())
    if gap > 1e-5:
        raise SystemExit(f"re-scoring the base setting differs from the written table by {gap:g}")
    ids = sorted(base_table["image_id"].unique())
    truth = truth_from_label_dir(args.truth, ids)
    hetero = heterogeneous_ids(args.truth, ids)
    scores = Scorer(base_table, truth, hetero)
    check_table = scores(base_table)
    reference = match_predictions(preds_from_cell_table(base_table), truth)
    if abs(check_table["official all"] - reference.result("official").map) > 1e-9:
        raise SystemExit("the cached scorer disagrees with match_predictions on the base table")
    rows = [{"setting": "naive", **scores(naive_cells_from_images(base_table, images))}]
    tables: dict[str, pd.DataFrame] = {}
    for setting in settings_list(args.base, args.sweep, args.combo):
        name = " ".join(setting) or "base"
        tables[name] = rescore(base_table, store, score_params(setting))
        rows.append({"setting": name, **scores(tables[name])})
        print(f"{name}: " + "  ".join(f"{k} {v:.4f}" for k, v in rows[-1].items() if k != "setting"), flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "stage1.csv", index=False)
    _print(f"stage 1 per-cell mAP ({describe('official', 'mask')}, and strict; group ties), {len(truth)} images, "
           f"{len(hetero)} heterogeneous", frame)
    if args.stage2 is not None:
        stage1_rows = frame.loc[frame["setting"] != "naive"]
        best = str(stage1_rows.sort_values("official all", ascending=False)["setting"].iloc[0])
        stage2 = read_cell_table(args.stage2)
        grid = ensemble_grid({k: tables[k] for k in dict.fromkeys([" ".join(args.base) or "base", best])}, stage2,
                             args.weights, scores)
        alone = pd.DataFrame([{"stage1": "(stage 2 alone)", "method": "", "stage2 weight": float("nan"),
                               **scores(stage2)}])
        grid = pd.concat([alone, grid], ignore_index=True)
        grid.to_csv(args.out / "ensemble.csv", index=False)
        _print("ensemble per-cell mAP (official and strict protocol, mask IoU 0.6, group ties)", grid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
