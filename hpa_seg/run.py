"""Segment a folder of images into label-map files: the work behind ``wsss-segment``.

For every id, ``OUT/{ID}.npz`` receives the ``uint16`` maps at the working scale, the original
size and the per-cell border flags (:mod:`wsss.masks.files`). The run is resumable: ids whose
file exists and loads are skipped (files are written atomically), and the settings of the run are recorded
in ``OUT/segment_config.json``; resuming with other settings is refused unless ``overwrite``
(the resume guard of :mod:`wsss.fileio`). Images are processed in a process pool; a bad image is
reported by id on one line and the run goes on. Overlays (outlines over the composite) go to
``OUT/overlays/{ID}.png``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2

from hpa_seg.overlay import draw_segmentation
from hpa_seg.params import SegParams
from hpa_seg.pipeline import segment, segment_with_masks, segment_with_model
from wsss.data.io import ImageReadError
from wsss.data.source import read_image
from wsss.fileio import guard_settings
from wsss.masks import MaskError, is_label_map_file, load_label_maps, save_label_maps
from wsss.viz import save_png

logger = logging.getLogger(__name__)

CONFIG_NAME = "segment_config.json"
COMPARED_SETTINGS: tuple[str, ...] = ("size", "border", "masks", "params", "model", "tta", "markers", "diameter")


class SegmentRunError(RuntimeError):
    """An output folder the run cannot resume into (reported on one line)."""


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
    model: str | None = None  # a wsss-seg-train checkpoint: cells from the watershed model
    tta: bool = True
    markers: str = "nuclei"
    diameter: float | str | None = None  # expected cell diameter (px) or "auto"; None = from the image side


@dataclass(frozen=True)
class Result:
    """Outcome of one task: ``error`` is a one-line message when it failed."""

    image_id: str
    n_cells: int = 0
    error: str | None = None


_MODELS: dict[str, tuple] = {}


def _watershed_model(path: str) -> tuple:
    """The watershed model of a checkpoint, loaded once per process (CPU)."""
    if path not in _MODELS:
        from wsss.watershed.predict import load_watershed

        _MODELS[path] = load_watershed(path, "cpu")
    return _MODELS[path]


def _init_worker() -> None:
    """Single-threaded numerical libraries in each worker (the parallelism is across images)."""
    cv2.setNumThreads(1)


def run_task(task: Task) -> Result:
    """Segment (or load masks for) one image and write its label-map file; never raises."""
    try:
        rgby = read_image(task.kind, Path(task.root), task.image_id)
        orig_hw = task.orig_hw or (int(rgby.shape[0]), int(rgby.shape[1]))
        params = SegParams().with_overrides(**task.params)
        if task.masks:
            cells, nuclei = segment_with_masks(rgby, task.masks, task.image_id, task.size, params, task.border,
                                               orig_hw=orig_hw)
        elif task.model:
            net, cfg = _watershed_model(task.model)
            cells, nuclei = segment_with_model(rgby, net, cfg, task.size, params, task.border, task.tta, task.markers)
        else:
            cells, nuclei = segment(rgby, task.size, params, task.border, task.diameter)
        save_label_maps(task.out_path, cells, nuclei, orig_hw)
        return Result(task.image_id, int(cells.max(initial=0)))
    except Exception as exc:  # noqa: BLE001 - every failure is reported by id and the run goes on
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not msg.startswith(task.image_id):
            msg = f"{task.image_id}: {msg}"
        return Result(task.image_id, error=msg)


def run_tasks(tasks: list[Task], workers: int, progress: bool, desc: str = "segment") -> list[Result]:
    """Run tasks in ``workers`` processes (in-process when 1) with a progress bar."""
    from tqdm import tqdm  # noqa: PLC0415

    results: list[Result] = []
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress)
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
    """Refuse to resume into ``out`` with settings other than those it was made with; record them.

    An unreadable record is ignored (it is rewritten).
    """
    changed = guard_settings(out / CONFIG_NAME, config, COMPARED_SETTINGS, overwrite)
    if changed:
        raise SegmentRunError(f"{out} was made with other settings ({', '.join(changed)} differ); "
                              "use another output folder or --overwrite")


def pending_ids(ids: list[str], out: Path, overwrite: bool) -> list[str]:
    """The ids still to do (all with ``overwrite``; finished ids are skipped, logged).

    An id is finished when its ``{ID}.npz`` is a label-map file that opens and holds every array
    of the format (:func:`wsss.masks.is_label_map_file`); a zero-byte or truncated file is redone.
    """
    todo = [i for i in ids if overwrite or not is_label_map_file(out / f"{i}.npz")]
    if len(todo) < len(ids):
        logger.info("%d of %d ids already done in %s (skipped)", len(ids) - len(todo), len(ids), out)
    return todo


def make_tasks(ids: list[str], out: Path, kind: str, root: Path, orig_sizes: dict[str, tuple[int, int]],
               size: int | None, border: str, masks: Path | None, params: dict,
               model: Path | None = None, tta: bool = True, markers: str = "nuclei",
               diameter: float | str | None = None) -> list[Task]:
    """One :class:`Task` per id. ``model`` (a watershed checkpoint), ``tta`` and ``markers``: see
    :func:`hpa_seg.pipeline.segment_with_model`; ``diameter``: see :func:`hpa_seg.pipeline.segment`."""
    return [Task(i, str(out / f"{i}.npz"), kind, str(root), orig_sizes.get(i), size, border,
                 str(masks) if masks else None, params, str(model) if model else None, tta, markers, diameter) for i in ids]


def pending_tasks(ids: list[str], out: Path, kind: str, root: Path, orig_sizes: dict[str, tuple[int, int]],
                  size: int | None, border: str, masks: Path | None, params: dict, overwrite: bool,
                  model: Path | None = None, tta: bool = True, markers: str = "nuclei",
                  diameter: float | str | None = None) -> list[Task]:
    """The tasks of the ids still to do (:func:`pending_ids`, then :func:`make_tasks`)."""
    return make_tasks(pending_ids(ids, out, overwrite), out, kind, root, orig_sizes, size, border, masks, params,
                      model, tta, markers, diameter)


def write_overlays(kind: str, root: Path, known_ids: list[str], out: Path, ids: list[str]) -> list[str]:
    """Write ``out/overlays/{ID}.png`` (at the maps' scale) for each id (``["all"]``: every id); return one-line errors."""
    errors: list[str] = []
    if ids == ["all"]:
        ids = known_ids
    known = set(known_ids)
    for image_id in ids:
        if image_id not in known:
            errors.append(f"overlay {image_id}: no such id in {root}")
            continue
        try:
            maps = load_label_maps(out / f"{image_id}.npz")
            rgby = read_image(kind, root, image_id)
            if rgby.shape[:2] != maps.cells.shape:
                rgby = cv2.resize(rgby, (maps.cells.shape[1], maps.cells.shape[0]), interpolation=cv2.INTER_AREA)
            pic = draw_segmentation(rgby, maps.cells, maps.nuclei, title=f"{image_id}  {maps.num_cells} cells")
            path = save_png(out / "overlays" / f"{image_id}.png", pic)
            logger.info("overlay %s", path)
        except (MaskError, ImageReadError, OSError, ValueError) as exc:
            errors.append(f"overlay {image_id}: {exc}")
    return errors
