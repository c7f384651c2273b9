"""Training of the watershed model with the classifier's machinery (:mod:`wsss.train`).

The same pieces as ``wsss-train``: folds of ``folds.csv`` (fold ``k`` validates), ``precision: auto``
through :func:`wsss.train.loop.run_on_device` (device, DDP, ``train.threads``), Adam and the scheduler of
:func:`~wsss.train.loop.build_optimizer`, atomic safetensors checkpoints with the resolved config
and the resume state (:func:`wsss.train.checkpoint.save_checkpoint`, format
:data:`wsss.watershed.defaults.FORMAT`), exact resume (:func:`~wsss.train.loop.resolve_resume`,
the per-epoch re-seeding of :func:`~wsss.train.loop.seed_everything`), DDP under ``torchrun``,
``metrics.csv``, ``curves.png`` and one progress line per epoch.

Validation every epoch, on the first ``train.val_images`` validation images (all when null): the
loss terms and the cells' AP@0.6 after the watershed (no TTA), pooled over the images. ``best`` is the epoch with the
highest AP (``train.select: ap``), the lowest validation loss (``select: loss``) or the newest (``last``); the resume
state's ``best_loss`` holds the selection score, lower is better (``-AP`` for ``ap``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from wsss.config import save_config
from wsss.data.folds import read_folds
from wsss.masks import greedy_match, label_iou
from wsss.precision import AmpSettings, autocast, make_scaler
from wsss.train import ddp
from wsss.train.checkpoint import save_checkpoint, selection_score
from wsss.train.defaults import check_select
from wsss.train.logs import write_history_csv, plot_curves
from wsss.train.loop import (
    TrainError, TrainState, _resume, _resume_state, _worker_init, build_optimizer, epoch_seed,
    resolve_out_dir, resolve_resume, run_on_device, seed_everything,
)
from wsss.watershed.data import WatershedDataset, cell_probabilities
from wsss.watershed.defaults import FORMAT, SELECT_CHOICES
from wsss.watershed.losses import TERMS, watershed_loss
from wsss.watershed.model import WatershedNet, build_watershed_model, model_kwargs
from wsss.watershed.postprocess import postprocess
from wsss.watershed.predict import post_params, probabilities
from wsss.watershed.targets import cell_radius

logger = logging.getLogger(__name__)

CURVE_TERMS: tuple[str, ...] = ("total", "semantic", "energy", "direction")


def ap_at(pred: np.ndarray, ref: np.ndarray, iou: float = 0.6) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` of two label maps matched one-to-one at ``iou`` (the :mod:`wsss.masks` matcher)."""
    ious, p_ids, r_ids = label_iou(pred, ref)
    if len(p_ids) == 0 or len(r_ids) == 0:
        return 0, len(p_ids), len(r_ids)
    tp = int((greedy_match(ious, iou) >= 0).sum())
    return tp, len(p_ids) - tp, len(r_ids) - tp


def _read_table(path: Path | str) -> pd.DataFrame:
    path = Path(path)
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise TrainError(f"data.cell_table {path}: {exc}") from None


def build_datasets(cfg: Mapping[str, Any], fold: int) -> tuple[WatershedDataset, WatershedDataset]:
    """Training and validation datasets of ``fold`` (checked: folds, images and masks exist)."""
    d, m, tg = cfg["data"], cfg["model"], cfg["targets"]
    try:
        frame = read_folds(d["folds"])
    except (OSError, ValueError) as exc:
        raise TrainError(str(exc)) from None
    if fold not in set(frame["fold"]):
        raise TrainError(f"{d['folds']}: fold {fold} not found (folds present: {sorted(set(frame['fold']))})")
    if not Path(d["masks"]).is_dir():
        raise TrainError(f"data.masks {d['masks']}: not a folder")
    train_ids = [str(i) for i in frame.loc[frame["fold"] != fold, "ID"]]
    val_ids = [str(i) for i in frame.loc[frame["fold"] == fold, "ID"]]
    if not train_ids or not val_ids:
        raise TrainError(f"{d['folds']}: fold {fold} leaves {len(train_ids)} training and {len(val_ids)} validation images")
    num_classes = int(m.get("num_classes") or 0)
    probs = None
    if num_classes:
        if not d.get("cell_table"):
            raise TrainError("model.num_classes > 0 (class head) needs data.cell_table (a per-cell table of probabilities)")
        probs = cell_probabilities(_read_table(d["cell_table"]))
    size = int(d["size"])
    common = dict(size=size, mean=d["mean"], std=d["std"], levels=int(m["levels"]),
                  radius=cell_radius(size, float(tg["cell_radius"])), span=float(tg["span"]),
                  cell_probs=probs, num_classes=num_classes or 19, seed=int(cfg["train"]["seed"]))
    try:
        train = WatershedDataset(d["cache"], d["masks"], train_ids, train=True, crop=d.get("crop"), **common)
        val = WatershedDataset(d["cache"], d["masks"], val_ids, train=False, **common)
    except FileNotFoundError as exc:
        raise TrainError(str(exc)) from None
    return train, val


