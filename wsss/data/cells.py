"""Single-cell crops for the cell classifier: cut once per image, stored, read per cell.

The crops are those of :func:`wsss.data.crops.raw_crops` (the stage-2 geometry: a square box
around the cell with a margin, the neighbouring cells blanked), as uint8 RGBY, so they are
augmented and normalised exactly like cache images (:class:`wsss.data.dataset.HPADataset`).
:func:`image_cell_crops` cuts every cell of one image; training and ``wsss-infer --stage cell``
both call it, so a cell looks the same to the model in both.

The crop store (:class:`CellCropStore`) holds, per image, ``{ID}.npy`` (``K x S x S x 4`` uint8,
the crops in cell-index order) and ``{ID}.cells.npz`` (``cell_id``, ``area``, ``is_border``) in a
folder whose name is a digest of everything the crops depend on (:func:`store_digest`: crop
parameters, image resize, mask folder, and the mean for ``blank: normalized``), so stores with
other settings never mix. Building is resumable and parallel (one image decoded once, all its
cells cut in one batched call; files written atomically, the ``.cells.npz`` last as the marker);
reading a crop memory-maps its image's ``.npy`` (no PNG decoding per cell).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from wsss.data.crops import CropParams, raw_crops
from wsss.data.dataset import DEFAULT_MEAN, DEFAULT_STD, HPADataset
from wsss.data.io import ImageReadError, read_rgby_png, resize_rgby
from wsss.data.prepare import cache_path, run_jobs
from wsss.fileio import atomic_write_bytes
from wsss.masks import CellIndex, MaskError, index_cells, load_label_maps

logger = logging.getLogger(__name__)

INDEX_COLUMNS: list[str] = ["image_id", "cell_id", "k", "area", "is_border"]


class CellCropError(RuntimeError):
    """Cell crops that cannot be built or read (the message names the id or file)."""


def image_cell_crops(rgby: np.ndarray, labels: np.ndarray, params: CropParams, image_size: int | None = None,
                     mean: Sequence[float] | None = None, cells: CellIndex | None = None
                     ) -> tuple[np.ndarray, CellIndex]:
    """uint8 crops ``K x S x S x 4`` of every cell of ``labels`` in the raw image ``rgby``, and the cell index.

    ``image_size`` resizes the image first (longer side, as ``stage2.image_size``); ``mean`` is the
    fill of ``blank: normalized`` (see :func:`wsss.data.crops.raw_crops`); ``cells`` is the index of
    ``labels`` when the caller has it already.
    """
    cells = index_cells(np.asarray(labels)) if cells is None else cells
    src = rgby if not image_size else resize_rgby(rgby, int(image_size))
    return raw_crops(src, np.asarray(labels), cells, params, mean=mean), cells


@dataclass(frozen=True)
class _Job:
    cache: str
    masks: str
    root: str
    image_id: str
    params: CropParams
    image_size: int | None
    mean: tuple[float, ...] | None


def store_digest(params: CropParams, masks: Path | str, image_size: int | None = None,
                 mean: Sequence[float] | None = None) -> str:
    """Short digest of everything a store's crops depend on (its folder name)."""
    geometry = {"size": int(params.size), "margin": float(params.margin), "min_side": float(params.min_side),
                "blank": str(params.blank), "antialias": bool(params.antialias)}  # 8 and 8.0 are one setting
    spec = {"params": geometry, "masks": str(Path(masks).resolve()), "image_size": image_size,
            "mean": [round(float(v), 6) for v in mean] if params.blank == "normalized" and mean is not None else None}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _build_one(job: _Job) -> tuple[str, int, str | None]:
    """Worker: crops of one image into the store; returns ``(id, cells, error or None)``."""
    root = Path(job.root)
    try:
        rgby = read_rgby_png(cache_path(job.cache, job.image_id))
        maps = load_label_maps(Path(job.masks) / f"{job.image_id}.npz")
        crops, cells = image_cell_crops(rgby, maps.cells, job.params, job.image_size, job.mean)
    except (ImageReadError, MaskError) as exc:
        return job.image_id, 0, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad id must not end the build; reported by id
        return job.image_id, 0, f"{job.image_id}: {exc.__class__.__name__}: {exc}"
    atomic_write_bytes(root / f"{job.image_id}.npy", _npy_bytes(crops))
    buf = io.BytesIO()
    np.savez(buf, cell_id=cells.ids.astype(np.int64), area=cells.area.astype(np.int64),
             is_border=cells.border.astype(bool))
    atomic_write_bytes(root / f"{job.image_id}.cells.npz", buf.getvalue())  # the marker: written last
    return job.image_id, cells.num_cells, None


