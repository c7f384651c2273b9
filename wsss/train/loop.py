"""The classifier training loop of both tasks: one fold of ``folds.csv`` as validation, AMP, DDP, resume.

:func:`fit` runs a whole training from a resolved config (see :mod:`wsss.train.defaults`); the
config's ``task`` picks the data and the objective, everything else is shared:

* ``task: image`` (Puzzle-CAM): the prepared cache images; every step runs the full image and its
  2x2 tiles through the network (``model(x, puzzle=True)``) and minimises the ComboLoss
  (:mod:`wsss.losses`) (:class:`PuzzleObjective`);
* ``task: cell`` (the cell classifier): single-cell crops of the cell label maps, one plain
  forward pass and BCE against the cell targets (:class:`CellObjective`); the same network class
  (timm backbone with the 4-channel stem, 1x1-conv head, global mean), so its checkpoints load
  like any other; with ``cells.bag.size`` > 0 the items are bags of cells of one image and the loss
  adds the BCE of each bag's pooled logits against its image labels (:class:`CellBagObjective`);
* data (:mod:`wsss.train.data`): fold ``k`` is the validation set, the other folds train through
  the class-balanced sampler (:class:`wsss.data.sampler.BalancedSampler`); soft targets from
  ``data.soft_labels``;
* every epoch validates: the loss with the configured weights (never the warmed-up ones),
  macro F1 at ``train.f1_threshold`` and macro mAP of ``sigmoid(logits)`` (per image, or per cell
  against its image's labels);
  ReduceLROnPlateau steps on the validation loss; ``best`` is the epoch ``train.select`` picks: the
  lowest validation loss (``loss``, the default), the highest validation macro mAP (``map``) or the
  newest epoch (``last``: nothing is chosen on the validation fold);
* after every epoch ``last`` (with its resume state) and, when improved, ``best`` are saved,
  the CSV/PNG logs rewritten.

Exact resume: the checkpoint holds weights, optimizer, scheduler, GradScaler, sampler state,
epoch and step counters, the best score (the :func:`~wsss.train.checkpoint.selection_score` of
``train.select``, lower is better; a resume with another ``train.select`` is refused) and the
history. Random streams are re-seeded at the start of every epoch from ``(seed, epoch, rank)``
(torch, numpy, python, the augmentation pipeline, and through the torch seed the DataLoader
workers), so epoch ``e`` draws the same samples and augmentations whether or not the run was
interrupted before it. Checkpoints are written at epoch ends; a run killed mid-epoch restarts that
epoch.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsss.config import save_config
from wsss.losses import ComboLoss, LossTerms, bag_loss, classifier_loss, rec_weight
from wsss.metrics.image import chance_map, macro_f1, macro_map
from wsss.models import PuzzleCAM, build_model
from wsss.train import ddp
from wsss.precision import AmpSettings, autocast, describe, make_scaler, resolve_channels_last, resolve_precision
from wsss.train.checkpoint import load_resume_state, save_checkpoint, selection_score
from wsss.train.data import (ITEM_NAMES, BagSettings, TrainError, bag_settings, build_cell_loaders, build_loaders,
                              task_of, worker_init)
from wsss.train.defaults import check_select
from wsss.train.logs import TensorBoardLogger, plot_curves, write_history_csv

logger = logging.getLogger(__name__)

_worker_init = worker_init  # the name the watershed trainer imports


@dataclass
class TrainState:
    """Counters carried across epochs and saved for resume."""

    epoch: int = 0  # finished epochs
    global_step: int = 0
    best_loss: float = math.inf  # the best selection score (train.select), lower is better; the val loss under "loss"
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EpochResult:
    """Mean loss terms over an epoch's images (and, for validation, predictions)."""

    loss: float
    full: float
    puzzle: float
    rec: float
    images: int
    seconds: float
    y_true: np.ndarray | None = None
    y_prob: np.ndarray | None = None
    w_rec: float = 0.0


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 32-bit seed derived from ``(seed, epoch, rank)``."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0])


