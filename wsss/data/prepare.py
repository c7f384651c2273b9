"""Prepare a training cache: merge the four stains of each id, resize, write one RGBY PNG per id.

Layout of a cache folder ``OUT``:

* ``OUT/{ID}.png``: the RGBY image at ``size x size`` as a 4-channel PNG (see
  :func:`wsss.data.io.write_rgby_png`);
* ``OUT/manifest.csv``: ``ID,width,height,source``, the original width and height of every
  prepared id (the submission needs them) and the folder it came from.

The run is resumable: an id counts as finished when its PNG exists *and* its manifest row was
written; rows are appended (and flushed) as ids finish, so a killed run loses at most the ids in
flight, and PNGs are written through a temporary file and a rename, so no half-written file ever
carries a final name. Bad ids (a missing channel, a corrupt file, channels of different sizes) are
reported one line each and the run goes on with the rest.

Under ``torchrun`` every rank prepares its share of the ids still to do (balanced by the source
images' pixel counts, :mod:`wsss.dist`) and appends its rows to ``OUT/manifest-rank{r}.csv``; after
all ranks finished, rank 0 folds those files into ``manifest.csv`` (the file a single process
writes) and removes them. A resumed run, whatever its number of processes, counts the rows of
every ``manifest*.csv`` as done.
"""

from __future__ import annotations

import csv
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pandas as pd
from tqdm import tqdm

from wsss import dist
from wsss.data.io import ImageReadError, kaggle_shape, pixel_costs, read_rgby, resize_rgby, write_rgby_png

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS: tuple[str, ...] = ("ID", "width", "height", "source")
RANK_MANIFEST_GLOB = "manifest-rank*.csv"


@dataclass
class PrepareReport:
    """What a :func:`prepare_cache` run did: ids written now, ids already done, failures."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Job:
    src: str
    out: str
    image_id: str
    size: int


def cache_path(cache_dir: Path | str, image_id: str) -> Path:
    """Path of an id's RGBY PNG inside a cache folder."""
    return Path(cache_dir) / f"{image_id}.png"


def read_manifest(cache_dir: Path | str, name: str = MANIFEST_NAME) -> pd.DataFrame:
    """Read ``manifest.csv`` (or another manifest file ``name``) of a cache (an empty frame when there is none).

    A last line cut short by a killed run is dropped; duplicate ids keep their last row.
    """
    path = Path(cache_dir) / name
    if not path.is_file():
        return pd.DataFrame(columns=list(MANIFEST_COLUMNS))
    rows = []
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return pd.DataFrame(columns=list(MANIFEST_COLUMNS))
        if tuple(header) != MANIFEST_COLUMNS:
            raise ImageReadError(f"{path}: expected header {','.join(MANIFEST_COLUMNS)}, got {','.join(header)}")
        for row in reader:
            if len(row) == len(MANIFEST_COLUMNS) and row[1].isdigit() and row[2].isdigit():
                rows.append(row)
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    frame["width"] = frame["width"].astype(int)
    frame["height"] = frame["height"].astype(int)
    return frame.drop_duplicates("ID", keep="last").reset_index(drop=True)


def _prepare_one(job: _Job) -> tuple[str, int, int, str | None]:
    """Worker: read, resize and write one id; returns ``(id, width, height, error or None)``."""
    try:
        rgby = read_rgby(job.src, job.image_id)
        height, width = rgby.shape[:2]
        write_rgby_png(cache_path(job.out, job.image_id), resize_rgby(rgby, job.size))
        return job.image_id, width, height, None
    except ImageReadError as exc:
        return job.image_id, 0, 0, str(exc)
    except Exception as exc:  # noqa: BLE001 - keep the run going; the message names the id
        return job.image_id, 0, 0, f"{job.image_id}: {exc.__class__.__name__}: {exc}"


def _all_rows(out: Path) -> pd.DataFrame:
    """The rows of ``manifest.csv`` and of every rank's ``manifest-rank{r}.csv`` (duplicates keep the last)."""
    frames = [read_manifest(out, p.name) for p in sorted(out.glob(RANK_MANIFEST_GLOB))]
    frames = [read_manifest(out)] + [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True).drop_duplicates("ID", keep="last").reset_index(drop=True)


