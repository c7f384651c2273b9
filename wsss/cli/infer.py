"""``wsss-infer --stage 1|2|cell|ws --ckpt RUN --images DIR --masks DIR --out DIR``: per-cell prediction tables.

Stage 1 scores every cell from the CAMs of one forward pass; stage 2 re-scores every cell from a
crop; stage ``cell`` scores every cell's crop with the cell classifier (``wsss-train --task cell``,
the crops it was trained on; ``--tta d4`` = the 8 views of every crop); stage ``ws`` with the watershed model's
class head. ``--fold k --folds folds.csv`` runs on fold ``k``'s validation ids (out-of-fold) and records
the fold; ``{fold}`` in ``--ckpt`` is replaced by ``k``. Runs resume where they stopped; bad ids are
listed in the summary. See docs/inference.md.

Under ``torchrun`` (``torchrun --nproc-per-node P -m wsss.cli.infer ...``) every rank runs its share
of the ids (one GPU per local rank with ``--device cuda``; NCCL on GPUs, gloo on CPUs) and rank 0
writes the tables a single process would write and prints the summary (:mod:`wsss.infer.runner`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsss.cli.common import EXIT_EPILOG, EXIT_OK, EXIT_SKIPPED, refuse, stage_type
from wsss.config import ConfigError, apply_overrides, load_config, merge, save_config
from wsss.fileio import OutputPathError, check_output_dir

logger = logging.getLogger(__name__)

PROG = "wsss-infer"


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``wsss-infer``."""
    p = argparse.ArgumentParser(prog=PROG, description="Two-stage per-cell inference (CAM x masks; cell crops).",
                                epilog=EXIT_EPILOG)
    p.add_argument("--stage", type=stage_type("1", "2", "cell", "ws"), required=True,
                   help="1: CAM x cell masks; 2: cell crops; cell: the cell classifier on cell crops (--ckpt from "
                        "wsss-train --task cell); ws: the watershed model's class head (--ckpt from wsss-seg-train)")
    p.add_argument("--ckpt", required=True,
                   help="checkpoint file or run folder (best, else last); '{fold}' is replaced by --fold")
    p.add_argument("--images", type=Path, required=True, help="prepared cache (manifest.csv) or Kaggle-layout folder")
    p.add_argument("--masks", type=Path, required=True,
                   help="label maps: {ID}.npz (wsss-segment), {ID}_cells.png (wsss-synth) or {ID}_predictedmask.png")
    p.add_argument("--out", type=Path, required=True, help="output folder (tables, summary, pictures)")
    p.add_argument("--fold", type=int, default=None, help="run on this fold's validation ids (needs --folds)")
    p.add_argument("--folds", type=Path, default=None, help="folds CSV from wsss-folds (ID,Label,fold)")
    p.add_argument("--ids", type=Path, default=None, help="text file with one id per line (default: all images)")
    p.add_argument("--limit", type=int, default=None, help="only the first N ids (quick checks)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default from config: cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="images (stage 1) or crops (stage 2) per forward")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    p.add_argument("--precision", choices=("auto", "32", "16", "bf16"), default=None,
                   help="autocast precision (default auto: fp16 on CUDA, bf16 on a CPU with native bf16, else fp32)")
    p.add_argument("--tta", nargs="?", const="flip", default=None, metavar="flip|d4",
                   help="test-time augmentation: --tta or --tta flip = the flips of tta_modes in the config; "
                        "--tta d4 = all 8 flips/transposes (stage 1 CAMs, stage 2 and cell crops); --tta none = off")
    p.add_argument("--scales", default=None, metavar="S,S,...",
                   help="stage 1 multi-scale CAMs, e.g. 0.5,1,1.5,2 (resized to the base CAM size and averaged "
                        "before normalisation; default from config: 1)")
    p.add_argument("--config", type=Path, default=None, help="YAML merged over the defaults (configs/infer.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set stage1.threshold=0.4 (repeatable)")
    p.add_argument("--overlay", nargs="+", default=[], metavar="ID", help="also draw pictures for these ids")
    p.add_argument("--overlay-only", action="store_true", help="only draw the --overlay pictures, no tables")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then ``--config``, then ``--set``, then the dedicated flags; checked (:class:`ConfigError`)."""
    from wsss.infer.settings import check_infer_config, default_config

    cfg = default_config()
    if args.config is not None:
        cfg = merge(cfg, load_config(args.config))
    cfg = apply_overrides(cfg, args.overrides)
    for key, value in (("device", args.device), ("batch_size", args.batch_size), ("workers", args.workers),
                       ("precision", args.precision)):
        if value is not None:
            cfg[key] = value
    if args.tta is not None:
        cfg["tta"] = True if args.tta == "flip" else (False if args.tta in ("none", "off") else args.tta)
    if args.scales is not None:
        from wsss.infer.tta import parse_scales

        try:
            cfg["scales"] = list(parse_scales(args.scales))
        except ValueError as exc:
            raise ConfigError(f"--scales: {exc}") from None
    check_infer_config(cfg)
    return cfg


def select_ids(args: argparse.Namespace, all_ids: list[str]) -> list[str]:
    """Ids to run: fold ``k``'s validation ids, an ``--ids`` file, or every image; then ``--limit``."""
    from wsss.data.folds import check_fold_numbers, read_folds

    if args.fold is not None:
        if args.folds is None:
            raise ConfigError("--fold needs --folds folds.csv")
        folds = read_folds(args.folds)
        check_fold_numbers(folds, args.folds, args.fold)
        ids = folds.loc[folds["fold"] == args.fold, "ID"].astype(str).tolist()
        if not ids:
            raise ConfigError(f"{args.folds}: fold {args.fold} has no ids (folds: {sorted(folds['fold'].unique())})")
    elif args.ids is not None:
        if not args.ids.is_file():
            raise ConfigError(f"{args.ids}: ids file not found")
        ids = [line.strip() for line in args.ids.read_text().splitlines() if line.strip()]
    else:
        ids = all_ids
    return ids[: args.limit] if args.limit else ids