def seed_everything(seed: int, transform: Any = None) -> None:
    """Seed torch (CPU and CUDA), numpy, python ``random`` and an albumentations pipeline."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


# ---------------------------------------------------------------------------------------------- steps


class PuzzleObjective:
    """``task: image``: the Puzzle-CAM pass (full image + tiles) and the ComboLoss."""

    def __init__(self, criterion: ComboLoss) -> None:
        self.criterion = criterion

    def train_terms(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, w_rec: float,
                    amp: AmpSettings) -> LossTerms:
        """Loss terms of a training batch (``model`` may be DDP-wrapped: both passes in one call)."""
        with autocast(amp):
            out = model(images, puzzle=True)
        return self.criterion(out, targets, w_rec=w_rec)

    def eval_terms(self, net: PuzzleCAM, images: torch.Tensor, targets: torch.Tensor, amp: AmpSettings
                   ) -> tuple[LossTerms, torch.Tensor]:
        """Validation loss terms (configured weights) and the image logits."""
        with autocast(amp):
            out = net.forward_puzzle(images)
        return self.criterion(out, targets), out.logits


class CellObjective:
    """``task: cell``: one plain forward pass of the crops and BCE against the (soft) cell targets."""

    def train_terms(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, w_rec: float,
                    amp: AmpSettings) -> LossTerms:
        """Loss terms of a training batch (``w_rec`` unused: there is no puzzle branch)."""
        with autocast(amp):
            logits = model(images)[0]
        return classifier_loss(logits, targets)

    def eval_terms(self, net: PuzzleCAM, images: torch.Tensor, targets: torch.Tensor, amp: AmpSettings
                   ) -> tuple[LossTerms, torch.Tensor]:
        """Validation BCE and the crop logits."""
        with autocast(amp):
            logits = net(images)[0]
        return classifier_loss(logits, targets), logits


class CellBagObjective(CellObjective):
    """``task: cell`` with ``cells.bag.size`` > 0: bags of K cells of one image (multiple-instance learning).

    A batch is ``(B * K) x 4 x S x S`` crops with ``B x (K + 1) x 19`` targets (row 0 the image labels,
    :func:`wsss.data.cells.bag_collate`); the loss is :func:`wsss.losses.bag_loss` with the weights and
    pooling of ``bag``. Validation is per cell, as :class:`CellObjective` (its loss, the cells' BCE, is
    therefore not the training loss).
    """

    def __init__(self, bag: BagSettings) -> None:
        self.bag = bag

    def train_terms(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, w_rec: float,
                    amp: AmpSettings) -> LossTerms:
        """Loss terms of a batch of bags (``w_rec`` unused)."""
        bags, k = targets.shape[0], targets.shape[1] - 1
        with autocast(amp):
            logits = model(images)[0]
        cell_logits = logits.reshape(bags, k, logits.shape[-1])
        b = self.bag
        return bag_loss(cell_logits, targets[:, 1:], targets[:, 0], b.w_cell, b.w_bag, b.pool, b.lse_r)


Objective = PuzzleObjective | CellObjective


def make_objective(cfg: Mapping[str, Any]) -> Objective:
    """The objective of ``cfg['task']`` with the ``loss`` weights (for cells: ``cells.bag``)."""
    if task_of(cfg) == "cell":
        bag = bag_settings(cfg)
        return CellBagObjective(bag) if bag is not None else CellObjective()
    loss_cfg = cfg["loss"]
    return PuzzleObjective(ComboLoss(loss_cfg["w_full"], loss_cfg["w_puzzle"], loss_cfg["w_rec"],
                                     loss_cfg.get("rec_mask_by_labels", False)))


def train_step(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp: AmpSettings,
    w_rec: float,
    grad_clip: float | None = None,
) -> LossTerms | None:
    """One optimisation step of ``objective``; returns the loss terms, or ``None`` if the loss was not finite.

    Under DDP the ranks agree first: if the loss is not finite on any rank, every rank skips the
    step (a lone rank skipping ``backward`` would leave the others waiting in the gradient all-reduce).
    """
    optimizer.zero_grad(set_to_none=True)
    terms = objective.train_terms(model, images, targets, w_rec, amp)
    if not ddp.all_true(bool(torch.isfinite(terms.total))):
        return None
    scaler.scale(terms.total).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
    scaler.step(optimizer)
    scaler.update()
    return terms


def _sum_terms(acc: torch.Tensor, terms: LossTerms, n: int) -> None:
    values = torch.stack([terms.total, terms.full, terms.puzzle, terms.rec]).detach().to("cpu", torch.float64)
    acc[:4] += values * n
    acc[4] += n


def _mean_terms(acc: torch.Tensor) -> tuple[float, float, float, float, int]:
    total = ddp.all_reduce_sum(acc)
    n = max(float(total[4]), 1.0)
    return float(total[0] / n), float(total[1] / n), float(total[2] / n), float(total[3] / n), int(total[4])


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp: AmpSettings,
    device: torch.device,
    state: TrainState,
    cfg: Mapping[str, Any],
    progress: bool = True,
) -> EpochResult:
    """One training epoch over ``loader``; advances ``state.global_step``."""
    model.train()
    warmup_steps = float(cfg["loss"].get("rec_warmup_epochs") or 0.0) * max(len(loader), 1)
    acc = torch.zeros(5, dtype=torch.float64)
    skipped = 0
    w = 0.0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1} train", leave=False, disable=not progress, dynamic_ncols=True)
    channels_last = uses_channels_last(cfg["train"])
    for images, targets in bar:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        w = rec_weight(float(cfg["loss"]["w_rec"]), state.global_step, warmup_steps)
        terms = train_step(model, images, targets, objective, optimizer, scaler, amp, w, cfg["train"].get("grad_clip"))
        state.global_step += 1
        if terms is None:
            skipped += 1
            logger.warning("step %d: non-finite loss (on this or another rank), step skipped", state.global_step)
            continue
        _sum_terms(acc, terms, images.shape[0])
        bar.set_postfix(loss=f"{float(terms.total.detach()):.4f}")
    if skipped and skipped == len(loader):
        raise TrainError(f"epoch {state.epoch + 1}: every step had a non-finite loss (lower the lr or use --precision 32)")
    loss, full, puzzle, rec, n = _mean_terms(acc)
    return EpochResult(loss, full, puzzle, rec, n, time.perf_counter() - start, w_rec=w)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    objective: Objective,
    amp: AmpSettings,
    device: torch.device,
    progress: bool = True,
    channels_last: bool = False,
) -> EpochResult:
    """Validation loss (configured weights) and ``sigmoid(logits)`` gathered from every rank."""
    net: PuzzleCAM = ddp.unwrap(model)
    net.eval()
    acc = torch.zeros(5, dtype=torch.float64)
    probs: list[np.ndarray] = []
    trues: list[np.ndarray] = []
    start = time.perf_counter()
    for images, targets in tqdm(loader, desc="validate", leave=False, disable=not progress, dynamic_ncols=True):
        images = images.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device)
        terms, logits = objective.eval_terms(net, images, targets, amp)
        _sum_terms(acc, terms, images.shape[0])
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        trues.append(targets.cpu().numpy())
    loss, full, puzzle, rec, n = _mean_terms(acc)
    parts = ddp.all_gather_objects((np.concatenate(trues) if trues else np.zeros((0, net.num_classes), np.float32),
                                    np.concatenate(probs) if probs else np.zeros((0, net.num_classes), np.float32)))
    y_true = np.concatenate([p[0] for p in parts])
    y_prob = np.concatenate([p[1] for p in parts])
    return EpochResult(loss, full, puzzle, rec, n, time.perf_counter() - start, y_true, y_prob)


# ------------------------------------------------------------------------------------------------ fit


def uses_channels_last(t: Mapping[str, Any]) -> bool:
    """Whether the run keeps tensors in channels_last: ``train.resolved`` once :func:`fit` has resolved it."""
    resolved = t.get("resolved") or {}
    if "channels_last" in resolved:
        return bool(resolved["channels_last"])
    return t.get("channels_last") is True


def resolve_hardware(t: dict[str, Any], device: torch.device, info: ddp.DistInfo) -> AmpSettings:
    """Resolve ``train.precision`` and ``train.channels_last`` for ``device`` and record them as ``train.resolved``.

    ``train.resolved`` (saved with the config) holds the explicit values that reproduce the run
    elsewhere (``precision``: 32, 16 or bf16; ``channels_last``: true/false) and the reason.
    """
    amp = resolve_precision(t["precision"], device, warn=info.is_main)
    channels_last = resolve_channels_last(t.get("channels_last"), amp)
    t["resolved"] = {"precision": amp.canonical, "autocast": amp.name, "grad_scaler": amp.use_scaler,
                     "channels_last": channels_last, "device": str(device), "why": describe(amp)}
    if info.is_main:
        logger.info("%s; channels_last %s", describe(amp), "on" if channels_last else "off")
    return amp


def _saved_config(meta: Mapping[str, str]) -> dict[str, Any]:
    """The resolved config stored in a checkpoint's metadata (``{}`` when absent or unreadable)."""
    try:
        saved = json.loads(meta.get("config") or "{}")
    except (ValueError, AttributeError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _warn_restored(saved_cfg: Mapping[str, Any], t: Mapping[str, Any], optimizer: torch.optim.Optimizer,
                   sampler: Any) -> None:
    """Warn when ``train.lr`` or ``train.samples_per_epoch`` differ from the run being resumed (``saved_cfg``, its
    config; its state wins)."""
    saved = saved_cfg.get("train") or {}
    if "lr" in saved and float(t["lr"]) != float(saved["lr"]):
        logger.warning("resume: train.lr %g differs from the resumed run's %g; the restored optimizer state wins "
                       "(lr now %g)", float(t["lr"]), float(saved["lr"]), optimizer.param_groups[0]["lr"])
    if (hasattr(sampler, "load_state_dict") and "samples_per_epoch" in saved
            and t.get("samples_per_epoch") != saved["samples_per_epoch"]):
        logger.warning("resume: train.samples_per_epoch %s differs from the resumed run's %s; the restored sampler "
                       "state wins (%s samples per epoch on this rank)", t.get("samples_per_epoch"),
                       saved["samples_per_epoch"], getattr(sampler, "num_samples", "?"))


def _loss_at(state: TrainState) -> float | None:
    """The validation loss of the best epoch, from the history (``None`` before the first epoch)."""
    rows = [r for r in state.history if int(r.get("epoch", -1)) == state.best_epoch]
    return float(rows[-1]["val_loss"]) if rows else None


def _check_same_select(saved: Mapping[str, Any], cfg: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume a run (config ``saved``) with another ``train.select``: its best score and ``best`` weights
    were chosen by the old rule."""
    before = (saved.get("train") or {}).get("select", "loss") if saved else None
    now = cfg.get("train", {}).get("select", "loss")
    if before is not None and before != now:
        raise TrainError(f"{path}: cannot resume with train.select {now}: the run chose its best epoch by {before}; "
                         "use another --out")


def _check_same_items(saved: Mapping[str, Any], cfg: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume a cell run (config ``saved``) whose items change kind (``cells.bag.size``: single cells or
    bags of another size): the restored sampler state would count the wrong items."""
    if not saved or task_of(cfg) != "cell" or task_of(saved) != "cell":
        return
    before, now = bag_settings(saved), bag_settings(cfg)
    size_before, size_now = before.size if before else 0, now.size if now else 0
    if size_before != size_now:
        raise TrainError(f"{path}: cannot resume with cells.bag.size {size_now}: the run was trained with "
                         f"{size_before} (0 = single cells); use another --out")


def _resume(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    scaler: torch.amp.GradScaler, sampler: Any, t: Mapping[str, Any] | None = None,
    cfg: Mapping[str, Any] | None = None,
) -> TrainState:
    sd, state, meta = load_resume_state(path)
    try:
        ddp.unwrap(model).load_state_dict(sd, strict=True)
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise TrainError(f"{path}: cannot resume this run with the current config ({str(exc).splitlines()[0]})") from None
    saved = _saved_config(meta)
    if cfg is not None:
        _check_same_select(saved, cfg, path)
        _check_same_items(saved, cfg, path)
    if state.get("sampler") and hasattr(sampler, "load_state_dict"):
        sampler.load_state_dict(state["sampler"])
    if t is not None:
        _warn_restored(saved, t, optimizer, sampler)
    ts = TrainState(epoch=int(state["epoch"]), global_step=int(state["global_step"]),
                    best_loss=float(state["best_loss"]), best_epoch=int(state["best_epoch"]),
                    history=list(state.get("history", [])))
    logger.info("resumed %s at epoch %d (step %d, best score %.4f at epoch %d)",
                path, ts.epoch, ts.global_step, ts.best_loss, ts.best_epoch)
    return ts


def _resume_state(ts: TrainState, optimizer: torch.optim.Optimizer, scheduler: Any,
                  scaler: torch.amp.GradScaler, sampler: Any) -> dict[str, Any]:
    return {
        "epoch": ts.epoch,
        "global_step": ts.global_step,
        "best_loss": ts.best_loss,
        "best_epoch": ts.best_epoch,
        "history": ts.history,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "sampler": sampler.state_dict() if hasattr(sampler, "state_dict") else None,
        # no RNG snapshot: every epoch re-seeds all random streams from (seed, epoch, rank)
    }


def step_scheduler(scheduler: Any, val_loss: float) -> None:
    """One end-of-epoch scheduler step: on the validation loss for ``plateau``, by epoch otherwise."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()


def build_optimizer(model: torch.nn.Module, t: Mapping[str, Any]) -> tuple[torch.optim.Optimizer, Any]:
    """Adam (lr, betas, weight decay from the config) and the LR scheduler (``plateau``, ``cosine`` or ``none``).

    ``plateau`` steps on the validation ComboLoss; ``cosine`` anneals the lr per epoch from ``lr`` to
    ``min_lr`` over ``train.epochs`` (for short budgets, where a plateau never comes).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=float(t["lr"]), betas=tuple(float(b) for b in t["betas"]),
                                 weight_decay=float(t.get("weight_decay") or 0.0))
    sched = dict(t.get("scheduler") or {"name": "none"})
    if sched.get("name") == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=float(sched.get("factor", 0.3)), patience=int(sched.get("patience", 8)),
            min_lr=float(sched.get("min_lr", 0.0)))
    elif sched.get("name") == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, int(t["epochs"])), eta_min=float(sched.get("min_lr", 0.0)))
    elif sched.get("name") in (None, "none"):
        scheduler = None
    else:
        raise TrainError(f"train.scheduler.name must be 'plateau', 'cosine' or 'none', got {sched.get('name')!r}")
    return optimizer, scheduler


