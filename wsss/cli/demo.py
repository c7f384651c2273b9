"""``wsss-demo``: the whole system end to end on embedded synthetic data, on a CPU.

Steps (each one a console script of the project, called in-process, each resumable):

1. ``wsss-synth``: a synthetic HPA-like set with per-cell truth;
2. ``wsss-prepare``: the RGBY cache at the working size;
3. ``wsss-folds``: 4 multilabel-stratified folds;
4. ``wsss-train``: a small Puzzle-CAM config on folds 1-3 (fold 0 is validation), one line per epoch;
5. ``wsss-segment``: cell masks of the fold-0 images with ``hpa_seg``;
6. ``wsss-infer --stage 1`` and ``--stage 2`` on fold 0 (out of fold);
7. the naive baseline (every cell gets its image's probabilities), the stage-1 + stage-2
   ensemble, and the Kaggle submission of the ensemble;
8. per-cell mAP at mask IoU 0.6 of naive, stage 1, stage 2 and the ensemble against the synthetic
   truth, on all fold-0 images and on the heterogeneous ones (images whose cells differ), under
   the official protocol (the HPA competition's) and the strict one, printed as one table and
   saved as CSV; overlay pictures of predicted vs true cell labels.

Every step skips what a previous run already finished, so a killed demo resumes where it stopped.

Two budgets (:data:`BUDGETS`): the default fits in 5 minutes on a 2-core AVX2 CPU without native
bf16 (``configs/cpu_demo.yaml``, a quarter-width resnet10t); ``--full`` trains ``configs/cpu_tiny.yaml``
(resnet10t) longer on the same data, for better numbers (about 5 minutes with AMX, about 40 without).
Precision is ``auto`` (:mod:`wsss.precision`); the choice is printed first.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.data.classes import CLASS_NAMES
from wsss.data.io import read_rgby_png
from wsss.data.prepare import cache_path
from wsss.masks import resize_labels

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
METHODS: tuple[str, ...] = ("naive", "stage1", "stage2", "ensemble")


@dataclass(frozen=True)
class Budget:
    """How much work a demo run does: data, training config and epochs."""

    count: int
    size: int
    config: Path
    epochs: int


BUDGETS: dict[str, Budget] = {
    "quick": Budget(count=320, size=256, config=ROOT / "configs" / "cpu_demo.yaml", epochs=16),
    "full": Budget(count=400, size=256, config=ROOT / "configs" / "cpu_tiny.yaml", epochs=16),
}
DEFAULT_CONFIG = BUDGETS["quick"].config


class DemoError(RuntimeError):
    """A demo step that failed (its own message says why)."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs on; ``quick`` shrinks everything for a smoke test."""

    out: Path
    count: int = 320
    size: int = 256
    seed: int = 0
    config: Path = DEFAULT_CONFIG
    epochs: int | None = 16
    workers: int = 2
    overlays: int = 4


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``wsss-demo``."""
    parser = argparse.ArgumentParser(
        prog="wsss-demo",
        description="Run the whole pipeline on synthetic data (synth, prepare, folds, train fold 0, "
                    "segment, stage 1, stage 2, ensemble, submission, per-cell mAP) and print the "
                    "comparison table. Resumable: finished steps are skipped.",
    )
    quick, full = BUDGETS["quick"], BUDGETS["full"]
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="working folder (default demo_out)")
    parser.add_argument("--full", action="store_true",
                        help=f"the longer, better run: {full.config.name} (resnet10t), {full.epochs} epochs "
                             f"(default: {quick.config.name}, {quick.epochs} epochs, under 5 minutes on 2 CPU cores)")
    parser.add_argument("--count", type=int, default=None, help=f"synthetic images (default {quick.count})")
    parser.add_argument("--size", type=int, default=None, help=f"image side in px (default {quick.size})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the folds (default 0)")
    parser.add_argument("--config", type=Path, default=None, help="training config (default: the budget's)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the budget's; 0 = the config's)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--overlays", type=int, default=4, help="overlay pictures to write (default 4)")
    return parser


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """:class:`DemoSettings` from the parsed arguments: the chosen budget, then any explicit flag."""
    budget = BUDGETS["full" if args.full else "quick"]
    return DemoSettings(out=args.out, count=args.count or budget.count, size=args.size or budget.size, seed=args.seed,
                        config=args.config or budget.config,
                        epochs=budget.epochs if args.epochs is None else args.epochs,
                        workers=args.workers, overlays=args.overlays)


PROGRESS_LOGGERS: tuple[str, ...] = ("wsss.train.loop", "wsss.precision")


@contextlib.contextmanager
def show_progress() -> Iterator[None]:
    """While open, the training loop's per-epoch lines and the precision choice go to stdout as ``[train] ...``.

    The loggers are restored on exit (the demo runs in-process, e.g. inside a test session).
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[train] %(message)s"))
    saved = []
    for name in PROGRESS_LOGGERS:
        log = logging.getLogger(name)
        saved.append((log, log.level, log.propagate))
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        log.propagate = False
    try:
        yield
    finally:
        for log, level, propagate in saved:
            log.removeHandler(handler)
            log.setLevel(level)
            log.propagate = propagate


