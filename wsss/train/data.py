"""Training data of both tasks: folds, augmentations, normalisation, targets, sampler and loaders.

* ``task: image`` (Puzzle-CAM, :func:`build_loaders`): items are the prepared cache images
  (:class:`wsss.data.dataset.HPADataset`);
* ``task: cell`` (the cell classifier, :func:`build_cell_loaders`): items are single-cell crops
  (:class:`wsss.data.cells.CellCropDataset`) cut once per image by the cell label maps of
  ``cells.masks`` into a crop store (:class:`wsss.data.cells.CellCropStore`, folder ``cells.store``,
  default ``{data.cache}_cellcrops``), neighbouring cells blanked; ``data.size`` is the crop side.

In both tasks fold ``k`` of ``folds.csv`` is the validation set and the other folds train through
the class-balanced sampler (:class:`wsss.data.sampler.BalancedSampler`), whose weights always come
from the image labels of ``folds.csv`` (a cell takes its image's labels), so the balance does not
move between pseudo-label rounds. Loss targets:

* without ``data.soft_labels``: the image labels (every cell of an image gets its image's labels:
  noisy targets);
* with ``data.soft_labels``: soft targets in ``[0, 1]`` for the training items: an image-level
  table (``image_id, p_0..p_18``) for ``task: image``, a per-cell table (``image_id, cell_id,
  p_0..p_18``, on the same label maps) for ``task: cell`` (both written by ``wsss-pseudo``).
  Items the table lacks keep their image labels (counted in a warning).

With ``cells.bag.size: K`` (> 0) the cell task trains on bags instead (multiple-instance learning,
:class:`wsss.data.cells.CellBagDataset`): an item is K cells of one training image, the sampler
balances images by their labels, ``train.batch_size`` counts bags (K crops each),
``train.samples_per_epoch`` counts bags (default one per training image), and the loss
(:func:`wsss.losses.bag_loss`) adds the BCE of the bag's pooled logits against the image labels
to the cells' own BCE (``cells.bag.pool``, ``lse_r``, ``w_cell``, ``w_bag``). Validation stays per cell.

Validation targets are always the image labels (for cells: broadcast to the image's cells), so
validation scores stay comparable between runs with and without soft labels.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from wsss.data.augment import build_transform, load_spec
from wsss.data.cells import CellBagDataset, CellCropDataset, CellCropError, CellCropStore, bag_collate
from wsss.data.classes import labels_to_matrix
from wsss.data.crops import CropError, CropParams
from wsss.data.dataset import HPADataset, channel_stats
from wsss.data.folds import check_fold_numbers, read_folds
from wsss.data.prepare import cache_path
from wsss.data.sampler import BalancedSampler
from wsss.losses import POOLS
from wsss.schema import PROB_COLUMNS
from wsss.tables import CellTableError, read_cell_table, read_image_table
from wsss.train import ddp
from wsss.train.defaults import DEFAULT_BAG

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("image", "cell")
#: Unit of one training item per task (for the logs).
ITEM_NAMES: dict[str, str] = {"image": "images", "cell": "cells"}
#: Areas of a soft-label table and of the crop store may differ on this fraction of cells at most.
MAX_AREA_MISMATCH = 0.01


class TrainError(RuntimeError):
    """A training run that cannot start or continue (bad data, config or checkpoint)."""


Loaders = tuple[DataLoader, DataLoader, Any, np.ndarray]


def worker_init(_: int) -> None:
    """DataLoader worker: seed numpy/random and the augmentations from the worker's torch seed."""
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    dataset = info.dataset if info is not None else None
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def split_ids(cfg: Mapping[str, Any], fold: int) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """Training ids and labels (folds other than ``fold``) and validation ids and labels (``fold``)."""
    folds_path = Path(cfg["data"]["folds"])
    try:
        frame = read_folds(folds_path)
        check_fold_numbers(frame, folds_path, fold)
    except (OSError, ValueError) as exc:
        raise TrainError(str(exc)) from None
    cache = Path(cfg["data"]["cache"])
    missing = [i for i in frame["ID"] if not cache_path(cache, i).is_file()]
    if missing:
        raise TrainError(f"{cache}: {len(missing)} ids of {folds_path} are not prepared (e.g. {missing[0]}); run wsss-prepare")
    val = frame[frame["fold"] == fold]
    train = frame[frame["fold"] != fold]
    if len(train) == 0 or len(val) == 0:
        raise TrainError(f"{folds_path}: fold {fold} leaves {len(train)} training and {len(val)} validation images")
    return (list(train["ID"].astype(str)), labels_to_matrix(train["Label"]).astype(np.float32),
            list(val["ID"].astype(str)), labels_to_matrix(val["Label"]).astype(np.float32))


