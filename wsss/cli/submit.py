"""``wsss-submit CELLS -o submission.csv``: a Kaggle submission from a per-cell table.

Every cell's mask is upscaled from its label map to the image's original size (nearest
neighbour, ``cv2.INTER_NEAREST``) and encoded exactly as the competition's format requires; one
``class confidence mask`` triplet per cell and class kept (all 19 classes unless
``--min-confidence`` is given).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from wsss.cli.common import EXIT_EPILOG, EXIT_OK, refuse
from wsss.fileio import OutputPathError, check_output_file
from wsss.masks import MaskError
from wsss.submission import build_submission, read_image_sizes, write_submission
from wsss.tables import check_probabilities, read_cell_table

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``wsss-submit``."""
    parser = argparse.ArgumentParser(
        prog="wsss-submit",
        description="Write a Kaggle HPA single-cell submission (ID,ImageWidth,ImageHeight,PredictionString) "
                    "from a per-cell table (parquet, or CSV with the same columns).",
        epilog=EXIT_EPILOG,
    )
    parser.add_argument("cells", type=Path, help="per-cell table (image_id, cell_id, p_0..p_18, mask_path, ...)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="submission CSV to write")
    parser.add_argument("--ids", type=Path, default=None,
                        help="image list giving every output row in order: a sample submission "
                             "(ID,ImageWidth,ImageHeight) or a manifest (ID,width,height); images without "
                             "cells get an empty PredictionString (default: the table's images)")
    parser.add_argument("--min-confidence", type=float, default=None,
                        help="keep triplets with p >= this (default: all 19 classes of every cell)")
    parser.add_argument("--decimals", type=int, default=None,
                        help="significant digits of confidences (default: exact; rounding can create ties)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wsss-submit``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        check_output_file(args.out)  # before the work: a path that cannot be written loses nothing
        cells = read_cell_table(args.cells)
        check_probabilities(cells, args.cells)
        images = read_image_sizes(args.ids) if args.ids is not None else None
        sub = build_submission(cells, images, min_confidence=args.min_confidence, decimals=args.decimals,
                               progress=True)
        write_submission(sub, args.out)
    except (MaskError, OutputPathError) as exc:  # SubmissionError included
        return refuse("wsss-submit", exc)
    n_triplets = int(sub["PredictionString"].map(lambda s: len(s.split()) // 3).sum())
    n_empty = int((sub["PredictionString"] == "").sum())
    print(f"wsss-submit: {len(sub)} images ({n_empty} empty), {n_triplets} triplets -> {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