def _call(name: str, entry: Callable[[Sequence[str] | None], int], argv: list[str]) -> None:
    """Run one console script's ``main`` in-process; a non-zero exit becomes :class:`DemoError`."""
    logger.info("[demo] %s %s", name, " ".join(argv))
    print(f"[demo] {name} ...", flush=True)
    start = time.perf_counter()
    code = entry(argv)
    if code not in (0, None):
        raise DemoError(f"{name} exited with code {code} (arguments: {' '.join(argv)})")
    print(f"[demo] {name}: done in {time.perf_counter() - start:.1f} s", flush=True)


def _paths(s: DemoSettings) -> dict[str, Path]:
    out = s.out
    return {"synth": out / "synth", "cache": out / "cache", "folds": out / "folds.csv", "run": out / "run_fold0",
            "seg": out / "seg", "pred": out / "pred", "ids": out / "fold0_ids.txt", "results": out / "results.csv",
            "submission": out / "submission.csv", "overlays": out / "overlays"}


def prepare_data(s: DemoSettings, p: dict[str, Path]) -> list[str]:
    """Synthesise, prepare and fold the data; return the fold-0 (validation) ids."""
    from wsss.cli.folds import main as folds_main
    from wsss.cli.prepare import main as prepare_main
    from wsss.cli.synth import main as synth_main
    from wsss.data.folds import read_folds

    _call("wsss-synth", synth_main, [str(p["synth"]), "--count", str(s.count), "--size", str(s.size),
                                     "--seed", str(s.seed), "--workers", str(s.workers)])
    _call("wsss-prepare", prepare_main, [str(p["synth"] / "train"), str(p["cache"]), "--size", str(s.size),
                                         "--workers", str(s.workers), "--quiet"])
    _call("wsss-folds", folds_main, ["--csv", str(p["synth"] / "train.csv"), "--n-folds", "4",
                                     "--seed", str(s.seed), "--out", str(p["folds"])])
    folds = read_folds(p["folds"])
    ids = sorted(folds.loc[folds["fold"] == 0, "ID"])
    p["ids"].write_text("\n".join(ids) + "\n")
    return ids


def train(s: DemoSettings, p: dict[str, Path]) -> None:
    """Train fold 0 (resuming an unfinished run, skipping a finished one)."""
    from wsss.cli.train import main as train_main

    argv = ["--config", str(s.config), "--fold", "0", "--cache", str(p["cache"]), "--folds", str(p["folds"]),
            "--out", str(p["run"]), "--set", f"data.size={s.size}", "--quiet"]
    if s.epochs:
        argv += ["--epochs", str(s.epochs)]
    if (p["run"] / "last.safetensors").is_file():
        argv += ["--resume"]
    _call("wsss-train", train_main, argv)


