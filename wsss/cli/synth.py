"""``wsss-synth OUT``: generate a synthetic HPA-like data set with per-cell truth.

Example::

    wsss-synth data/synth --count 200 --size 256 --seed 0 --workers 2

See :mod:`wsss.data.synth` for the output layout and the labelling rules.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from wsss.cli.common import EXIT_EPILOG, EXIT_OK, refuse
from wsss.data.synth import MIN_SIZE, SynthError, SynthOptions, generate, load_class_freq

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``wsss-synth``."""
    p = argparse.ArgumentParser(
        prog="wsss-synth",
        description="Generate synthetic HPA-like RGBY images (Kaggle layout) with cell/nucleus masks and "
                    "per-cell labels. Same seed and options give byte-identical files; finished ids are skipped.",
        epilog=EXIT_EPILOG,
    )
    p.add_argument("out", metavar="OUT", help="output folder (train.csv, train/, masks/, cell_labels.csv, ...)")
    p.add_argument("--count", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--size", type=int, default=512, help=f"image size in px, >= {MIN_SIZE} (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed; ids are syn{seed:04d}_{index:05d} (default 0)")
    p.add_argument("--cells-min", type=int, default=4, help="fewest cells planned per image (default 4)")
    p.add_argument("--cells-max", type=int, default=25, help="most cells planned per image (default 25)")
    p.add_argument("--cell-scale", type=float, default=1.0,
                   help="cell size multiplier (1.0 = about 90 px cell diameter at 512 px; default 1.0)")
    p.add_argument("--variability", type=float, default=0.3,
                   help="probability that an image is heterogeneous, i.e. some of its cells carry another "
                        "label set or Negative (default 0.3)")
    p.add_argument("--class-freq", default="writeup",
                   help="class distribution: 'writeup' (the Puzzle-CAM writeup's class totals), 'uniform', or a "
                        "JSON file (list of 19 weights, or {class id or name: weight}) (default writeup)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--sheet", type=int, default=8, help="images on contact_sheet.png (0 = none; default 8)")
    p.add_argument("--gallery", action=argparse.BooleanOptionalAction, default=True,
                   help="write class_gallery.png, one cell per class (default on)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wsss-synth``; returns the process exit code (0 ok, 2 bad options or input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        shares, source = load_class_freq(args.class_freq)
        opts = SynthOptions(size=args.size, seed=args.seed, cells_min=args.cells_min, cells_max=args.cells_max,
                            cell_scale=args.cell_scale, variability=args.variability,
                            class_freq=tuple(float(v) for v in shares), class_freq_source=source)
        report = generate(args.out, opts, count=args.count, workers=args.workers, sheet=args.sheet,
                          gallery=args.gallery, progress=not args.quiet)
    except (SynthError, OSError) as exc:
        return refuse("wsss-synth", exc)
    per_image = report.render_seconds / report.generated if report.generated else 0.0
    print(f"wsss-synth: {len(report.ids)} images in {report.out_dir} ({report.generated} generated, "
          f"{report.skipped} already finished) in {report.seconds:.1f} s "
          f"(render+write {per_image:.3f} s/image per worker, {args.workers} worker(s))")
    if report.contact_sheet:
        print(f"wsss-synth: contact sheet {report.contact_sheet}")
    if report.gallery:
        print(f"wsss-synth: class gallery {report.gallery}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