def resolve_out_dir(cfg: Mapping[str, Any], fold: int) -> Path:
    """``train.out`` with ``{name}``, ``{model}`` and ``{fold}`` filled in (:class:`TrainError` if it is not a path)."""
    out = cfg["train"]["out"]
    if not isinstance(out, (str, Path)):
        raise TrainError(f"train.out must be a path, got {out!r} (quote a value like '{{fold}}' in --set)")
    try:
        return Path(str(out).format(name=cfg.get("name", "puzzlecam"), model=cfg["model"]["name"], fold=fold))
    except (KeyError, IndexError, ValueError) as exc:
        raise TrainError(f"train.out {out!r}: only {{name}}, {{model}} and {{fold}} can be filled in ({exc!r})") from None


def resolve_resume(out: Path, resume: bool | str | Path) -> Path | None:
    """The checkpoint to resume from, or ``None`` for a new run (see :func:`fit` for ``resume``).

    A new run refuses a folder that already holds ``last.safetensors`` (:class:`TrainError`).
    """
    last = out / "last.safetensors"
    if resume is True:
        if not last.is_file():
            logger.info("--resume: no %s yet, starting a new run", last)
            return None
        return last
    if resume:
        path = Path(resume)
        if not path.is_file():
            raise TrainError(f"{path}: checkpoint to resume not found")
        return path
    if last.is_file():
        raise TrainError(f"{out} already holds a run (last.safetensors); pass --resume to continue it or choose another --out")
    return None