class CellCropStore:
    """The crops of every cell of a set of images, one folder per crop setting (see the module doc)."""

    def __init__(self, root: Path | str, params: CropParams, masks: Path | str, image_size: int | None = None,
                 mean: Sequence[float] | None = None) -> None:
        self.params = params
        self.masks = Path(masks)
        self.image_size = int(image_size) if image_size else None
        self.mean = tuple(float(v) for v in (mean if mean is not None else DEFAULT_MEAN))
        self.root = Path(root) / store_digest(params, masks, self.image_size, self.mean)

    def _marker(self, image_id: str) -> Path:
        return self.root / f"{image_id}.cells.npz"

    def build(self, cache: Path | str, ids: Sequence[str], workers: int = 0, progress: bool = True
              ) -> list[tuple[str, str]]:
        """Cut the crops of every id not stored yet; returns the ``(id, reason)`` of the ids that failed."""
        if not self.masks.is_dir():
            raise CellCropError(f"{self.masks}: cell label-map folder not found (wsss-segment output)")
        self.root.mkdir(parents=True, exist_ok=True)
        spec = {"params": asdict(self.params), "masks": str(self.masks.resolve()), "image_size": self.image_size,
                "mean": list(self.mean), "cache": str(Path(cache).resolve())}
        atomic_write_bytes(self.root / "store.json", json.dumps(spec, indent=2).encode())
        todo = [i for i in dict.fromkeys(ids) if not self._marker(i).is_file()]
        jobs = [_Job(str(cache), str(self.masks), str(self.root), i, self.params, self.image_size,
                     self.mean if self.params.blank == "normalized" else None) for i in todo]
        failed: list[tuple[str, str]] = []
        if jobs:
            logger.info("cutting cell crops of %d images into %s (%d already there)", len(jobs), self.root,
                        len(ids) - len(jobs))
        for image_id, _, error in tqdm(run_jobs(_build_one, jobs, workers), total=len(jobs), desc="cell crops",
                                       disable=not progress, unit="img"):
            if error is not None:
                logger.warning("cell crops of %s skipped: %s", image_id, error)
                failed.append((image_id, error))
        return failed

    def index(self, ids: Sequence[str]) -> pd.DataFrame:
        """``INDEX_COLUMNS`` of every stored cell of ``ids`` (ids without crops are left out)."""
        frames = []
        for image_id in ids:
            marker = self._marker(image_id)
            if not marker.is_file():
                continue
            with np.load(marker, allow_pickle=False) as data:
                k = len(data["cell_id"])
                frames.append(pd.DataFrame({"image_id": np.full(k, image_id, dtype=object), "cell_id": data["cell_id"],
                                            "k": np.arange(k), "area": data["area"], "is_border": data["is_border"]}))
        if not frames:
            return pd.DataFrame({c: pd.Series([], dtype=object if c == "image_id" else np.int64) for c in INDEX_COLUMNS})
        return pd.concat(frames, ignore_index=True)[INDEX_COLUMNS]

    def crop(self, image_id: str, k: int) -> np.ndarray:
        """The uint8 crop ``S x S x 4`` of cell ``k`` (index order) of ``image_id``, read through a memory map."""
        path = self.root / f"{image_id}.npy"
        try:
            return np.array(np.load(path, mmap_mode="r", allow_pickle=False)[int(k)])
        except (OSError, ValueError, IndexError) as exc:
            raise CellCropError(f"{path}: cannot read crop {k} ({exc}); delete the file to cut it again") from None


