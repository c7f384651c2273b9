"""``wsss-ensemble A.parquet B.parquet team.csv -o ens.parquet``: combine per-cell predictions.

Inputs are per-cell tables and/or submission CSVs; the output is a per-cell table on the
primary source's cells (and optionally a submission CSV). See :mod:`wsss.ensemble` for the
matching rules, the unmatched-cell policies and the methods.

Post-processing (:mod:`wsss.postprocess`, section ``postprocess`` of ``configs/ensemble.yaml``, every
step off by default): image context, image/cell blending (needs ``--images``, image-level tables such as
``images_stage1.parquet``), Negative suppression, border and small-cell down-weighting, applied to
the combined table in that order; the resolved section is written beside the output as
``{OUT stem}_config.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from wsss.cli.common import EXIT_EPILOG, EXIT_OK, refuse
from wsss.ensemble import (
    IOU_THRESHOLD,
    MATCH_MODES,
    MAX_UNMATCHED,
    METHODS,
    UNMATCHED_POLICIES,
    EnsembleError,
    ensemble,
    read_source,
)
from wsss.config import ConfigError, apply_overrides, load_config, merge, save_config
from wsss.fileio import OutputPathError, check_output_file
from wsss.masks import MaskError
from wsss.postprocess import PostParams, default_config, postprocess
from wsss.schema import PROB_COLUMNS
from wsss.tables import CellTableError, read_image_table
from wsss.submission import build_submission, read_image_sizes, write_submission

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``wsss-ensemble``."""
    parser = argparse.ArgumentParser(
        prog="wsss-ensemble",
        description="Ensemble per-cell tables and submission CSVs cell by cell onto the primary source's cells.",
        epilog=EXIT_EPILOG,
    )
    parser.add_argument("inputs", type=Path, nargs="+",
                        help="per-cell tables (.parquet/.csv) and/or submission CSVs (with PredictionString)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="per-cell table to write (.parquet or .csv)")
    parser.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per input (default 1 each)")
    parser.add_argument("--names", nargs="+", default=None, help="one name per input (default: file stems)")
    parser.add_argument("--method", choices=METHODS, default="geom",
                        help="weighted mean, rank mean or geometric mean (default geom: best of the three on "
                             "out-of-fold tables under both cell-metric protocols, docs/inference.md)")
    parser.add_argument("--primary", type=int, default=0,
                        help="index of the input whose cells/masks are kept (default 0)")
    parser.add_argument("--match", choices=MATCH_MODES, default="auto",
                        help="id: join on (image_id, cell_id); iou: mask IoU matching; auto: id when both rows "
                             "use the same label-map file, else iou (default)")
    parser.add_argument("--iou", type=float, default=IOU_THRESHOLD,
                        help=f"IoU threshold of matching (default {IOU_THRESHOLD})")
    parser.add_argument("--unmatched", choices=UNMATCHED_POLICIES, default="renorm",
                        help="primary cells a source lacks: renorm (combine the others), fill (count the "
                             "source as --fill-value), drop (leave the cell out) (default renorm)")
    parser.add_argument("--max-unmatched", type=float, default=MAX_UNMATCHED,
                        help="refuse when a source leaves more than this share of the primary's cells unmatched "
                             f"(0..1, default {MAX_UNMATCHED}; 1 = never)")
    parser.add_argument("--fill-value", type=float, default=0.0, help="score of a missing source with --unmatched fill")
    parser.add_argument("--missing-score", type=float, default=0.0,
                        help="score of a class a submission input does not list for a mask (default 0)")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML with a postprocess section (configs/ensemble.yaml; every step off by default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set postprocess.blend.image=0.3 (repeatable)")
    parser.add_argument("--images", type=Path, nargs="+", default=None,
                        help="image-level tables (image_id, p_0..p_18; several are averaged) for postprocess.blend")
    parser.add_argument("--submission", type=Path, default=None, help="also write a submission CSV here")
    parser.add_argument("--ids", type=Path, default=None, help="image list for --submission (see wsss-submit --ids)")
    parser.add_argument("--min-confidence", type=float, default=None, help="confidence floor for --submission")
    return parser


def _write_table(df: pd.DataFrame, path: Path) -> None:
    """Write a per-cell table as parquet (or CSV for a .csv suffix) through a temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.suffix.lower() == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _postprocess_config(args: argparse.Namespace) -> tuple[dict, PostParams]:
    """Defaults, then ``--config``, then ``--set``; checked (:class:`~wsss.config.ConfigError`)."""
    cfg = default_config()
    if args.config is not None:
        cfg = merge(cfg, load_config(args.config))
    cfg = apply_overrides(cfg, args.overrides)
    params = PostParams.from_config(cfg)
    if params.needs_images and not args.images:
        raise ConfigError("postprocess.blend.image > 0 needs image-level tables: --images images_stage1.parquet")
    return cfg, params


def _read_image_tables(paths: Sequence[Path]) -> pd.DataFrame:
    """Image-level tables (parquet or CSV with ``image_id, p_0..p_18``) stacked; the blend averages duplicates."""
    try:
        return pd.concat([read_image_table(path)[["image_id", *PROB_COLUMNS]] for path in paths], ignore_index=True)
    except CellTableError as exc:
        raise EnsembleError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wsss-ensemble``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    n = len(args.inputs)
    weights = args.weights or [1.0] * n
    names = args.names or [None] * n
    if len(weights) != n or len(names) != n:
        return refuse("wsss-ensemble", f"{n} inputs but {len(weights)} weights / {len(names)} names")
    try:
        for path in (args.out, args.submission):  # before the work: a path that cannot be written loses nothing
            if path is not None:
                check_output_file(path)
        cfg, params = _postprocess_config(args)
        image_tables = _read_image_tables(args.images) if params.needs_images else None
        images = read_image_sizes(args.ids) if args.ids is not None and args.submission is not None else None
        sources = [read_source(p, w, name, args.missing_score) for p, w, name in zip(args.inputs, weights, names)]
        out = ensemble(sources, primary=args.primary, method=args.method, match=args.match,
                       iou_threshold=args.iou, unmatched=args.unmatched, fill_value=args.fill_value, progress=True,
                       max_unmatched=args.max_unmatched)
        out = postprocess(out, params, image_tables)
        _write_table(out, args.out)
        save_config(cfg, args.out.with_name(f"{args.out.stem}_config.yaml"))
        if args.submission is not None:
            write_submission(build_submission(out, images, min_confidence=args.min_confidence, progress=True),
                             args.submission)
    except (EnsembleError, MaskError, OutputPathError, ConfigError) as exc:  # SubmissionError included
        return refuse("wsss-ensemble", exc)
    coverage = out["n_sources"].value_counts().sort_index()
    print("sources covering a cell: " + ", ".join(f"{k}: {v}" for k, v in coverage.items()))
    print("post-processing: " + ("; ".join(params.active) or "none"))
    print(f"wsss-ensemble: {len(sources)} sources ({args.method}) -> {len(out)} cells in "
          f"{out['image_id'].nunique()} images -> {args.out}"
          + (f" (submission: {args.submission})" if args.submission else ""))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
