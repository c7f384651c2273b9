"""Prediction tables: building the per-cell and image-level frames, writing them in resumable parts.

Layout of one stage's output in ``OUT`` (``{tag}`` = ``stage1`` or ``stage2``):

* ``OUT/parts_{tag}/cells-NNNNNN.parquet`` (and ``images-NNNNNN.parquet`` for stage 1): the rows
  of one chunk of images; ``OUT/parts_{tag}/done-NNNNNN.parquet`` (``image_id, fold, n_cells``)
  is written *last*, so a chunk counts as finished only when its marker exists. Every file is
  written through a temporary file and an atomic rename. On start, table parts without a marker
  (a run killed between two writes) are deleted and their ids run again.
* ``OUT/cells_{tag}.parquet``, ``OUT/images_{tag}.parquet``, ``OUT/processed_{tag}.parquet``:
  the parts concatenated (:meth:`PartWriter.consolidate`), rewritten at the end of every run; given
  the run's id order, rows follow it (the order a single process writes them in).
* A sharded run (``torchrun``): rank 0 writes its parts in ``OUT/parts_{tag}/``, rank ``r > 0`` in
  ``OUT/parts_{tag}/rank{r}/``, in the same layout. Finished parts count wherever they are (a
  resumed run skips their ids, whoever wrote them and whatever the number of processes now), and
  the consolidated tables gather the parts of every folder.

Column order and names follow :mod:`wsss.schema` (``CELL_COLUMNS``, ``IMAGE_COLUMNS``); ``fold`` is
the validation fold of an out-of-fold run and ``-1`` otherwise; boxes are half-open label-map
pixels (``x1 = max x + 1``) and ``mask_path`` names the ``.npz`` whose ``cells`` array holds
``cell_id``.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.fileio import atomic_write_bytes
from wsss.masks import CellIndex
from wsss.schema import CELL_COLUMNS, IMAGE_COLUMNS, PROB_COLUMNS

logger = logging.getLogger(__name__)

DONE_COLUMNS: list[str] = ["image_id", "fold", "n_cells"]
_PART_RE = re.compile(r"^(?P<table>[a-z]+)-(?P<num>\d{6})\.parquet$")


class TableError(RuntimeError):
    """A prediction table that is missing, unreadable or inconsistent."""


def cell_frame(image_id: str, source: str, fold: int, cells: CellIndex, probs: np.ndarray,
               orig_hw: tuple[int, int], mask_path: str) -> pd.DataFrame:
    """Per-cell rows (``CELL_COLUMNS``) of one image."""
    k = cells.num_cells
    probs = np.asarray(probs, dtype=np.float32).reshape(k, len(PROB_COLUMNS))
    data: dict[str, object] = {
        "image_id": np.full(k, image_id, dtype=object),
        "cell_id": cells.ids.astype(np.int32),
        "source": np.full(k, source, dtype=object),
        "fold": np.full(k, fold, dtype=np.int16),
        "x0": cells.boxes[:, 0].astype(np.int32),
        "y0": cells.boxes[:, 1].astype(np.int32),
        "x1": cells.boxes[:, 2].astype(np.int32),
        "y1": cells.boxes[:, 3].astype(np.int32),
        "area": cells.area.astype(np.int32),
        "is_border": cells.border.astype(bool),
        "orig_width": np.full(k, orig_hw[1], dtype=np.int32),
        "orig_height": np.full(k, orig_hw[0], dtype=np.int32),
        "mask_path": np.full(k, mask_path, dtype=object),
    }
    for j, name in enumerate(PROB_COLUMNS):
        data[name] = probs[:, j]
    return pd.DataFrame(data, columns=CELL_COLUMNS)


def image_frame(image_ids: Sequence[str], source: str, fold: int, probs: np.ndarray) -> pd.DataFrame:
    """Image-level rows (``IMAGE_COLUMNS``)."""
    n = len(image_ids)
    probs = np.asarray(probs, dtype=np.float32).reshape(n, len(PROB_COLUMNS))
    data: dict[str, object] = {
        "image_id": np.asarray(list(image_ids), dtype=object),
        "source": np.full(n, source, dtype=object),
        "fold": np.full(n, fold, dtype=np.int16),
    }
    for j, name in enumerate(PROB_COLUMNS):
        data[name] = probs[:, j]
    return pd.DataFrame(data, columns=IMAGE_COLUMNS)


def empty_frame(table: str) -> pd.DataFrame:
    """An empty frame with the columns and dtypes of ``table`` (``cells``, ``images`` or ``done``)."""
    if table == "cells":
        return cell_frame("", "", -1, _empty_cells(), np.zeros((0, len(PROB_COLUMNS))), (0, 0), "")
    if table == "images":
        return image_frame([], "", -1, np.zeros((0, len(PROB_COLUMNS))))
    return pd.DataFrame({"image_id": pd.Series([], dtype=object), "fold": pd.Series([], dtype=np.int16),
                         "n_cells": pd.Series([], dtype=np.int32)})


def _empty_cells() -> CellIndex:
    z = np.zeros(0, dtype=np.int64)
    return CellIndex(ids=z, area=z, boxes=np.zeros((0, 4), np.int64), border=np.zeros(0, bool), shape=(0, 0),
                     pix_y=z, pix_x=z, pix_k=z)


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` as parquet, atomically."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_parquet(path: Path | str) -> pd.DataFrame:
    """Read a parquet table; a missing or corrupt file raises :class:`TableError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: table not found")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise TableError(f"{path}: unreadable parquet ({exc.__class__.__name__}: {exc})") from None


def part_dirs(out_dir: Path | str, tag: str) -> list[Path]:
    """Every parts folder of a stage: ``parts_{tag}`` then each ``parts_{tag}/rank{r}`` in rank order."""
    top = Path(out_dir) / f"parts_{tag}"
    if not top.is_dir():
        return []
    ranks = [p for p in top.iterdir() if p.is_dir() and re.fullmatch(r"rank\d+", p.name)]
    return [top] + sorted(ranks, key=lambda p: int(p.name[4:]))


def _part_numbers(folder: Path, table: str) -> list[int]:
    nums = []
    for path in folder.iterdir():
        match = _PART_RE.match(path.name)
        if match and match.group("table") == table:
            nums.append(int(match.group("num")))
    return sorted(nums)


def _part_path(folder: Path, table: str, num: int) -> Path:
    return folder / f"{table}-{num:06d}.parquet"


def _remove_orphans(folder: Path) -> None:
    """Delete the table parts of ``folder`` without a ``done`` marker and stale temporary files."""
    done = set(_part_numbers(folder, "done"))
    for path in sorted(folder.iterdir()):
        match = _PART_RE.match(path.name)
        stale_tmp = path.name.startswith(".") and path.name.endswith(".tmp")
        if (match and match.group("table") != "done" and int(match.group("num")) not in done) or stale_tmp:
            logger.info("removing unfinished part %s", path)
            path.unlink()


def finished_parts(out_dir: Path | str, tag: str) -> list[tuple[Path, int]]:
    """``(folder, part number)`` of every finished part of a stage, folder by folder (:func:`part_dirs`)."""
    return [(folder, n) for folder in part_dirs(out_dir, tag) for n in _part_numbers(folder, "done")]


def finished_frame(out_dir: Path | str, tag: str) -> pd.DataFrame:
    """The ``done`` rows (``image_id, fold, n_cells``) of every finished part of a stage, in every folder."""
    frames = [read_parquet(_part_path(folder, "done", n)) for folder, n in finished_parts(out_dir, tag)]
    return pd.concat(frames, ignore_index=True) if frames else empty_frame("done")


def in_order(frame: pd.DataFrame, order: Sequence[str] | None) -> pd.DataFrame:
    """``frame`` with its rows in the order of their ``image_id`` in ``order`` (stable; unknown ids last)."""
    if order is None or not len(frame):
        return frame
    rank = {image_id: i for i, image_id in enumerate(dict.fromkeys(order))}
    keys = frame["image_id"].astype(str).map(rank).fillna(len(rank)).to_numpy()
    return frame.iloc[np.argsort(keys, kind="stable")].reset_index(drop=True)


def gather_tables(out_dir: Path | str, tag: str, tables: Sequence[str], order: Sequence[str] | None = None
                  ) -> dict[str, pd.DataFrame]:
    """Every finished part of each of ``tables`` (and ``processed``) concatenated, rows in ``order``; writes nothing."""
    parts = finished_parts(out_dir, tag)
    out: dict[str, pd.DataFrame] = {}
    for table in tables:
        frames = [read_parquet(_part_path(folder, table, n)) for folder, n in parts]
        frames = [f for f in frames if len(f)]
        out[table] = in_order(pd.concat(frames, ignore_index=True) if frames else empty_frame(table), order)
    out["processed"] = in_order(finished_frame(out_dir, tag), order)
    return out


class PartWriter:
    """Chunked, resumable writer of one stage's tables (layout: see the module doc); ``rank``: whose parts."""

    def __init__(self, out_dir: Path | str, tag: str, tables: Sequence[str], rank: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.tag = tag
        self.tables = tuple(tables)
        self.parts_dir = self.out_dir / f"parts_{tag}"
        if rank:
            self.parts_dir = self.parts_dir / f"rank{rank}"
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        _remove_orphans(self.parts_dir)
        done = _part_numbers(self.parts_dir, "done")
        self.next_part = max(done, default=0) + 1

    def finished(self) -> pd.DataFrame:
        """The ``done`` rows of every finished part, of every rank (``image_id, fold, n_cells``)."""
        return finished_frame(self.out_dir, self.tag)

    def finished_ids(self) -> set[str]:
        """Ids already written by a finished part of any rank (skipped when a run resumes)."""
        return set(self.finished()["image_id"].astype(str))

    def write(self, frames: Mapping[str, pd.DataFrame], done: pd.DataFrame) -> int:
        """Write one chunk: every table's part, then its ``done`` marker; returns the part number."""
        num = self.next_part
        for table in self.tables:
            write_parquet(frames.get(table, empty_frame(table)), _part_path(self.parts_dir, table, num))
        write_parquet(done[DONE_COLUMNS].reset_index(drop=True), _part_path(self.parts_dir, "done", num))
        self.next_part = num + 1
        return num

    def consolidate(self, order: Sequence[str] | None = None) -> dict[str, Path]:
        """Write ``OUT/{table}_{tag}.parquet`` (plus ``processed``) from the finished parts of every rank.

        ``order``: the run's ids; rows follow it (stable, ids not in it last), so a sharded run
        writes the tables of a single process. Unfinished parts left by ranks that died are removed
        first (call this only when no rank is writing).
        """
        for folder in part_dirs(self.out_dir, self.tag):
            _remove_orphans(folder)
        frames = gather_tables(self.out_dir, self.tag, self.tables, order)
        return {table: write_parquet(frame, self.out_dir / f"{table}_{self.tag}.parquet")
                for table, frame in frames.items()}