def make_transform(spec: Any, resize_to: int | None) -> Any:
    """The albumentations pipeline of a ``data.*_augment`` spec, after a resize to ``resize_to`` when given."""
    try:
        items = list(load_spec(spec))
    except ValueError as exc:
        raise TrainError(f"augmentations: {exc}") from None
    if resize_to is not None:
        items = [{"name": "Resize", "height": resize_to, "width": resize_to}, *items]
    try:
        return build_transform(items)
    except ValueError as exc:
        raise TrainError(f"augmentations: {exc}") from None


def resolve_norm(d: dict[str, Any], train_ids: list[str], max_images: int = 500) -> tuple[list[float], list[float]]:
    """``data.mean``/``data.std``; ``auto`` measures them on up to ``max_images`` training images.

    The measured values are written back into ``d`` so the saved config holds the numbers used.
    """
    mean, std = d.get("mean"), d.get("std")
    if mean == "auto" or std == "auto":
        step = max(1, len(train_ids) // max_images)
        m, s = channel_stats(d["cache"], train_ids[::step][:max_images])
        if mean == "auto":
            mean = [round(float(v), 5) for v in m]
        if std == "auto":
            std = [round(float(max(v, 1e-3)), 5) for v in s]
        logger.info("channel stats of %d training images: mean %s std %s", len(train_ids[::step][:max_images]), mean, std)
    if len(mean) != 4 or len(std) != 4:
        raise TrainError(f"data.mean and data.std need 4 values (RGBY), got {mean} and {std}")
    d["mean"], d["std"] = [float(v) for v in mean], [float(v) for v in std]
    return d["mean"], d["std"]


def make_sampler(balance_y: np.ndarray, dataset: Dataset, t: Mapping[str, Any], info: ddp.DistInfo) -> Any:
    """The training sampler of ``train.sampler``: balanced by ``balance_y`` (multi-hot), or a plain shuffle."""
    seed = int(t["seed"])
    if t["sampler"] == "balanced":
        return BalancedSampler(balance_y, num_samples=t.get("samples_per_epoch"), clip_class=t.get("sampler_clip_class"),
                               seed=seed, num_replicas=info.world_size, rank=info.rank)
    if t["sampler"] == "shuffle":
        return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    raise TrainError(f"train.sampler must be 'balanced' or 'shuffle', got {t['sampler']!r}")


def make_loaders(train_ds: Dataset, val_ds: Dataset, sampler: Any, cfg: Mapping[str, Any], info: ddp.DistInfo,
                 device: torch.device, train_collate: Callable[[list], Any] | None = None
                 ) -> tuple[DataLoader, DataLoader]:
    """Training loader over ``sampler`` (batches stacked by ``train_collate``, default torch's) and this
    rank's share of the validation set."""
    t = cfg["train"]
    batch = int(t["batch_size"])
    common = dict(num_workers=int(cfg["data"].get("num_workers", 0)), pin_memory=device.type == "cuda",
                  worker_init_fn=worker_init, persistent_workers=False)
    train_loader = DataLoader(train_ds, batch_size=batch, sampler=sampler, drop_last=len(sampler) >= batch,
                              collate_fn=train_collate, **common)
    val_part = Subset(val_ds, list(range(info.rank, len(val_ds), info.world_size)))
    val_loader = DataLoader(val_part, batch_size=int(t.get("val_batch_size") or batch), shuffle=False, **common)
    return train_loader, val_loader


def _soft_path(d: Mapping[str, Any]) -> Path | None:
    value = d.get("soft_labels")
    return Path(value) if value else None


def soft_image_targets(path: Path, ids: list[str], hard: np.ndarray) -> np.ndarray:
    """Targets of ``ids`` from an image-level soft-label table; ids it lacks keep ``hard``."""
    try:
        table = read_image_table(path).set_index("image_id")
    except CellTableError as exc:
        raise TrainError(f"data.soft_labels: {exc}") from None
    out = hard.astype(np.float32).copy()
    found = np.array([i in table.index for i in ids], dtype=bool)
    if found.any():
        out[found] = table.loc[[i for i, f in zip(ids, found) if f], PROB_COLUMNS].to_numpy(np.float32)
    _report_coverage(path, int(found.sum()), len(ids), "images")
    return out


def _report_coverage(path: Path, found: int, total: int, unit: str) -> None:
    if found == 0:
        raise TrainError(f"data.soft_labels {path}: none of the {total} training {unit} is in the table")
    if found < total:
        logger.warning("data.soft_labels %s: %d of %d training %s are not in the table; they keep their image labels",
                       path, total - found, total, unit)
    else:
        logger.info("soft targets of all %d training %s from %s", total, unit, path)


def build_loaders(cfg: Mapping[str, Any], fold: int, info: ddp.DistInfo, device: torch.device) -> Loaders:
    """``task: image``: train and validation loaders of ``fold`` for this rank, the train sampler and the val targets."""
    d, t = cfg["data"], cfg["train"]
    train_ids, train_y, val_ids, val_y = split_ids(cfg, fold)
    size = int(d["size"])
    probe = HPADataset(d["cache"], train_ids[:1]).load(0)
    resize_to = None if probe.shape[:2] == (size, size) else size
    if resize_to is not None:
        logger.warning("cache images are %dx%d, resizing to %d on the fly (prepare the cache at %d to save time)",
                       probe.shape[1], probe.shape[0], size, size)
    train_tf = make_transform(d.get("train_augment"), resize_to)
    val_tf = make_transform(d.get("val_augment"), resize_to)
    mean, std = resolve_norm(d, train_ids)
    soft = _soft_path(d)
    targets = soft_image_targets(soft, train_ids, train_y) if soft else train_y
    train_ds = HPADataset(d["cache"], train_ids, targets, transform=train_tf, mean=mean, std=std)
    val_ds = HPADataset(d["cache"], val_ids, val_y, transform=val_tf, mean=mean, std=std)
    sampler = make_sampler(train_y, train_ds, t, info)
    return (*make_loaders(train_ds, val_ds, sampler, cfg, info, device), sampler, val_y)


# ----------------------------------------------------------------------------------------------- cells


def crop_params(cfg: Mapping[str, Any]) -> CropParams:
    """The crop parameters of the cell task: ``data.size`` is the crop side, the rest from ``cells``."""
    try:
        return CropParams.from_mapping({**cfg["cells"], "size": int(cfg["data"]["size"])})
    except CropError as exc:
        raise TrainError(f"cells: {str(exc).replace('stage2.', 'cells.')}") from None


def crop_store(cfg: Mapping[str, Any]) -> CellCropStore:
    """The crop store of the cell task (``cells.store``, default ``{data.cache}_cellcrops``)."""
    d, c = cfg["data"], cfg["cells"]
    if not c.get("masks"):
        raise TrainError("task cell needs cells.masks: the folder of {ID}.npz cell label maps (wsss-segment output)")
    root = c.get("store") or f"{Path(d['cache'])}_cellcrops"
    return CellCropStore(root, crop_params(cfg), c["masks"], c.get("image_size"), d.get("mean"))


def broadcast_labels(index: pd.DataFrame, ids: list[str], labels: np.ndarray) -> np.ndarray:
    """Every cell of ``index`` given its image's label row (``labels`` aligned with ``ids``)."""
    row = {image_id: i for i, image_id in enumerate(ids)}
    return labels[index["image_id"].map(row).to_numpy(dtype=np.int64)].astype(np.float32)


def soft_cell_targets(path: Path, index: pd.DataFrame, hard: np.ndarray) -> np.ndarray:
    """Targets of the cells of ``index`` from a per-cell soft-label table; cells it lacks keep ``hard``.

    The table must describe the same label maps: where it has an ``area`` column, at most
    :data:`MAX_AREA_MISMATCH` of the matched cells may differ in area from the crop store's.
    """
    try:
        table = read_cell_table(path)
    except CellTableError as exc:
        raise TrainError(f"data.soft_labels: {exc}") from None
    keys = index[["image_id", "cell_id"]].astype({"image_id": str, "cell_id": np.int64}).reset_index(drop=True)
    cols = ["image_id", "cell_id", *PROB_COLUMNS] + (["area"] if "area" in table.columns else [])
    joined = keys.merge(table[cols], on=["image_id", "cell_id"], how="left", suffixes=("", "_table"))
    found = joined[PROB_COLUMNS[0]].notna().to_numpy()
    if "area" in table.columns and found.any():
        differ = (joined.loc[found, "area"].to_numpy() != index["area"].to_numpy()[found]).mean()
        if differ > MAX_AREA_MISMATCH:
            raise TrainError(f"data.soft_labels {path}: {differ:.0%} of its cells differ in area from cells.masks; "
                             "the table was computed on other label maps")
    out = hard.astype(np.float32).copy()
    out[found] = joined.loc[found, PROB_COLUMNS].to_numpy(np.float32)
    _report_coverage(path, int(found.sum()), len(index), "cells")
    return out


def build_cell_loaders(cfg: Mapping[str, Any], fold: int, info: ddp.DistInfo, device: torch.device) -> Loaders:
    """``task: cell``: loaders of single-cell crops (see the module doc); the crop store is built first."""
    d, t = cfg["data"], cfg["train"]
    bag = bag_settings(cfg)  # checked before the crop store is cut
    train_ids, train_y, val_ids, val_y = split_ids(cfg, fold)
    mean, std = resolve_norm(d, train_ids)
    store = crop_store(cfg)
    try:
        if info.is_main:
            failed = store.build(d["cache"], train_ids + val_ids, workers=int(d.get("num_workers", 0)),
                                 progress=bool(t.get("progress", True)))
            if failed:
                logger.warning("%d images have no cell crops and are left out (first: %s: %s)", len(failed), *failed[0])
        ddp.barrier()
        train_index, val_index = store.index(train_ids), store.index(val_ids)
    except CellCropError as exc:
        raise TrainError(str(exc)) from None
    if len(train_index) == 0 or len(val_index) == 0:
        raise TrainError(f"{store.root}: {len(train_index)} training and {len(val_index)} validation cells "
                         f"(are the label maps of {store.masks} those of {d['cache']}?)")
    hard = broadcast_labels(train_index, train_ids, train_y)
    soft = _soft_path(d)
    targets = soft_cell_targets(soft, train_index, hard) if soft else hard
    cell_val_y = broadcast_labels(val_index, val_ids, val_y)
    train_tf = make_transform(d.get("train_augment"), None)
    val_ds = CellCropDataset(store, val_index, cell_val_y, transform=make_transform(d.get("val_augment"), None),
                             mean=mean, std=std)
    logger.info("cells: %d training cells of %d images, %d validation cells of %d images (%s)", len(train_index),
                train_index["image_id"].nunique(), len(val_index), val_index["image_id"].nunique(), store.root)
    cells_ds = CellCropDataset(store, train_index, targets, transform=train_tf, mean=mean, std=std)
    if bag is not None:
        return (*_bag_loaders(cells_ds, train_ids, train_y, val_ds, bag, cfg, info, device), cell_val_y)
    sampler = make_sampler(hard, cells_ds, t, info)
    return (*make_loaders(cells_ds, val_ds, sampler, cfg, info, device), sampler, cell_val_y)


@dataclass(frozen=True)
class BagSettings:
    """``cells.bag`` of a cell-task config, checked (:func:`bag_settings`)."""

    size: int  # cells per bag (> 0)
    pool: str  # lse | max | mean (wsss.losses.POOLS)
    lse_r: float
    w_cell: float
    w_bag: float


def _bag_loaders(cells: CellCropDataset, train_ids: list[str], train_y: np.ndarray, val_ds: Dataset,
                 bag: BagSettings, cfg: Mapping[str, Any], info: ddp.DistInfo, device: torch.device
                 ) -> tuple[DataLoader, DataLoader, Any]:
    """Training loader of bags (one per training image with cells, balanced by the image labels), the validation
    loader of single cells (``train.val_batch_size`` default: ``batch_size`` x the bag size) and the sampler."""
    with_cells = set(cells.image_ids)
    keep = [n for n, image_id in enumerate(train_ids) if image_id in with_cells]
    bag_ids, bag_y = [train_ids[n] for n in keep], train_y[keep]
    train_ds = CellBagDataset(cells, bag_ids, bag_y, bag.size)
    sampler = make_sampler(bag_y, train_ds, cfg["train"], info)
    batch = int(cfg["train"]["batch_size"])
    t = {**cfg["train"], "val_batch_size": cfg["train"].get("val_batch_size") or batch * bag.size}
    logger.info("cells: bags of %d cells of one image (%d bags per epoch on this rank, %d per batch)", bag.size,
                len(sampler), batch)
    train_loader, val_loader = make_loaders(train_ds, val_ds, sampler, {**cfg, "train": t}, info, device, bag_collate)
    return train_loader, val_loader, sampler


def bag_settings(cfg: Mapping[str, Any]) -> BagSettings | None:
    """The checked ``cells.bag`` section of ``cfg``, or ``None`` when ``size`` is 0 (single cells, the default).

    Raises :class:`TrainError` naming the key for a negative size, an unknown pool, ``lse_r <= 0``, a negative
    weight or both weights 0.
    """
    b = {**DEFAULT_BAG, **(((cfg.get("cells") or {}).get("bag")) or {})}
    size = int(b["size"] or 0)
    if size < 0:
        raise TrainError(f"cells.bag.size must be 0 (off) or a number of cells per bag, got {size}")
    if size == 0:
        return None
    bag = BagSettings(size, str(b["pool"]), float(b["lse_r"]), float(b["w_cell"]), float(b["w_bag"]))
    if bag.pool not in POOLS:
        raise TrainError(f"cells.bag.pool must be one of {', '.join(POOLS)}, got {bag.pool!r}")
    if bag.pool == "lse" and bag.lse_r <= 0:
        raise TrainError(f"cells.bag.lse_r must be above 0, got {bag.lse_r:g}")
    if min(bag.w_cell, bag.w_bag) < 0 or bag.w_cell + bag.w_bag == 0:
        raise TrainError(f"cells.bag.w_cell and w_bag must be >= 0 and not both 0, got {bag.w_cell:g} and {bag.w_bag:g}")
    return bag


def task_of(cfg: Mapping[str, Any]) -> str:
    """``cfg['task']`` checked against :data:`TASKS` (a missing key is ``image``)."""
    task = str(cfg.get("task") or "image")
    if task not in TASKS:
        raise TrainError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return task