def _finished_ids(out: Path) -> set[str]:
    return {i for i in _all_rows(out)["ID"] if cache_path(out, i).is_file()}


def _append_row(handle, row: Sequence[object]) -> None:
    csv.writer(handle, lineterminator="\n").writerow(row)
    handle.flush()
    os.fsync(handle.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _rewrite_manifest(out: Path) -> None:
    """Rewrite the manifest sorted by id, without duplicates or cut lines (atomic rename), rank files folded in."""
    ranks = sorted(out.glob(RANK_MANIFEST_GLOB))
    frame = (_all_rows(out) if ranks else read_manifest(out)).sort_values("ID")
    tmp = out / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    frame.to_csv(tmp, index=False)
    os.replace(tmp, out / MANIFEST_NAME)
    for path in ranks:
        path.unlink()


def prepare_cache(
    src: Path | str,
    out: Path | str,
    ids: Iterable[str],
    size: int = 512,
    workers: int = 2,
    progress: bool = True,
) -> PrepareReport:
    """Merge and resize every id of ``ids`` from the Kaggle layout ``src`` into the cache ``out``.

    Finished ids are skipped; failures are collected in the report (and logged), never raised.
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    src, out = Path(src), Path(out)
    info = dist.current()

    def plan() -> tuple[list[str], list[str], list[float]]:
        out.mkdir(parents=True, exist_ok=True)
        done = _finished_ids(out)
        todo, skipped = [], []
        for image_id in dict.fromkeys(ids):
            (skipped if image_id in done else todo).append(image_id)
        costs = pixel_costs([kaggle_shape(src, i) for i in todo]) if info.enabled else []
        return todo, skipped, costs

    todo, skipped, costs = dist.on_main(plan)  # rank 0 reads the folder; every rank gets the same lists
    mine = dist.take_share(todo, costs, info=info)
    report = PrepareReport(skipped=list(skipped))
    name = f"manifest-rank{info.rank}.csv" if info.enabled else MANIFEST_NAME
    _prepare_ids(src, out, mine, size, workers, progress, out / name, report)
    if info.enabled:
        parts = dist.all_gather_objects(report)  # every rank has finished its share
        report = PrepareReport(written=[i for p in parts for i in p.written], skipped=list(skipped),
                               failed=[f for p in parts for f in p.failed])
        dist.on_main(lambda: _rewrite_manifest(out))
    else:
        _rewrite_manifest(out)
    return report


def _prepare_ids(src: Path, out: Path, ids: list[str], size: int, workers: int, progress: bool,
                 manifest_path: Path, report: PrepareReport) -> None:
    """Prepare ``ids``, appending each finished id's row to ``manifest_path`` and recording it in ``report``."""
    new_file = not manifest_path.is_file() or manifest_path.stat().st_size == 0
    jobs = [_Job(str(src), str(out), i, size) for i in ids]
    with open(manifest_path, "a", newline="") as handle:
        if new_file:
            _append_row(handle, MANIFEST_COLUMNS)
        elif not _ends_with_newline(manifest_path):
            handle.write("\n")  # a killed run cut the last row short: start a fresh line
        results = run_jobs(_prepare_one, jobs, workers)
        for image_id, width, height, error in tqdm(results, total=len(jobs), desc="prepare", disable=not progress,
                                                   unit="img"):
            if error is None:
                _append_row(handle, (image_id, width, height, src))
                report.written.append(image_id)
            else:
                logger.error("%s", error)
                report.failed.append((image_id, error))


J = TypeVar("J")
R = TypeVar("R")


def run_jobs(fn: Callable[[J], R], jobs: list[J], workers: int) -> Iterable[R]:
    """``fn`` over ``jobs`` in ``workers`` processes (in this process when ``workers <= 1``), yielding
    results as they finish (unordered); ``fn`` must be a module-level function of picklable jobs."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    with multiprocessing.get_context().Pool(processes=workers) as pool:
        yield from pool.imap_unordered(fn, jobs, chunksize=2)