def _mean_terms(acc: dict[str, float], n: int) -> dict[str, float]:
    total = ddp.all_reduce_sum(torch.tensor([acc.get(k, 0.0) for k in ("total", *TERMS)] + [float(n)], dtype=torch.float64))
    count = max(float(total[-1]), 1.0)
    return {k: float(v / count) for k, v in zip(("total", *TERMS), total[:-1])}


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_one_epoch(net: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, amp: AmpSettings, device: torch.device, state: TrainState,
                    cfg: Mapping[str, Any], progress: bool) -> tuple[dict[str, float], int, float]:
    """One epoch; returns the mean loss terms, the images seen and the seconds."""
    net.train()
    acc: dict[str, float] = {}
    n = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1} train", leave=False, disable=not progress, dynamic_ncols=True)
    for batch in bar:
        batch = _to(batch, device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(amp):
            out = net(batch["image"])
        terms = watershed_loss(out, batch, cfg["loss"])
        state.global_step += 1
        if not ddp.all_true(bool(torch.isfinite(terms["total"]))):
            logger.warning("step %d: non-finite loss (on this or another rank), step skipped", state.global_step)
            continue
        scaler.scale(terms["total"]).backward()
        if cfg["train"].get("grad_clip"):
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), float(cfg["train"]["grad_clip"]))
        scaler.step(optimizer)
        scaler.update()
        b = batch["image"].shape[0]
        for k, v in terms.items():
            acc[k] = acc.get(k, 0.0) + float(v.detach()) * b
        n += b
        bar.set_postfix(loss=f"{float(terms['total'].detach()):.4f}")
    return _mean_terms(acc, n), n, time.perf_counter() - start


@torch.no_grad()
def evaluate(net: torch.nn.Module, loader: DataLoader, amp: AmpSettings, device: torch.device,
             cfg: Mapping[str, Any], progress: bool) -> tuple[dict[str, float], float]:
    """Validation loss terms and pooled AP@0.6 of the cells (post-processed without TTA) over ``loader``."""
    model: WatershedNet = ddp.unwrap(net)
    model.eval()
    acc: dict[str, float] = {}
    n = 0
    counts = np.zeros(3, dtype=np.int64)
    params = post_params(cfg)
    for batch in tqdm(loader, desc="validate", leave=False, disable=not progress, dynamic_ncols=True):
        batch = _to(batch, device)
        with autocast(amp):
            out = model(batch["image"])
        terms = watershed_loss(out, batch, cfg["loss"])
        b = batch["image"].shape[0]
        for k, v in terms.items():
            acc[k] = acc.get(k, 0.0) + float(v) * b
        probs = probabilities(out)
        for i in range(b):
            cells = postprocess(probs["semantic"][i].cpu().numpy(), probs["energy"][i].cpu().numpy(), params)
            counts += np.asarray(ap_at(cells, batch["cells"][i].cpu().numpy()))
        n += b
    terms_mean = _mean_terms(acc, n)
    counts_all = ddp.all_reduce_sum(torch.tensor(counts, dtype=torch.float64))
    tp, fp, fn = (float(v) for v in counts_all)
    return terms_mean, tp / max(tp + fp + fn, 1.0)


def fit_watershed(cfg: dict[str, Any], fold: int, resume: bool | str | Path = False) -> dict[str, Any]:
    """Train the watershed model on fold ``fold`` with the resolved config; returns a summary dict."""
    return run_on_device(cfg, fold, resume, _fit)


