"""``wsss-oof RUN_DIR... --folds folds.csv --out DIR [--stage 1|2|cell]``: merge per-fold OOF tables.

Checks that every training id of ``folds.csv`` is covered exactly once by a run of its own fold,
prints the missing / duplicate / wrong-fold / extra ids, writes the merged tables and a report,
and exits 1 when coverage is incomplete (unless ``--allow-missing``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from wsss.cli.common import EXIT_EPILOG, EXIT_OK, EXIT_SKIPPED, refuse, stage_type
from wsss.fileio import OutputPathError, check_output_dir

logger = logging.getLogger(__name__)

PROG = "wsss-oof"


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``wsss-oof``."""
    p = argparse.ArgumentParser(prog=PROG, description="Merge the per-fold out-of-fold tables of wsss-infer runs.",
                                epilog=EXIT_EPILOG)
    p.add_argument("runs", nargs="+", type=Path, help="wsss-infer --fold k output folders, one per fold")
    p.add_argument("--folds", type=Path, required=True, help="folds CSV (ID,Label,fold)")
    p.add_argument("--out", type=Path, required=True, help="folder for oof_*_stage{n}.parquet and the report")
    p.add_argument("--stage", type=stage_type("1", "2", "cell"), default=1, help="which stage's tables to merge: 1, 2 or cell (default 1)")
    p.add_argument("--allow-missing", action="store_true", help="exit 0 even when coverage is incomplete")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wsss-oof``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from wsss.data.folds import FoldsError, read_folds
    from wsss.infer.oof import merge_oof, write_oof
    from wsss.infer.tables import TableError

    try:
        check_output_dir(args.out)
        folds = read_folds(args.folds)
        merged, report = merge_oof(args.runs, folds, stage=args.stage)
        paths = write_oof(args.out, merged, report)
    except (FoldsError, TableError, FileNotFoundError, OutputPathError) as exc:
        return refuse(PROG, exc)
    for line in report.lines():
        print(f"{PROG}: {line}")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    if not report.complete:
        print(f"{PROG}: incomplete OOF coverage (see {paths['report']})", file=sys.stderr)
        return EXIT_OK if args.allow_missing else EXIT_SKIPPED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
