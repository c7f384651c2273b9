"""``wsss-folds --csv train.csv --n-folds 4 --seed S --out folds.csv``: multilabel-stratified folds."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from wsss.cli.common import EXIT_EPILOG, EXIT_OK, refuse
from wsss.data.folds import FoldsError, fold_table, make_folds, read_labels_csv

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``wsss-folds``."""
    parser = argparse.ArgumentParser(
        prog="wsss-folds",
        description="Split an ID,Label CSV into multilabel-stratified folds; print and save the "
                    "per-class x per-fold count table.",
        epilog=EXIT_EPILOG,
    )
    parser.add_argument("--csv", type=Path, required=True, help="ID,Label CSV (labels '|'-separated)")
    parser.add_argument("--n-folds", type=int, default=4, help="number of folds (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="folds CSV to write (ID,Label,fold)")
    parser.add_argument("--table", type=Path, default=None,
                        help="count-table CSV (default: OUT with _table.csv)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wsss-folds``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        folds = make_folds(read_labels_csv(args.csv), n_folds=args.n_folds, seed=args.seed)
    except FoldsError as exc:
        return refuse("wsss-folds", exc)
    table = fold_table(folds)
    table_path = args.table or args.out.with_name(args.out.stem + "_table.csv")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        folds.to_csv(args.out, index=False)
        table.to_csv(table_path, index=False)
    except OSError as exc:
        return refuse("wsss-folds", f"cannot write {args.out}: {exc}")
    print(table.to_string(index=False))
    print(f"wsss-folds: {len(folds)} images in {args.n_folds} folds -> {args.out} (table: {table_path})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