def _run(args: argparse.Namespace) -> int:
    """The run behind :func:`main`: 0 when every id was done, 1 when some were skipped (listed)."""
    from wsss import dist
    from wsss.infer.settings import resolve_device

    cfg = resolve_config(args)
    check_output_dir(args.out)
    device = resolve_device(cfg["device"])  # before loading: a bad --device is a one-line error
    info = dist.env_info()
    if args.stage == "ws" and info.enabled:
        raise ConfigError("--stage ws writes its table in one go: run it without torchrun (or with one process)")
    with dist.session(dist.local_device(device, info) if info.enabled else device) as info:
        return _run_stage(args, cfg, info)


def _run_stage(args: argparse.Namespace, cfg: dict[str, Any], info: Any) -> int:
    """One stage on this rank (all of it without a process group); rank 0 prints the summary."""
    from wsss import dist
    from wsss.infer.cams import amp_settings
    from wsss.infer.runner import render_overlays, run_stage1, run_stage2, run_stage_cell
    from wsss.precision import describe
    from wsss.infer.settings import build_settings, resolve_checkpoint, resolve_device
    from wsss.infer.sources import ImageSource, MaskSource
    from wsss.models.checkpoint import load_model_from_checkpoint

    device = resolve_device(cfg["device"])
    ckpt = resolve_checkpoint(args.ckpt, args.fold)
    if args.stage == "ws":
        return _run_ws(args, cfg, ckpt, device)
    local = dict(cfg)
    if info.enabled:  # this rank's GPU (cuda -> cuda:LOCAL_RANK); the saved config keeps the value given
        local["device"] = str(dist.local_device(device, info))
    images = ImageSource(args.images)
    ids = [] if args.overlay_only else select_ids(args, images.list_ids())  # bad folds/ids: refused before work
    masks = MaskSource(args.masks, args.out, cfg["masks"].get("working_size"))
    model, train_cfg = load_model_from_checkpoint(ckpt, device=str(local["device"]))
    check_task(ckpt, train_cfg, args.stage)
    settings = build_settings(local, args.out, args.stage, model.model_cfg,
                              fold=-1 if args.fold is None else args.fold,
                              run_info={"ckpt": str(ckpt.resolve())}, train_cfg=train_cfg)
    amp = amp_settings(settings.precision, settings.device)
    if info.is_main:
        logger.info("%s", describe(amp))
        args.out.mkdir(parents=True, exist_ok=True)
        save_config({**cfg, "resolved": {"ckpt": str(ckpt.resolve()), "input_size": settings.input_size,
                                         "mean": list(settings.mean), "std": list(settings.std),
                                         "source": settings.source, "fold": settings.fold,
                                         "precision": amp.canonical, "autocast": amp.name, "why": describe(amp)}},
                    args.out / f"config_stage{args.stage}.yaml")
    code = EXIT_OK
    if not args.overlay_only:
        runner = {1: run_stage1, 2: run_stage2, "cell": run_stage_cell}[args.stage]
        summary = runner(model, ids, images, masks, settings)
        if summary.skipped:
            code = EXIT_SKIPPED
        if info.is_main:
            _print_summary(args.stage, settings, summary)
    if args.overlay and info.is_main:
        pics = render_overlays(model, args.overlay, images, masks, settings, args.stage,
                               top=int(cfg["overlay"]["top_labels"]), min_prob=float(cfg["overlay"]["min_prob"]))
        for path in pics:
            print(f"  picture: {path}")
    return code


