"""The watershed model on the demo's data: per-cell mAP of the CAM stages, the class head and their ensembles,
with cells from the classical segmenter, from the watershed model and from their fusion.

Every step is one of the project's console scripts, called in-process and resumable (a rerun skips
what is done). Out of fold throughout: fold 0 of the demo is scored; every model saw only folds 1-3.

1. ``wsss-demo`` (skipped when ``OUT`` already holds a finished demo): data, the Puzzle-CAM model of
   fold 0, the classical masks of fold 0 and its stage-1/2 tables;
2. the synthetic instance truth of every image as label-map files (``wsss-segment --masks``);
3. class-head targets, the weakly-supervised "second round": stage 1 and 2 of the fold-0 model on the
   *training* images (folds 1-3, the images it was trained on, as in CAM-to-mask pipelines),
   their ensemble, then ``wsss-pseudo`` (classes the image labels lack set to 0);
4. ``wsss-seg-train`` on folds 1-3: instance truth from step 2, the class head from step 3;
5. fold 0 segmented by the model (``wsss-segment --model``) and fused with the classical maps
   (``wsss-fuse``: agreed cells with the model's masks, the rest classical);
6. on each of the three segmentations: stage 1, stage 2 (fold-0 model), stage ws (class head);
7. per-cell mAP at mask IoU 0.6 (official and strict protocols, all and heterogeneous images) of
   each stage alone, the ensembles, and the cross-segmentation ensemble (classical cells, every
   table of the model's segmentation matched by mask IoU).

    python scripts/ws_demo.py --out /work/wsdemo/demo --epochs 10
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SEGMENTATIONS: tuple[str, ...] = ("classical", "watershed", "fused")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="demo folder (made by wsss-demo if empty)")
    p.add_argument("--epochs", type=int, default=10, help="watershed training epochs (default 10)")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "watershed_cpu.yaml", help="watershed config")
    p.add_argument("--crop", type=int, default=0, help="training crop side (default 0: the whole 256 px field)")
    return p


def _call(name: str, entry, argv: list[str], ok: tuple[int, ...] = (0,)) -> None:
    """One console script in-process; an exit code outside ``ok`` stops the run."""
    print(f"[ws-demo] {name} ...", flush=True)
    start = time.perf_counter()
    code = entry(argv)
    if code not in ok:
        raise SystemExit(f"ws_demo: {name} exited with {code} ({' '.join(argv)})")
    print(f"[ws-demo] {name}: done in {time.perf_counter() - start:.1f} s", flush=True)


def _ids_file(path: Path, ids: Sequence[str]) -> Path:
    path.write_text("\n".join(ids) + "\n")
    return path


def _tables(run: Path, masks: Path, out: Path, d: Path, ids_file: Path, stages: Sequence[str], ws_ckpt: Path | None) -> None:
    """Stage tables of ``stages`` for the ids of ``ids_file`` on the label maps ``masks``."""
    from wsss.cli.infer import main as infer_main

    for stage in stages:
        ckpt = ws_ckpt if stage == "ws" else run
        _call(f"wsss-infer --stage {stage} ({out.name})", infer_main, [
            "--stage", stage, "--ckpt", str(ckpt), "--images", str(d / "cache"), "--masks", str(masks),
            "--out", str(out), "--ids", str(ids_file), "--workers", "0"], ok=(0, 1))


def prepare_targets(d: Path, w: Path, train_ids: list[str]) -> Path:
    """Steps 2-3: truth label maps of every image, pseudo labels of the training images; returns the targets."""
    from wsss.cli.pseudo import main as pseudo_main
    from wsss.cli.segment import main as segment_main
    from wsss.ensemble import Source, ensemble
    from wsss.tables import read_cell_table

    _call("wsss-segment --masks (synthetic truth)", segment_main, [
        str(d / "cache"), str(w / "truth"), "--size", "256", "--masks", str(d / "synth" / "masks"), "--quiet"])
    ids_file = _ids_file(w / "train_ids.txt", train_ids)
    _tables(d / "run_fold0", w / "truth", w / "pseudo_pred", d, ids_file, ("1", "2"), None)
    merged = w / "pseudo_pred" / "cells_ensemble.parquet"
    if not merged.is_file():
        tables = [read_cell_table(w / "pseudo_pred" / f"cells_stage{s}.parquet") for s in (1, 2)]
        ensemble([Source("stage1", tables[0]), Source("stage2", tables[1])], method="geom", match="id").to_parquet(merged)
    if not (w / "pseudo" / "cell_targets.parquet").is_file():
        _call("wsss-pseudo", pseudo_main, [str(merged), "--folds", str(d / "folds.csv"), "--out", str(w / "pseudo")])
    return w / "pseudo" / "cell_targets.parquet"


def train_watershed(d: Path, w: Path, targets: Path, args: argparse.Namespace) -> Path:
    """Step 4: the watershed model with its class head on folds 1-3; returns the best checkpoint."""
    from wsss.cli.seg_train import main as seg_train_main

    run = w / "ws_run"
    argv = ["--config", str(args.config), "--fold", "0", "--cache", str(d / "cache"), "--folds", str(d / "folds.csv"),
            "--masks", str(w / "truth"), "--cell-table", str(targets), "--out", str(run), "--epochs", str(args.epochs),
            "--set", "model.num_classes=19", "--set", "data.size=256", "--set", f"data.crop={args.crop or 'null'}"]
    if (run / "last.safetensors").is_file():
        argv.append("--resume")
    if not (run / "done.json").is_file():
        _call("wsss-seg-train", seg_train_main, argv)
        (run / "done.json").write_text("{}\n")
    return run / "best.safetensors"


def segmentations(d: Path, w: Path, ckpt: Path, ids: list[str]) -> dict[str, Path]:
    """Step 5: fold 0 segmented by the model, and fused with the classical maps."""
    from wsss.cli.fuse import main as fuse_main
    from wsss.cli.segment import main as segment_main

    _call("wsss-segment --model", segment_main, [str(d / "cache"), str(w / "seg_ws"), "--size", "256", "--model",
                                                 str(ckpt), "--quiet", "--ids", *ids])
    _call("wsss-fuse", fuse_main, [str(d / "seg"), str(w / "seg_ws"), str(w / "seg_fused"), "--agreed", "other"], ok=(0, 1))
    return {"classical": d / "seg", "watershed": w / "seg_ws", "fused": w / "seg_fused"}


def segmentation_ap(d: Path, segs: dict[str, Path], ids: Sequence[str]) -> dict[str, tuple[float, int, int, int]]:
    """Pooled cell AP@0.6 (tp / (tp + fp + fn)) of each segmentation against the synthetic truth of ``ids``."""
    from wsss.data.synth import read_truth
    from wsss.masks import load_label_maps, resize_labels
    from wsss.watershed.train import ap_at

    out = {}
    for name, folder in segs.items():
        tp = fp = fn = 0
        for image_id in ids:
            ref, _ = read_truth(d / "synth", image_id)
            cells = load_label_maps(folder / f"{image_id}.npz").cells
            cells = cells if cells.shape == ref.shape else resize_labels(cells, *ref.shape)
            t, f, n = ap_at(cells.astype("int64"), ref.astype("int64"))
            tp, fp, fn = tp + t, fp + f, fn + n
        out[name] = (tp / max(tp + fp + fn, 1), tp, fp, fn)
    return out


def method_tables(pred: dict[str, Path]) -> dict[str, pd.DataFrame]:
    """Step 7's tables: per segmentation each stage, the CAM ensemble, the ensemble with the class head; and
    the cross-segmentation ensemble on the classical cells."""
    from wsss.ensemble import Source, ensemble, naive_cells_from_images
    from wsss.tables import read_cell_table

    out: dict[str, pd.DataFrame] = {}
    per_seg: dict[str, dict[str, pd.DataFrame]] = {}
    for seg, folder in pred.items():
        t = {s: read_cell_table(folder / (f"cells_stage{s}.parquet" if s != "ws" else "cells_ws.parquet"))
             for s in ("1", "2", "ws")}
        per_seg[seg] = t
        images = pd.read_parquet(folder / "images_stage1.parquet")
        out[f"{seg}: naive"] = naive_cells_from_images(t["1"], images)
        out[f"{seg}: stage1"] = t["1"]
        out[f"{seg}: stage2"] = t["2"]
        out[f"{seg}: class head"] = t["ws"]
        out[f"{seg}: s1+s2"] = ensemble([Source("s1", t["1"]), Source("s2", t["2"])], method="geom", match="id")
        out[f"{seg}: s1+s2+head"] = ensemble([Source("s1", t["1"]), Source("s2", t["2"]), Source("ws", t["ws"])],
                                             method="geom", match="id")
    c, m = per_seg["classical"], per_seg["watershed"]
    out["classical cells, all 6 tables"] = ensemble(
        [Source("c1", c["1"]), Source("c2", c["2"]), Source("cws", c["ws"]),
         Source("m1", m["1"]), Source("m2", m["2"]), Source("mws", m["ws"])], method="geom", match="auto")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run every step and print the table (also written to ``OUT/ws/results.csv``)."""
    args = build_parser().parse_args(argv)
    from wsss.cli.demo import DemoSettings, evaluate, format_results, run_demo, show_progress
    from wsss.data.folds import read_folds

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    d: Path = args.out
    w = d / "ws"
    w.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with show_progress():
        if not (d / "results.csv").is_file():
            run_demo(DemoSettings(out=d))
        folds = read_folds(d / "folds.csv")
        ids = sorted(folds.loc[folds["fold"] == 0, "ID"].astype(str))
        train_ids = sorted(folds.loc[folds["fold"] != 0, "ID"].astype(str))
        targets = prepare_targets(d, w, train_ids)
        ckpt = train_watershed(d, w, targets, args)
    segs = segmentations(d, w, ckpt, ids)
    ids_file = _ids_file(w / "fold0_ids.txt", ids)
    pred = {}
    for name, masks in segs.items():
        pred[name] = w / f"pred_{name}"
        _tables(d / "run_fold0", masks, pred[name], d, ids_file, ("1", "2", "ws"), ckpt)
    for name, (ap, tp, fp, fn) in segmentation_ap(d, segs, ids).items():
        print(f"[ws-demo] cells of {name}: pooled AP@0.6 {ap:.3f} (tp {tp}, fp {fp}, fn {fn}) on the {len(ids)} fold-0 images")
    results = evaluate(method_tables(pred), d / "synth", ids)
    results.to_csv(w / "results.csv", index=False)
    print(format_results(results).replace("hpa_seg masks", "cells from each segmentation"))
    print(f"[ws-demo] total {time.perf_counter() - start:.0f} s; results in {w / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
