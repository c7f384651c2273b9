"""``wsss-fuse PRIMARY OTHER OUT``: segmentation-level fusion of two folders of label-map files.

For every id that both folders hold as ``{ID}.npz`` (``wsss-segment`` output, e.g. the classical
``hpa_seg`` maps and the watershed model's), the cells both segmentations agree on (matched one
to one by mask IoU >= ``--iou``) are kept, their mask taken from ``--agreed``; every other cell
comes from PRIMARY (:func:`wsss.ensemble.fuse_label_maps`). The nuclei are PRIMARY's; a fused cell
without a nucleus is dropped, so stages 1 and 2 run on ``OUT`` unchanged. Ids present in only one
folder are listed and skipped. Resumable: ids whose output exists and loads are skipped (files
are written atomically); ``OUT/fuse_config.json`` records the settings, and resuming with others
is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from wsss.cli.common import EXIT_EPILOG, EXIT_OK, EXIT_SKIPPED, refuse
from wsss.fileio import OutputPathError, check_output_dir, guard_settings

logger = logging.getLogger(__name__)

PROG = "wsss-fuse"
CONFIG_NAME = "fuse_config.json"


class FuseError(RuntimeError):
    """A problem with the command line or the input folders (reported on one line)."""


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``wsss-fuse``."""
    from wsss.ensemble import FUSE_AGREED, IOU_THRESHOLD  # noqa: PLC0415

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, epilog=EXIT_EPILOG)
    p.add_argument("primary", type=Path, help="label-map folder whose cells fill every disagreement (and whose nuclei are kept)")
    p.add_argument("other", type=Path, help="label-map folder of the second segmentation")
    p.add_argument("out", type=Path, help="output folder for the fused {ID}.npz files")
    p.add_argument("--iou", type=float, default=IOU_THRESHOLD, help="mask IoU at which two cells agree")
    p.add_argument("--agreed", choices=FUSE_AGREED, default="other",
                   help="mask of an agreed cell: the primary's, the other's, their union or intersection "
                        "(with 'primary' the output is the primary itself)")
    p.add_argument("--overwrite", action="store_true", help="redo ids whose output exists")
    return p


def _ids(folder: Path, name: str) -> set[str]:
    if not folder.is_dir():
        raise FuseError(f"{name} {folder}: not a folder")
    ids = {p.stem for p in folder.glob("*.npz")}
    if not ids:
        raise FuseError(f"{name} {folder}: no {{ID}}.npz label-map files")
    return ids


def _check_config(out: Path, config: dict, overwrite: bool) -> None:
    changed = guard_settings(out / CONFIG_NAME, config, tuple(config), overwrite)
    if changed:
        raise FuseError(f"{out} was made with other settings ({', '.join(changed)} differ); "
                        "use another output folder or --overwrite")


def fuse_one(primary: Path, other: Path, out: Path, iou: float, agreed: str) -> tuple[int, int, int]:
    """Fuse one id's two files into ``out``; returns (cells of primary, agreed cells, fused cells)."""
    from wsss.ensemble import fuse_label_maps  # noqa: PLC0415
    from wsss.masks import MaskError, load_label_maps, save_label_maps  # noqa: PLC0415

    a, b = load_label_maps(primary), load_label_maps(other)
    if a.cells.shape != b.cells.shape or (a.orig_height, a.orig_width) != (b.orig_height, b.orig_width):
        raise MaskError(f"{primary.stem}: maps differ in size ({a.cells.shape} of {a.orig_height}x{a.orig_width} "
                        f"vs {b.cells.shape} of {b.orig_height}x{b.orig_width}); segment both at the same --size")
    cells, nuclei, n_agreed = fuse_label_maps(a.cells, a.nuclei, b.cells, iou, agreed)
    save_label_maps(out, cells, nuclei, (a.orig_height, a.orig_width))
    return a.num_cells, n_agreed, int(cells.max(initial=0))


def _main(args: argparse.Namespace) -> int:
    from wsss.masks import MaskError, is_label_map_file  # noqa: PLC0415

    if not 0.0 < args.iou <= 1.0:
        raise FuseError(f"--iou {args.iou}: must lie in (0, 1]")
    first, second = _ids(args.primary, "primary"), _ids(args.other, "other")
    ids = sorted(first & second)
    alone = sorted(first ^ second)
    if not ids:
        raise FuseError(f"{args.primary} and {args.other} share no id")
    out = check_output_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, {"primary": str(args.primary.resolve()), "other": str(args.other.resolve()),
                        "iou": args.iou, "agreed": args.agreed}, args.overwrite)
    todo = [i for i in ids if args.overwrite or not is_label_map_file(out / f"{i}.npz")]
    failed: list[str] = []
    totals = [0, 0, 0]
    for image_id in todo:
        try:
            counts = fuse_one(args.primary / f"{image_id}.npz", args.other / f"{image_id}.npz",
                              out / f"{image_id}.npz", args.iou, args.agreed)
        except MaskError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            failed.append(image_id)
            continue
        totals = [t + c for t, c in zip(totals, counts)]
    if alone:
        print(f"{PROG}: {len(alone)} id(s) in only one folder, skipped: {', '.join(alone[:10])}", file=sys.stderr)
    logger.info("fused %d id(s) (%d already done, %d failed): %d primary cells, %d agreed, %d in the fused maps; in %s",
                len(todo) - len(failed), len(ids) - len(todo), len(failed), *totals, out)
    return EXIT_SKIPPED if failed or alone else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``wsss-fuse``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _main(args)
    except (FuseError, OutputPathError) as exc:
        return refuse(PROG, exc)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
