"""``wsss-prepare SRC OUT --size 512``: build the RGBY cache and its manifest from the Kaggle layout.

Under ``torchrun`` every rank prepares its share of the ids (balanced by image size) and rank 0
merges the manifest and prints the report (:mod:`wsss.data.prepare`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from wsss.cli.common import EXIT_EPILOG, EXIT_OK, EXIT_SKIPPED, refuse
from wsss.data.io import ImageReadError, list_image_ids
from wsss import dist
from wsss.data.prepare import prepare_cache

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``wsss-prepare``."""
    parser = argparse.ArgumentParser(
        prog="wsss-prepare",
        description="Merge the four stains of every id into one RGBY PNG at --size, with manifest.csv "
                    "holding each id's original width and height. Resumable: finished ids are skipped.",
        epilog=EXIT_EPILOG,
    )
    parser.add_argument("src", type=Path, help="folder in the Kaggle layout {ID}_{red,green,blue,yellow}.png")
    parser.add_argument("out", type=Path, help="cache folder to write ({ID}.png + manifest.csv)")
    parser.add_argument("--size", type=int, default=512, help="output side in pixels (default 512)")
    parser.add_argument("--csv", type=Path, default=None,
                        help="only the ids of this CSV's ID column (default: every id found in SRC)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _ids(args: argparse.Namespace) -> list[str]:
    if args.csv is None:
        return list_image_ids(args.src)
    if not args.csv.is_file():
        raise ImageReadError(f"{args.csv}: CSV not found")
    frame = pd.read_csv(args.csv, dtype=str, keep_default_na=False)
    if "ID" not in frame.columns:
        raise ImageReadError(f"{args.csv}: no ID column (columns: {', '.join(frame.columns)})")
    return [str(i) for i in frame["ID"]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wsss-prepare``; exit code 1 when any id failed (the others are still written)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        ids = _ids(args)
        with dist.session("cpu") as info:
            report = prepare_cache(args.src, args.out, ids, size=args.size, workers=args.workers,
                                   progress=not args.quiet)
    except (ImageReadError, ValueError, OSError) as exc:
        return refuse("wsss-prepare", exc)
    if not info.is_main:  # rank 0 prints the report of every rank
        return EXIT_SKIPPED if report.failed else EXIT_OK
    print(f"wsss-prepare: {len(report.written)} written, {len(report.skipped)} already done, "
          f"{len(report.failed)} failed -> {args.out}")
    if report.failed:
        print("failed ids:", file=sys.stderr)
        for image_id, message in report.failed:
            print(f"  {message}", file=sys.stderr)
        return EXIT_SKIPPED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