def fit(cfg: dict[str, Any], fold: int, resume: bool | str | Path = False) -> dict[str, Any]:
    """Train fold ``fold`` with the resolved config ``cfg``; returns a summary dict.

    ``resume``: ``False`` starts a new run (refusing a folder that already has ``last``),
    ``True`` continues from ``{out}/last.safetensors`` when it exists (else starts fresh), a
    path continues from that checkpoint.

    The device and ``train.precision`` are checked before anything else (:class:`TrainError`,
    :class:`~wsss.precision.PrecisionError`).
    """
    return run_on_device(cfg, fold, resume, _fit)


RunBody = Callable[[dict[str, Any], int, "bool | str | Path", ddp.DistInfo, torch.device, AmpSettings], dict[str, Any]]


def run_on_device(cfg: dict[str, Any], fold: int, resume: bool | str | Path, body: RunBody) -> dict[str, Any]:
    """Resolve the device and ``train.precision`` (:func:`resolve_hardware`), set ``train.threads`` when
    given, start DDP when launched by ``torchrun``, run ``body(cfg, fold, resume, info, device, amp)`` and
    always tear DDP down. Shared by every training entry point (classifier, watershed segmenter)."""
    info = ddp.env_info()
    t = cfg["train"]
    try:
        device = ddp.resolve_device(None if t.get("device") is None else str(t.get("device")), info)
    except (RuntimeError, ValueError) as exc:
        raise TrainError(f"device {t.get('device')!r}: {str(exc).splitlines()[0]}") from None
    amp = resolve_hardware(t, device, info)
    if t.get("threads"):
        torch.set_num_threads(int(t["threads"]))
    ddp.init_distributed(device, info)
    try:
        return body(cfg, fold, resume, info, device, amp)
    finally:
        ddp.cleanup()