def segment_and_infer(s: DemoSettings, p: dict[str, Path], ids: list[str]) -> None:
    """Segment the fold-0 images, then run both inference stages on them (out of fold)."""
    from wsss.cli.infer import main as infer_main
    from wsss.cli.segment import main as segment_main

    _call("wsss-segment", segment_main, [str(p["cache"]), str(p["seg"]), "--size", str(s.size),
                                         "--workers", str(s.workers), "--quiet", "--ids", *ids])
    for stage in ("1", "2"):
        _call(f"wsss-infer --stage {stage}", infer_main, [
            "--stage", stage, "--ckpt", str(p["run"]), "--images", str(p["cache"]), "--masks", str(p["seg"]),
            "--out", str(p["pred"]), "--fold", "0", "--folds", str(p["folds"]), "--workers", "0"])


def combine(p: dict[str, Path]) -> dict[str, pd.DataFrame]:
    """Naive baseline, stage 1, stage 2, their ensemble; write the ensemble's submission."""
    from wsss.ensemble import Source, ensemble, naive_cells_from_images
    from wsss.submission import build_submission, write_submission
    from wsss.tables import read_cell_table

    stage1 = read_cell_table(p["pred"] / "cells_stage1.parquet")
    stage2 = read_cell_table(p["pred"] / "cells_stage2.parquet")
    images = pd.read_parquet(p["pred"] / "images_stage1.parquet")
    tables = {
        "naive": naive_cells_from_images(stage1, images),
        "stage1": stage1,
        "stage2": stage2,
        "ensemble": ensemble([Source("stage1", stage1), Source("stage2", stage2)], method="geom", match="id"),
    }
    for name, table in tables.items():
        if name in ("naive", "ensemble"):
            table.to_parquet(p["pred"] / f"cells_{name}.parquet", index=False)
    write_submission(build_submission(tables["ensemble"]), p["submission"])
    print(f"[demo] submission: {p['submission']}", flush=True)
    return tables


def heterogeneous_ids(synth: Path, ids: Sequence[str]) -> list[str]:
    """The ids among ``ids`` whose cells do not all share one label set (synthetic truth records)."""
    from wsss.data.synth import read_record

    return [i for i in ids if read_record(synth, i).get("heterogeneous")]


def evaluate(tables: dict[str, pd.DataFrame], synth: Path, ids: list[str]) -> pd.DataFrame:
    """Per-cell mAP at mask IoU 0.6 of each table (in the order of ``tables``) on all ``ids`` and on the heterogeneous ones, under
    the official protocol (first) and the strict one; plus the best official mAP over orders of
    tied confidences (the group-ties value is the worst order)."""
    from wsss.metrics.cell import PROTOCOLS, match_predictions, preds_from_cell_table, truth_from_label_dir

    hetero = heterogeneous_ids(synth, ids)
    truth = truth_from_label_dir(synth, ids)
    rows = []
    for name in tables:
        preds = preds_from_cell_table(tables[name])
        every = match_predictions(preds, truth, overlap="mask")
        subset = match_predictions({i: preds[i] for i in hetero if i in preds}, {i: truth[i] for i in hetero},
                                   overlap="mask")
        row: dict[str, object] = {"method": name}
        for protocol in PROTOCOLS:
            row[f"{protocol} mAP all"] = every.result(protocol).map
            row[f"{protocol} mAP heterogeneous"] = subset.result(protocol).map
        row["official mAP all, best tie order"] = every.tie_range("official")[1]
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["n_all"], frame.attrs["n_hetero"] = len(ids), len(hetero)
    return frame