def _fit(cfg: dict[str, Any], fold: int, resume: bool | str | Path, info: ddp.DistInfo, device: torch.device,
         amp: AmpSettings) -> dict[str, Any]:
    t = cfg["train"]
    select = check_select(t.get("select", "ap"), SELECT_CHOICES)
    out = resolve_out_dir({**cfg, "model": {**cfg["model"], "name": cfg["model"]["encoder"]}}, fold)
    t["fold"], t["out"] = fold, str(out)
    resume_path = resolve_resume(out, resume)
    train_ds, val_ds = build_datasets(cfg, fold)
    seed_everything(epoch_seed(int(t["seed"]), 2**31, 0))
    try:
        model = build_watershed_model(cfg["model"])
    except ValueError as exc:
        raise TrainError(f"model: {exc}") from None
    model.to(device)
    if info.enabled and t.get("sync_bn"):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: torch.nn.Module = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    seed = int(t["seed"])
    sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    batch = int(t["batch_size"])
    workers = int(cfg["data"].get("num_workers") or 0)
    common = dict(num_workers=workers, worker_init_fn=_worker_init, persistent_workers=False)
    train_loader = DataLoader(train_ds, batch_size=batch, sampler=sampler, drop_last=len(sampler) >= batch, **common)
    n_val = min(len(val_ds), int(t.get("val_images") or len(val_ds)))
    val_part = Subset(val_ds, list(range(info.rank, n_val, info.world_size)))
    val_loader = DataLoader(val_part, batch_size=int(t.get("val_batch_size") or 1), shuffle=False, **common)
    optimizer, scheduler = build_optimizer(net, t)
    scaler = make_scaler(amp)
    state = _resume(resume_path, net, optimizer, scheduler, scaler, sampler, t) if resume_path else TrainState()
    progress = bool(t.get("progress", True)) and info.is_main
    spec = {"kind": "watershed", **model_kwargs(cfg["model"])}
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        logger.info("run %s: watershed %s, fold %d, %d train / %d val images, %d steps/epoch, %s on %s x%d",
                    out, cfg["model"]["encoder"], fold, len(train_ds), len(val_ds), len(train_loader), amp.name,
                    device, info.world_size)
    epochs = int(t["epochs"])
    for epoch in range(state.epoch, epochs):
        seed_everything(epoch_seed(seed, epoch, info.rank))
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        tr, n_img, tr_s = train_one_epoch(net, train_loader, optimizer, scaler, amp, device, state, cfg, progress)
        n_img = int(ddp.all_reduce_sum(torch.tensor([float(n_img)]))[0])  # every rank's images (as wsss-train logs)
        va_start = time.perf_counter()
        va, ap = evaluate(net, val_loader, amp, device, cfg, progress)
        va_s = time.perf_counter() - va_start
        if scheduler is not None:
            scheduler.step(va["total"])
        state.epoch = epoch + 1
        row: dict[str, Any] = {"epoch": state.epoch, "step": state.global_step, "lr": optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": v for k, v in tr.items()})
        row.update({f"val_{k}": v for k, v in va.items()})
        row.update({"val_ap": ap, "train_images": n_img, "train_img_per_s": n_img / max(tr_s, 1e-9),
                    "epoch_seconds": tr_s + va_s})
        state.history.append(row)
        score = selection_score(select, va["total"], ap, state.epoch, "ap")
        improved = score < state.best_loss
        if improved:
            state.best_loss, state.best_epoch = score, state.epoch
        if info.is_main:
            if improved:
                save_checkpoint(out, "best", net, cfg, state.epoch, va["total"], format_name=FORMAT, model_spec=spec)
            save_checkpoint(out, "last", net, cfg, state.epoch, va["total"],
                            state=_resume_state(state, optimizer, scheduler, scaler, sampler),
                            format_name=FORMAT, model_spec=spec)
            write_history_csv(out / "metrics.csv", state.history)
            plot_curves(out / "curves.png", state.history, title=f"{cfg.get('name')} fold {fold}",
                        terms=CURVE_TERMS, scores=(("val_ap", "cell AP@0.6"),))
            logger.info("epoch %d/%d  train %.4f (sem %.4f energy %.4f dir %.4f)  val %.4f  AP@0.6 %.3f  "
                        "%.2f img/s  %.1f s%s", state.epoch, epochs, tr["total"], tr["semantic"], tr["energy"],
                        tr["direction"], va["total"], ap, row["train_img_per_s"], row["epoch_seconds"],
                        "  *best*" if improved else "")
        ddp.barrier()
    last = state.history[-1] if state.history else {}
    return {"out": str(out), "epochs": state.epoch, "best_epoch": state.best_epoch,
            "best_score": state.best_loss, "val_ap": last.get("val_ap"), "val_loss": last.get("val_total"),
            "history": state.history}