def _fit(cfg: dict[str, Any], fold: int, resume: bool | str | Path, info: ddp.DistInfo, device: torch.device,
         amp: AmpSettings) -> dict[str, Any]:
    t = cfg["train"]
    select = check_select(t.get("select", "loss"))
    out = resolve_out_dir(cfg, fold)
    cfg["train"]["fold"] = fold
    cfg["train"]["out"] = str(out)
    resume_path = resolve_resume(out, resume)

    task = task_of(cfg)
    seed_everything(epoch_seed(int(t["seed"]), 2**31, 0))  # model init: same weights on every rank
    m = cfg["model"]
    try:
        model = build_model(m["name"], num_classes=int(m["num_classes"]), in_chans=int(m["in_chans"]),
                            pretrained_file=m.get("pretrained_file"), output_stride=m.get("output_stride"),
                            grid=int(m.get("puzzle_grid", 2)), stem_rule=m.get("stem_rule", "mean"))
        if task == "image":  # the puzzle tiles must line up; a cell classifier has no puzzle branch
            model.check_input_size(int(cfg["data"]["size"]), int(cfg["data"]["size"]))
    except (ValueError, RuntimeError) as exc:
        raise TrainError(f"model: {exc}") from None
    model.to(device)
    if uses_channels_last(t):
        model.to(memory_format=torch.channels_last)
    if info.enabled and t.get("sync_bn"):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: torch.nn.Module = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    loaders = build_loaders if task == "image" else build_cell_loaders
    train_loader, val_loader, sampler, val_y = loaders(cfg, fold, info, device)
    model.set_input_cfg(int(cfg["data"]["size"]), cfg["data"]["mean"], cfg["data"]["std"])  # resolved by now
    optimizer, scheduler = build_optimizer(net, t)
    scaler = make_scaler(amp)
    objective = make_objective(cfg)
    unit = ITEM_NAMES[task]

    state = (_resume(resume_path, net, optimizer, scheduler, scaler, sampler, t, cfg) if resume_path
             else TrainState())
    progress = bool(t.get("progress", True)) and info.is_main
    tb = TensorBoardLogger(out / "tensorboard", enabled=bool(t.get("tensorboard", True)) and info.is_main)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        bag = bag_settings(cfg) if task == "cell" else None
        train_unit = f"bags of {bag.size} {unit}" if bag else unit
        logger.info("run %s: task %s, %s, fold %d, %d train %s / %d val %s, %d steps/epoch, %s on %s x%d",
                    out, task, m["name"], fold, len(train_loader.dataset), train_unit, len(val_y), unit,
                    len(train_loader), amp.name, device, info.world_size)
    chance = chance_map(val_y)
    epochs = int(t["epochs"])
    threshold = float(t.get("f1_threshold", 0.5))
    for epoch in range(state.epoch, epochs):
        seed_everything(epoch_seed(int(t["seed"]), epoch, info.rank), train_loader.dataset.transform)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        tr = train_one_epoch(net, train_loader, objective, optimizer, scaler, amp, device, state, cfg, progress)
        va = evaluate(net, val_loader, objective, amp, device, progress, uses_channels_last(t))
        if scheduler is not None:
            step_scheduler(scheduler, va.loss)
        state.epoch = epoch + 1
        row = {
            "epoch": state.epoch, "step": state.global_step, "lr": optimizer.param_groups[0]["lr"], "w_rec": tr.w_rec,
            "train_loss": tr.loss, "train_full": tr.full, "train_puzzle": tr.puzzle, "train_rec": tr.rec,
            "val_loss": va.loss, "val_full": va.full, "val_puzzle": va.puzzle, "val_rec": va.rec,
            "val_f1": macro_f1(va.y_true, va.y_prob, threshold),
            "val_map": macro_map(va.y_true, va.y_prob), "val_map_chance": chance,
            "train_images": tr.images, "val_images": int(va.y_true.shape[0]),
            "train_img_per_s": tr.images / max(tr.seconds, 1e-9), "epoch_seconds": tr.seconds + va.seconds,
        }
        state.history.append(row)
        score = selection_score(select, va.loss, row["val_map"], state.epoch, "map")
        improved = score < state.best_loss
        if improved:
            state.best_loss, state.best_epoch = score, state.epoch
        if info.is_main:
            if improved:
                save_checkpoint(out, "best", net, cfg, state.epoch, va.loss)
            save_checkpoint(out, "last", net, cfg, state.epoch, va.loss,
                            state=_resume_state(state, optimizer, scheduler, scaler, sampler))
            write_history_csv(out / "metrics.csv", state.history)
            plot_curves(out / "curves.png", state.history, title=f"{cfg.get('name')} fold {fold}")
            tb.log(row, state.epoch)
            logger.info("epoch %d/%d  train %.4f (full %.4f puzzle %.4f rec %.4f)  val %.4f  F1 %.3f  mAP %.3f "
                        "(chance %.3f)  %.1f %s/s  %.1f s%s", state.epoch, epochs, tr.loss, tr.full, tr.puzzle, tr.rec,
                        va.loss, row["val_f1"], row["val_map"], chance, row["train_img_per_s"], unit,
                        row["epoch_seconds"], "  *best*" if improved else "")
        ddp.barrier()
    tb.close()
    last_row = state.history[-1] if state.history else {}
    return {
        "out": str(out), "epochs": state.epoch, "best_epoch": state.best_epoch, "best_val_loss": _loss_at(state),
        "select": select,
        "val_map": last_row.get("val_map"), "val_f1": last_row.get("val_f1"), "val_map_chance": chance,
        "history": state.history,
    }
