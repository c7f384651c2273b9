"""``wsss-segment IMAGES OUT``: cell and nucleus label maps for every image of a folder.

IMAGES is either the Kaggle layout (``{ID}_{red,green,blue,yellow}.{png,jpg,tif}``) or a prepared
cache (``{ID}.png`` 4-channel files plus ``manifest.csv`` giving each id's original size).
For every id, ``OUT/{ID}.npz`` receives the ``uint16`` maps at the working scale, the original
size and the per-cell border flags (see :mod:`wsss.masks.files`). The run is resumable: ids whose
file exists and loads are skipped (files are written atomically). A bad image is reported by id on
one line and the run goes on; the exit status is 1 when any image failed (2: refused before any
work). An image without cells gives empty maps. ``--overlay ID ...`` writes
``OUT/overlays/{ID}.png`` (outlines over the composite). The settings of the run are written to ``OUT/segment_config.json``; resuming with
other settings is refused unless ``--overwrite``. The work is done by :mod:`hpa_seg.run`.

Under ``torchrun`` (``torchrun --nproc-per-node P -m wsss.cli.segment ...``) every rank segments
its share of the ids still to do, balanced by image size (:mod:`wsss.dist`), and rank 0 reports
the whole run; the files are the ones a single process writes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from wsss.cli.common import EXIT_EPILOG, EXIT_OK, EXIT_SKIPPED, refuse
from wsss.fileio import OutputPathError, check_output_dir

logger = logging.getLogger(__name__)

PROG = "wsss-segment"


class SegmentCliError(RuntimeError):
    """A problem with the command line or the input folder (reported on one line)."""


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``wsss-segment``."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, epilog=EXIT_EPILOG)
    p.add_argument("images", type=Path, help="Kaggle-layout folder or prepared cache (with manifest.csv)")
    p.add_argument("out", type=Path, help="output folder for {ID}.npz label maps")
    p.add_argument("--size", type=int, default=512, help="working side in px; 0 = full resolution")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--border", choices=("keep", "drop"), default="keep",
                   help="keep cells touching the image border (flagged in the file) or drop them")
    p.add_argument("--masks", type=Path, default=None,
                   help="folder of precomputed label maps to use instead of segmenting (see wsss.masks.files)")
    p.add_argument("--diameter", default=None, metavar="PX|auto",
                   help="expected cell diameter in px at the working size (cellpose's convention), or 'auto' "
                        "(estimated from the nuclei); default: sizes follow the image side")
    p.add_argument("--model", type=Path, default=None, metavar="CKPT",
                   help="a wsss-seg-train checkpoint: cells from the trained watershed model (nuclei stay classical)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="with --model: average the 4 flips before the watershed")
    p.add_argument("--markers", choices=("cores", "nuclei"), default="nuclei",
                   help="with --model: seeds from the classical nuclei (measured better, docs/watershed.md) "
                        "or from the model's high-energy cores")
    p.add_argument("--overlay", nargs="+", default=[], metavar="ID",
                   help="write OUT/overlays/{ID}.png for these ids ('all' for every id)")
    p.add_argument("--ids", nargs="+", default=None, metavar="ID", help="only these ids")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a segmentation parameter (hpa_seg.params.SegParams), repeatable")
    p.add_argument("--overwrite", action="store_true", help="redo ids whose output exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse_params(items: list[str]) -> dict[str, float]:
    """``["name=value", ...]`` to a dict of SegParams overrides (names checked)."""
    from hpa_seg.params import SegParams  # noqa: PLC0415

    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SegmentCliError(f"--param {item!r}: expected NAME=VALUE")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise SegmentCliError(f"--param {item!r}: value is not a number") from None
    try:
        SegParams().with_overrides(**out)
    except TypeError as exc:
        raise SegmentCliError(f"--param: {exc}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``wsss-segment``; returns the exit status."""
    from hpa_seg.run import SegmentRunError  # noqa: PLC0415
    from wsss.data.io import ImageReadError  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _main(args)
    except (SegmentCliError, SegmentRunError, ImageReadError, OutputPathError) as exc:
        return refuse(PROG, exc)


def _diameter(value: str | None) -> float | str | None:
    """``--diameter``: ``None``, ``"auto"`` or a positive number of px."""
    if value is None or value == "auto":
        return value
    try:
        number = float(value)
    except ValueError:
        raise SegmentCliError(f"--diameter {value!r}: expected a number of px or 'auto'") from None
    if number <= 0:
        raise SegmentCliError(f"--diameter {value!r}: must be positive")
    return number


