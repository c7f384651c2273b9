"""``wsss-segment IMAGES OUT``: cell and nucleus label maps for every image of a folder.

IMAGES is either the Kaggle layout (``{ID}_{red,green,blue,yellow}.{png,jpg,tif}``) or a prepared
cache (``{ID}.png`` 4-channel files plus ``manifest.csv`` giving each id's original size).
For every id, ``OUT/{ID}.npz`` receives the ``uint16`` maps at the working scale, the original
size and the per-cell border flags (see :mod:`hpa_seg.io`). The run is resumable: ids whose file
exists are skipped (files are written atomically). A bad image is reported by id on one line and
the run goes on; the exit status is non-zero when any image failed. An image without cells gives
empty maps. ``--overlay ID ...`` writes ``OUT/overlays/{ID}.png`` (outlines over the composite).
The settings of the run are written to ``OUT/segment_config.json``; resuming with other
settings is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

PROG = "wsss-segment"
CONFIG_NAME = "segment_config.json"
COMPARED_SETTINGS: tuple[str, ...] = ("size", "border", "masks", "params")


class SegmentCliError(RuntimeError):
    """A problem with the command line or the input folder (reported on one line)."""


@dataclass(frozen=True)
class ImageSource:
    """Where the images come from: ``kind`` is ``"kaggle"`` or ``"cache"``."""

    kind: str
    root: Path
    ids: list[str]
    orig_sizes: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class Task:
    """One image to segment (everything a worker process needs)."""

    image_id: str
    out_path: str
    kind: str
    root: str
    orig_hw: tuple[int, int] | None
    size: int | None
    border: str
    masks: str | None
    params: dict


@dataclass(frozen=True)
class Result:
    """Outcome of one task: ``error`` is a one-line message when it failed."""

    image_id: str
    n_cells: int = 0
    error: str | None = None


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``wsss-segment``."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("images", type=Path, help="Kaggle-layout folder or prepared cache (with manifest.csv)")
    p.add_argument("out", type=Path, help="output folder for {ID}.npz label maps")
    p.add_argument("--size", type=int, default=512, help="working side in px; 0 = full resolution")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--border", choices=("keep", "drop"), default="keep",
                   help="keep cells touching the image border (flagged in the file) or drop them")
    p.add_argument("--masks", type=Path, default=None,
                   help="folder of precomputed label maps to use instead of segmenting (see hpa_seg.masks)")
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
    from hpa_seg.params import SegParams

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


def find_source(images: Path) -> ImageSource:
    """Detect the input layout: a prepared cache when ``manifest.csv`` exists, else Kaggle."""
    from wsss.data.io import ImageReadError, list_image_ids

    if not images.is_dir():
        raise SegmentCliError(f"{images}: not a folder")
    manifest = images / "manifest.csv"
    if manifest.is_file():
        import pandas as pd

        try:
            df = pd.read_csv(manifest, dtype={"ID": str})
        except (OSError, ValueError) as exc:
            raise SegmentCliError(f"{manifest}: unreadable ({exc})") from None
        missing = {"ID", "width", "height"} - set(df.columns)
        if missing:
            raise SegmentCliError(f"{manifest}: missing column(s) {', '.join(sorted(missing))}")
        sizes = {str(r.ID): (int(r.height), int(r.width)) for r in df.itertuples(index=False)}
        return ImageSource("cache", images, sorted(sizes), sizes)
    try:
        ids = list_image_ids(images)
    except ImageReadError as exc:
        raise SegmentCliError(str(exc)) from None
    return ImageSource("kaggle", images, ids, {})


def read_image(kind: str, root: Path, image_id: str) -> np.ndarray:
    """Read one RGBY image from either layout (raises ``ImageReadError`` naming the id)."""
    from wsss.data.io import ImageReadError, read_rgby, read_rgby_png

    if kind == "cache":
        try:
            return read_rgby_png(root / f"{image_id}.png")
        except ImageReadError as exc:
            raise ImageReadError(f"{image_id}: {exc}") from None
    return read_rgby(root, image_id)


def _init_worker() -> None:
    """Single-threaded numerical libraries in each worker (the parallelism is across images)."""
    import cv2

    cv2.setNumThreads(1)


def run_task(task: Task) -> Result:
    """Segment (or load masks for) one image and write its label-map file; never raises."""
    from hpa_seg.io import save_label_maps
    from hpa_seg.params import SegParams
    from hpa_seg.pipeline import segment, segment_with_masks

    try:
        rgby = read_image(task.kind, Path(task.root), task.image_id)
        orig_hw = task.orig_hw or (int(rgby.shape[0]), int(rgby.shape[1]))
        params = SegParams().with_overrides(**task.params)
        if task.masks:
            cells, nuclei = segment_with_masks(rgby, task.masks, task.image_id, task.size, params, task.border)
        else:
            cells, nuclei = segment(rgby, task.size, params, task.border)
        save_label_maps(task.out_path, cells, nuclei, orig_hw)
        return Result(task.image_id, int(cells.max(initial=0)))
    except Exception as exc:  # noqa: BLE001 - every failure is reported by id and the run goes on
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not msg.startswith(task.image_id):
            msg = f"{task.image_id}: {msg}"
        return Result(task.image_id, error=msg)


def run_tasks(tasks: list[Task], workers: int, progress: bool) -> list[Result]:
    """Run tasks in ``workers`` processes (in-process when 1) with a progress bar."""
    from tqdm import tqdm

    results: list[Result] = []
    bar = tqdm(total=len(tasks), desc="segment", unit="img", disable=not progress)
    try:
        if workers <= 1 or len(tasks) <= 1:
            _init_worker()
            for task in tasks:
                results.append(run_task(task))
                bar.update(1)
        else:
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ctx.Pool(workers, initializer=_init_worker) as pool:
                for res in pool.imap_unordered(run_task, tasks, chunksize=1):
                    results.append(res)
                    bar.update(1)
    finally:
        bar.close()
    return results


def check_config(out: Path, config: dict, overwrite: bool) -> None:
    """Refuse to resume into ``out`` with settings other than those it was made with."""
    from wsss.data.io import atomic_write_bytes

    path = out / CONFIG_NAME
    if path.is_file() and not overwrite:
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict):
            old = None
        changed = sorted(k for k in COMPARED_SETTINGS if old is not None and old.get(k) != config.get(k))
        if changed:
            raise SegmentCliError(f"{out} was made with other settings ({', '.join(changed)} differ); "
                                  "use another output folder or --overwrite")
    atomic_write_bytes(path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())


def write_overlays(source: ImageSource, out: Path, ids: list[str]) -> list[str]:
    """Write ``out/overlays/{ID}.png`` (at the maps' scale) for each id; return one-line errors."""
    import cv2

    from hpa_seg.io import LabelMapError, load_label_maps
    from hpa_seg.overlay import draw_segmentation
    from wsss.data.io import ImageReadError
    from wsss.viz import save_png

    errors: list[str] = []
    if ids == ["all"]:
        ids = source.ids
    known = set(source.ids)
    for image_id in ids:
        if image_id not in known:
            errors.append(f"overlay {image_id}: no such id in {source.root}")
            continue
        try:
            maps = load_label_maps(out / f"{image_id}.npz")
            rgby = read_image(source.kind, source.root, image_id)
            if rgby.shape[:2] != maps.cells.shape:
                rgby = cv2.resize(rgby, (maps.cells.shape[1], maps.cells.shape[0]), interpolation=cv2.INTER_AREA)
            pic = draw_segmentation(rgby, maps.cells, maps.nuclei, title=f"{image_id}  {maps.num_cells} cells")
            path = save_png(out / "overlays" / f"{image_id}.png", pic)
            logger.info("overlay %s", path)
        except (LabelMapError, ImageReadError, OSError, ValueError) as exc:
            errors.append(f"overlay {image_id}: {exc}")
    return errors


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``wsss-segment``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _main(args)
    except SegmentCliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise SegmentCliError("--workers must be at least 1")
    if args.size < 0 or 0 < args.size < 16:
        raise SegmentCliError("--size must be 0 (full resolution) or at least 16")
    if args.masks is not None and not args.masks.is_dir():
        raise SegmentCliError(f"--masks {args.masks}: not a folder")
    size = args.size or None
    params = parse_params(args.param)
    source = find_source(args.images)
    ids = source.ids
    if args.ids:
        unknown = sorted(set(args.ids) - set(ids))
        if unknown:
            raise SegmentCliError(f"{len(unknown)} id(s) not in {args.images}: {', '.join(unknown[:5])}")
        ids = [i for i in ids if i in set(args.ids)]
    if not ids:
        raise SegmentCliError(f"{args.images}: no images found")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    from hpa_seg.params import SegParams

    config = {"images": str(args.images.resolve()), "layout": source.kind, "size": size, "border": args.border,
              "masks": str(args.masks.resolve()) if args.masks else None,
              "params": asdict(SegParams().with_overrides(**params))}
    check_config(out, config, args.overwrite)

    todo = [i for i in ids if args.overwrite or not (out / f"{i}.npz").is_file()]
    if len(todo) < len(ids):
        logger.info("%d of %d ids already done in %s (skipped)", len(ids) - len(todo), len(ids), out)
    tasks = [Task(i, str(out / f"{i}.npz"), source.kind, str(source.root), source.orig_sizes.get(i), size,
                  args.border, str(args.masks) if args.masks else None, params) for i in todo]
    results = run_tasks(tasks, args.workers, progress=not args.quiet)

    failed = [r for r in results if r.error]
    empty = sorted(r.image_id for r in results if not r.error and r.n_cells == 0)
    for r in sorted(failed, key=lambda r: r.image_id):
        print(f"{PROG}: {r.error}", file=sys.stderr)
    if empty:
        logger.warning("%d image(s) with no cells (empty maps written): %s", len(empty), ", ".join(empty[:10]))
    overlay_errors = write_overlays(source, out, args.overlay) if args.overlay else []
    for msg in overlay_errors:
        print(f"{PROG}: {msg}", file=sys.stderr)
    done = len(results) - len(failed)
    logger.info("segmented %d image(s), %d failed, %d skipped; maps in %s", done, len(failed), len(ids) - len(todo), out)
    if failed or overlay_errors:
        print(f"{PROG}: {len(failed)} image(s) failed, {len(overlay_errors)} overlay(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