class CellCropDataset(HPADataset):
    """Cell crops of a :class:`CellCropStore` with their targets: items as in :class:`HPADataset`.

    Args:
        store: the crop store (built).
        index: rows of :meth:`CellCropStore.index` (one item per row, in order).
        targets: ``N x 19`` float targets aligned with ``index`` (hard or soft), or ``None``.
        transform, mean, std: as in :class:`HPADataset` (augmentation of the uint8 crop, normalisation).
    """

    def __init__(self, store: CellCropStore, index: pd.DataFrame, targets: np.ndarray | None = None,
                 transform=None, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD) -> None:
        keys = [f"{i}#{c}" for i, c in zip(index["image_id"], index["cell_id"])]
        super().__init__(store.root, keys, targets, transform=transform, mean=mean, std=std)
        self.store = store
        self.image_ids = [str(i) for i in index["image_id"]]  # the image of each item
        self._k = index["k"].to_numpy(dtype=np.int64)

    def load(self, index: int) -> np.ndarray:
        """The uint8 crop of item ``index``, before augmentation."""
        return self.store.crop(self.image_ids[index], int(self._k[index]))


class CellBagDataset(Dataset):
    """Bags of cells for multiple-instance training: item ``i`` is ``bag_size`` cells of image ``i``.

    Each item is ``(crops, targets)``: ``crops`` is ``K x 4 x S x S`` (each crop read, augmented and
    normalised by ``cells``, a :class:`CellCropDataset`) and ``targets`` is ``(K + 1) x 19``: row 0 the
    image's labels, rows ``1..K`` the targets of the chosen cells. An image with at least ``K`` cells
    gives ``K`` distinct cells drawn at random (torch's generator, seeded per epoch by the training
    loop); one with fewer gives all of its cells, then repeats drawn from them. :func:`bag_collate`
    stacks a batch of bags.

    Args:
        cells: the training cells with their (hard or soft) targets.
        image_ids: the images, one item each (every one must have cells in ``cells``).
        image_targets: ``len(image_ids) x 19`` image labels aligned with ``image_ids``.
        bag_size: ``K`` cells per bag.
    """

    def __init__(self, cells: CellCropDataset, image_ids: Sequence[str], image_targets: np.ndarray,
                 bag_size: int) -> None:
        if bag_size < 1:
            raise ValueError(f"bag_size must be at least 1, got {bag_size}")
        if cells.targets is None:
            raise ValueError("the cells of a bag dataset need targets")
        self.cells = cells
        self.transform = cells.transform  # seeded per worker by the training loop (wsss.train.data.worker_init)
        self.ids = [str(i) for i in image_ids]
        self.targets = np.asarray(image_targets, dtype=np.float32)
        if self.targets.shape != (len(self.ids), cells.targets.shape[1]):
            raise ValueError(f"image_targets must be {len(self.ids)} x {cells.targets.shape[1]}, "
                             f"got {self.targets.shape}")
        self.bag_size = int(bag_size)
        groups = pd.Series(cells.image_ids).groupby(cells.image_ids).indices
        missing = [i for i in self.ids if i not in groups]
        if missing:
            raise ValueError(f"{len(missing)} bag images have no cells (first: {missing[0]})")
        self._rows = [np.asarray(groups[i], dtype=np.int64) for i in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def choose(self, index: int) -> np.ndarray:
        """Items of ``cells`` (cells of image ``index``) that make up one draw of its bag."""
        rows = self._rows[index]
        order = rows[torch.randperm(len(rows)).numpy()]
        if len(rows) >= self.bag_size:
            return order[: self.bag_size]
        extra = rows[torch.randint(len(rows), (self.bag_size - len(rows),)).numpy()]
        return np.concatenate([order, extra])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.cells[int(row)] for row in self.choose(index)]
        crops = torch.stack([crop for crop, _ in items])
        targets = torch.cat([torch.from_numpy(self.targets[index])[None], torch.stack([t for _, t in items])])
        return crops, targets


def bag_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of B bags of K cells as ``(B * K) x 4 x S x S`` crops (bag by bag) and ``B x (K + 1) x 19`` targets.

    The crops come flat so that the training loop treats them like any batch of images (device,
    memory format); the objective reshapes the logits back to ``B x K`` with the targets' shape.
    """
    crops = torch.cat([b[0] for b in batch])
    targets = torch.stack([b[1] for b in batch])
    return crops, targets