def _check_model(path: Path) -> None:
    """Refuse a ``--model`` that is not a readable watershed checkpoint (one line, before any work)."""
    from wsss.models.checkpoint import CheckpointError, read_metadata  # noqa: PLC0415
    from wsss.watershed.defaults import FORMAT  # noqa: PLC0415

    try:
        fmt = read_metadata(path).get("format")
    except CheckpointError as exc:
        raise SegmentCliError(f"--model: {exc}") from None
    if fmt != FORMAT:
        raise SegmentCliError(f"--model {path}: not a watershed checkpoint (format {fmt!r}; train one with wsss-seg-train)")


def _main(args: argparse.Namespace) -> int:
    from hpa_seg import run  # noqa: PLC0415
    from hpa_seg.params import SegParams  # noqa: PLC0415
    from wsss import dist  # noqa: PLC0415
    from wsss.data.source import ImageSource  # noqa: PLC0415

    if args.workers < 1:
        raise SegmentCliError("--workers must be at least 1")
    if args.size < 0 or 0 < args.size < 16:
        raise SegmentCliError("--size must be 0 (full resolution) or at least 16")
    if args.masks is not None and not args.masks.is_dir():
        raise SegmentCliError(f"--masks {args.masks}: not a folder")
    if args.model is not None:
        if args.masks is not None:
            raise SegmentCliError("--model and --masks exclude each other")
        _check_model(args.model)
    size = args.size or None
    params = parse_params(args.param)
    diameter = _diameter(args.diameter)
    if not args.images.is_dir():
        raise SegmentCliError(f"{args.images}: not a folder")
    source = ImageSource(args.images)
    all_ids = sorted(source.list_ids())
    ids = all_ids
    if args.ids:
        unknown = sorted(set(args.ids) - set(ids))
        if unknown:
            raise SegmentCliError(f"{len(unknown)} id(s) not in {args.images}: {', '.join(unknown[:5])}")
        ids = [i for i in ids if i in set(args.ids)]
    if not ids:
        raise SegmentCliError(f"{args.images}: no images found")
    out: Path = check_output_dir(args.out)
    config = {"images": str(args.images.resolve()), "layout": source.kind, "size": size, "border": args.border,
              "masks": str(args.masks.resolve()) if args.masks else None,
              "params": asdict(SegParams().with_overrides(**params)),
              "diameter": diameter,
              "model": str(args.model.resolve()) if args.model else None,
              "tta": bool(args.tta) if args.model else None, "markers": args.markers if args.model else None}
    with dist.session("cpu") as info:
        def plan() -> tuple[list[str], list[float]]:
            out.mkdir(parents=True, exist_ok=True)
            run.check_config(out, config, args.overwrite)
            todo = run.pending_ids(ids, out, args.overwrite)
            return todo, source.pixel_counts(todo) if info.enabled else []

        todo, costs = dist.on_main(plan)  # rank 0 checks the folder; every rank gets the same list
        tasks = run.make_tasks(dist.take_share(todo, costs, info=info), out, source.kind, source.root, source.sizes,
                               size, args.border, args.masks, params, args.model, bool(args.tta), args.markers,
                               diameter)
        results = run.run_tasks(tasks, args.workers, progress=not args.quiet,
                                desc=f"segment {info.rank}/{info.world_size}" if info.enabled else "segment")
        results = [r for part in dist.all_gather_objects(results) for r in part]
        overlay_errors = dist.on_main(lambda: run.write_overlays(source.kind, source.root, all_ids, out, args.overlay)
                                      if args.overlay else [])
        return _report(results, overlay_errors, len(ids) - len(todo), out, info.is_main)


def _report(results: list, overlay_errors: list[str], skipped: int, out: Path, show: bool) -> int:
    """Print the failures and the summary (when ``show``: rank 0 of a sharded run); the exit status."""
    failed = [r for r in results if r.error]
    if show:
        empty = sorted(r.image_id for r in results if not r.error and r.n_cells == 0)
        for r in sorted(failed, key=lambda r: r.image_id):
            print(f"{PROG}: {r.error}", file=sys.stderr)
        if empty:
            logger.warning("%d image(s) with no cells (empty maps written): %s", len(empty), ", ".join(empty[:10]))
        for msg in overlay_errors:
            print(f"{PROG}: {msg}", file=sys.stderr)
        done = len(results) - len(failed)
        logger.info("segmented %d image(s), %d failed, %d skipped; maps in %s", done, len(failed), skipped, out)
    if failed or overlay_errors:
        if show:
            print(f"{PROG}: {len(failed)} image(s) failed, {len(overlay_errors)} overlay(s) failed", file=sys.stderr)
        return EXIT_SKIPPED
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