def _enlarged(rgb: np.ndarray, min_side: int = 512) -> np.ndarray:
    """Enlarge a small picture by an integer factor (nearest neighbour) so labels stay legible."""
    factor = max(1, min_side // max(rgb.shape[:2]))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb


def draw_overlays(tables: dict[str, pd.DataFrame], synth: Path, cache: Path, ids: Sequence[str], out: Path,
                  count: int) -> list[Path]:
    """Pictures of true (left) vs ensemble-predicted (right) cell labels for a few heterogeneous ids."""
    from wsss.masks import load_label_maps
    from wsss.data.synth import read_cell_labels, read_truth
    from wsss.viz import cell_centroids, draw_outlines, put_text, rgby_composite, save_png, tile_grid

    true_labels = read_cell_labels(synth)
    ensemble_cells = tables["ensemble"]
    paths = []
    for image_id in list(ids)[:count]:
        rgb = _enlarged(rgby_composite(read_rgby_png(cache_path(cache, image_id))))
        cells, _ = read_truth(synth, image_id)
        cells = resize_labels(cells, *rgb.shape[:2])
        left = draw_outlines(rgb, cells)
        rows = true_labels[true_labels["ID"] == image_id].set_index("cell_id")["Label"]
        for cell_id, (x, y) in cell_centroids(cells).items():
            put_text(left, str(rows.get(cell_id, "?")), (x - 8, y))
        pred = ensemble_cells[ensemble_cells["image_id"] == image_id]
        if pred.empty:
            continue
        seg = resize_labels(load_label_maps(pred["mask_path"].iloc[0]).cells, *rgb.shape[:2])
        right = draw_outlines(rgb, seg, (255, 255, 0))
        probs = pred.set_index("cell_id")[[f"p_{k}" for k in range(len(CLASS_NAMES))]]
        for cell_id, (x, y) in cell_centroids(seg).items():
            if cell_id in probs.index:
                top = np.argsort(-probs.loc[cell_id].to_numpy())[:2]
                put_text(right, "|".join(str(k) for k in top), (x - 8, y), color=(255, 255, 0))
        put_text(left, f"{image_id} truth", (4, 12))
        put_text(right, "ensemble top-2", (4, 12), color=(255, 255, 0))
        paths.append(save_png(out / f"{image_id}.png", tile_grid([left, right], columns=2)))
    return paths


def format_results(results: pd.DataFrame) -> str:
    """The printed comparison table: official protocol first, then strict (mask IoU 0.6, group ties)."""
    width = max([10, *(len(str(m)) for m in results["method"])])
    lines = [f"per-cell mAP at IoU 0.6 on fold 0 ({results.attrs['n_all']} images, "
             f"{results.attrs['n_hetero']} heterogeneous), hpa_seg masks vs synthetic truth, mask IoU, group ties",
             f"{'':<{width}} {'official protocol':>23}   {'strict protocol':>23}",
             f"{'method':<{width}} {'all':>8} {'heterogeneous':>14}   {'all':>8} {'heterogeneous':>14}"]
    for row in results.to_dict("records"):
        lines.append(f"{row['method']:<{width}} {row['official mAP all']:>8.4f} {row['official mAP heterogeneous']:>14.4f}"
                     f"   {row['strict mAP all']:>8.4f} {row['strict mAP heterogeneous']:>14.4f}")
    tied = [f"{row['method']} {row['official mAP all']:.4f}..{row['official mAP all, best tie order']:.4f}"
            for row in results.to_dict("records")
            if row["official mAP all, best tie order"] - row["official mAP all"] > 5e-5]
    if tied:
        lines.append("tied confidences, official all, group (= worst order)..best order: " + "; ".join(tied))
    return "\n".join(lines)


def run_demo(s: DemoSettings) -> pd.DataFrame:
    """Run every step; return the results table (also written to ``OUT/results.csv``)."""
    p = _paths(s)
    if not Path(s.config).is_file():
        raise DemoError(f"{s.config}: training config not found (run from a checkout installed with "
                        f"scripts/install.sh, or pass --config)")
    s.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    epochs = f"{s.epochs} epochs" if s.epochs else "the config's epochs"
    print(f"[demo] {s.count} synthetic images at {s.size} px; training {Path(s.config).name} for {epochs}", flush=True)
    ids = prepare_data(s, p)
    train(s, p)
    segment_and_infer(s, p, ids)
    tables = combine(p)
    results = evaluate(tables, p["synth"], ids)
    results.to_csv(p["results"], index=False)
    hetero = heterogeneous_ids(p["synth"], ids)
    pictures = draw_overlays(tables, p["synth"], p["cache"], hetero, p["overlays"], s.overlays)
    print(format_results(results))
    print(f"[demo] {len(pictures)} overlay pictures in {p['overlays']}; results in {p['results']}; "
          f"total {time.perf_counter() - start:.0f} s")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wsss-demo``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(args)
    try:
        with show_progress():
            run_demo(settings)
    except DemoError as exc:
        print(f"wsss-demo: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
