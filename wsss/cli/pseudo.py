"""``wsss-pseudo OOF_CELLS --folds folds.csv --out DIR``: soft targets for a pseudo-label round.

Reads one out-of-fold per-cell table (``wsss-oof`` of any stage, or a ``wsss-ensemble`` of several)
and writes, atomically, into ``DIR``:

* ``cell_targets.parquet``: per-cell soft targets (per-cell table contract) for
  ``wsss-train --task cell --soft-labels DIR/cell_targets.parquet``;
* ``image_targets.parquet``: per-image soft targets (image-level contract) for the Puzzle-CAM model,
  ``wsss-train --soft-labels DIR/image_targets.parquet``;
* ``pseudo_report.json``: inputs, options, counts and the mean target per class.

Classes an image's labels lack are masked to 0 (Negative only at the image level), and image
targets aggregate the cells (``--image-agg max``: max over cells for classes 0-17, min for
Negative); see :mod:`wsss.pseudo` and docs/cells.md. A re-run rewrites the outputs (seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from wsss.cli.common import EXIT_EPILOG, EXIT_OK, refuse

logger = logging.getLogger(__name__)

PROG = "wsss-pseudo"


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``wsss-pseudo``."""
    from wsss.pseudo import AGGREGATIONS

    p = argparse.ArgumentParser(prog=PROG, epilog=EXIT_EPILOG,
                                description="Soft per-cell and per-image training targets from an out-of-fold "
                                            "per-cell table (one pseudo-label round).")
    p.add_argument("table", type=Path, help="OOF per-cell table (wsss-oof oof_cells_*.parquet or a wsss-ensemble output)")
    p.add_argument("--folds", type=Path, required=True, help="folds CSV (ID,Label,fold): the image labels")
    p.add_argument("--out", type=Path, required=True, help="folder for cell_targets.parquet, image_targets.parquet")
    p.add_argument("--image-agg", choices=AGGREGATIONS, default="max",
                   help="cells -> image target: max (default; Negative: min), mean, noisy_or")
    p.add_argument("--no-mask", action="store_true", help="keep classes the image labels lack (default: set to 0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wsss-pseudo``; bad input prints one line and exits 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from wsss.data.classes import label_to_multihot
    from wsss.data.folds import FoldsError, read_folds
    from wsss.fileio import OutputPathError, atomic_write_bytes, check_output_dir
    from wsss.infer.tables import write_parquet
    from wsss.masks import MaskError
    from wsss.pseudo import PseudoError, cell_targets, image_targets, summary
    from wsss.tables import check_probabilities, read_cell_table

    try:
        check_output_dir(args.out)
        cells = read_cell_table(args.table)
        check_probabilities(cells, args.table)
        folds = read_folds(args.folds)
        labels = None if args.no_mask else {str(i): label_to_multihot(lab) for i, lab in zip(folds["ID"], folds["Label"])}
        cell_t = cell_targets(cells, labels, name=str(args.table))
        image_t = image_targets(cell_t, labels, agg=args.image_agg, name=str(args.table))
    except (MaskError, FoldsError, PseudoError, OutputPathError, ValueError) as exc:
        return refuse(PROG, exc)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {"cells": write_parquet(cell_t, args.out / "cell_targets.parquet"),
             "images": write_parquet(image_t, args.out / "image_targets.parquet")}
    report = {"table": str(args.table.resolve()), "folds": str(args.folds.resolve()), "image_agg": args.image_agg,
              "mask_by_labels": not args.no_mask, **summary(cell_t, image_t)}
    atomic_write_bytes(args.out / "pseudo_report.json", json.dumps(report, indent=2).encode())
    print(f"{PROG}: {report['n_cells']} cells of {report['n_images']} images from {args.table} "
          f"(image targets: {args.image_agg}; masked by labels: {not args.no_mask})")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