def check_task(ckpt: Path, train_cfg: dict[str, Any], stage: int | str) -> None:
    """Refuse a checkpoint of the other task: stage ``cell`` needs a cell classifier, stages 1 and 2 an image model."""
    task = str(train_cfg.get("task") or "image")
    if stage == "cell" and task != "cell":
        raise ConfigError(f"{ckpt}: an image-level model (task {task}); --stage cell needs a wsss-train --task cell "
                          "checkpoint (use --stage 1 or 2 for this one)")
    if stage != "cell" and task == "cell":
        raise ConfigError(f"{ckpt}: a cell classifier (task cell); use --stage cell")


def _print_summary(stage: int | str, settings: Any, summary: Any) -> None:
    """The run's summary lines on stdout."""
    print(f"{PROG}: stage {stage} ({settings.source}, fold {settings.fold}): "
          f"{len(summary.processed)} images, {summary.n_cells} cells in {summary.seconds:.1f}s; "
          f"{summary.already_done} already done; {len(summary.skipped)} skipped")
    for image_id, reason in summary.skipped:
        print(f"  skipped {image_id}: {reason}")
    for name, path in summary.outputs.items():
        print(f"  {name}: {path}")


def _run_ws(args: argparse.Namespace, cfg: dict[str, Any], ckpt: Any, device: Any) -> int:
    """``--stage ws``: the watershed class head's mean probability in every cell (:mod:`wsss.infer.watershed_stage`)."""
    from wsss.infer.sources import ImageSource, MaskSource
    from wsss.infer.tta import tta_modes
    from wsss.infer.watershed_stage import run_stage_ws
    from wsss.watershed.predict import load_watershed

    net, model_cfg = load_watershed(ckpt, device)
    images = ImageSource(args.images)
    masks = MaskSource(args.masks, args.out, cfg["masks"].get("working_size"))
    ids = select_ids(args, images.list_ids())
    path, skipped, n_cells = run_stage_ws(net, model_cfg, ids, images, masks, args.out,
                                          fold=-1 if args.fold is None else args.fold, tta=bool(tta_modes(cfg.get("tta"), cfg["tta_modes"])),
                                          device=device)
    print(f"{PROG}: stage ws: {len(ids) - len(skipped)} images, {n_cells} cells; {len(skipped)} skipped\n  cells: {path}")
    for image_id, reason in skipped:
        print(f"  skipped {image_id}: {reason}")
    return EXIT_SKIPPED if skipped else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wsss-infer``; setup errors print one line and exit 2, skipped ids give exit 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from wsss.data.folds import FoldsError
    from wsss.infer.crops import CropError
    from wsss.infer.runner import RunError
    from wsss.infer.scoring import ScoringError
    from wsss.infer.tables import TableError
    from wsss.models.checkpoint import CheckpointError

    try:
        return _run(args)
    except (ConfigError, FoldsError, CropError, RunError, ScoringError, TableError, CheckpointError,
            OutputPathError, FileNotFoundError, ValueError) as exc:
        return refuse(PROG, exc)


if __name__ == "__main__":
    sys.exit(main())
