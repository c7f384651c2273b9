"""Stage-1, stage-2 and cell-stage drivers: read images and label maps, run the model, write the tables.

Both drivers take a model object (anything whose ``forward(x)`` returns ``(logits, cams)``), so
they run the same with a real checkpoint (:func:`wsss.cli.infer.main`) and a test module.

* Stage 1 (:func:`run_stage1`): images resized to the model's input size and normalised with the
  checkpoint's mean/std go through the network in batches (TTA views in the same batch; optional
  multi-scale passes, :mod:`wsss.infer.cams`);
  the sigmoid gives the image-level table, the normalised CAMs times each image's label map give
  the per-cell table (:mod:`wsss.infer.scoring`).
* Stage 2 (:func:`run_stage2`): every cell is cropped from the normalised image at its own
  resolution (:mod:`wsss.infer.crops`); the crops of ``images_per_batch`` images are pooled and
  sent through the network ``batch_size`` crops at a time; the sigmoid of each crop is its row.
* Stage ``cell`` (:func:`run_stage_cell`): the same with the cell classifier (``wsss-train --task
  cell``) and the crops it was trained on (:func:`wsss.data.cells.image_cell_crops`: raw uint8
  crops, then normalised; crop settings from its training config); TTA as in stage 2 (``--tta d4``:
  the 8 views of every crop, probabilities averaged).

Reading, label-map indexing, crop extraction (stage 2) and the cell footprints (stage 1) run in
the DataLoader workers; a failing id (missing/corrupt image or label map) comes back as a failure
record, is logged on one line, listed in the summary and in ``skipped_{tag}.csv``, and the run
goes on. Results are written every ``chunk_images`` images through :class:`~wsss.infer.tables.PartWriter`,
so a killed run resumes by skipping the ids of finished chunks; resuming is refused (:class:`RunError`)
when the folder was written with another fold, source, checkpoint or scoring settings.

On a CUDA device the loader pins its batches (stage 1: the images stacked in the worker; stage 2:
the pooled crops of a batch of images, concatenated in the worker) and the copies to the device are asynchronous, so with ``workers`` the
next images are read and cropped while the device runs the current ones.

Inside a process group (``torchrun``, :mod:`wsss.dist`) each rank runs its share of the ids still
to do, in blocks of one forward batch of images (stage 1: ``batch_size`` images, stage 2:
``images_per_batch``) balanced by the images' pixel counts, so every rank computes exactly the
batches a single process computes; it writes only its own parts, and rank 0, after every rank
finished, writes the consolidated tables in the single process's row order and the run's summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from wsss import dist
from wsss.data.cells import image_cell_crops
from wsss.data.classes import NUM_CLASSES
from wsss.data.dataset import normalize
from wsss.data.io import resize_rgby
from wsss.fileio import ResumeError, atomic_write_bytes, changed_settings, read_record, write_json
from wsss.infer.cams import amp_name, forward_cams, forward_probs
from wsss.infer.crops import CropParams, extract_crops
from wsss.infer.scoring import ScoreParams, cell_footprints, cell_measures, cell_probabilities
from wsss.masks import CellIndex, index_cells
from wsss.infer.sources import ImageSource, InputError, MaskSource
from wsss.infer.tables import PartWriter, cell_frame, finished_frame, image_frame
from wsss.infer.tta import check_tta, parse_scales

logger = logging.getLogger(__name__)

#: The stages of :func:`run_stage1`, :func:`run_stage2` and :func:`run_stage_cell` (their files carry ``stage{stage}``).
STAGES: tuple[int | str, ...] = (1, 2, "cell")
#: What identifies an inference run in its ``run_{tag}.json`` (compared when resuming).
RUN_IDENTITY: tuple[str, ...] = ("fold", "source", "ckpt", "settings_digest")


class RunError(RuntimeError):
    """A whole run that cannot start (conflicting output folder, bad settings)."""


@dataclass
class InferSettings:
    """Everything a stage driver needs besides the model, the ids and the sources."""

    out_dir: Path
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 8
    workers: int = 0
    precision: str = "auto"
    tta: tuple[str, ...] = ()
    scales: tuple[float, ...] = (1.0,)
    chunk_images: int = 64
    source: str = "stage1"
    fold: int = -1
    mask_working_size: int | None = 512
    score: ScoreParams = field(default_factory=ScoreParams)
    crop: CropParams = field(default_factory=CropParams)
    crop_image_size: int | None = None
    images_per_batch: int = 8
    run_info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSummary:
    """What a stage run did."""

    stage: int | str
    requested: int
    already_done: int
    processed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    n_cells: int = 0
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (skipped as ``[{id, reason}]``)."""
        out = asdict(self)
        out["skipped"] = [{"image_id": i, "reason": r} for i, r in self.skipped]
        out["n_processed"] = len(self.processed)
        out["n_skipped"] = len(self.skipped)
        return out


def _light(cells: CellIndex) -> CellIndex:
    """The cell index without its per-pixel arrays (cheap to send between processes)."""
    z = np.zeros(0, dtype=np.int64)
    return CellIndex(ids=cells.ids, area=cells.area, boxes=cells.boxes, border=cells.border,
                     shape=cells.shape, pix_y=z, pix_x=z, pix_k=z)


class _Items(Dataset):
    """Per-id inputs of a stage; a failing id yields ``{"ok": False, "error": ...}``."""

    def __init__(self, ids: Sequence[str], images: ImageSource, masks: MaskSource, settings: InferSettings,
                 stage: int | str, cam_hw: tuple[int, int] | None = None) -> None:
        self.ids = list(ids)
        self.images = images
        self.masks = masks
        self.s = settings
        self.stage = stage
        self.cam_hw = cam_hw

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.ids[i]
        try:
            return self._load(image_id)
        except InputError as exc:
            return {"id": image_id, "ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one bad id must not end the run; reported by id
            logger.debug("failure on %s", image_id, exc_info=True)
            return {"id": image_id, "ok": False, "error": f"{exc.__class__.__name__}: {exc}"}

    def _load(self, image_id: str) -> dict[str, Any]:
        rgby, orig_h, orig_w = self.images.read(image_id)
        maps = self.masks.load(image_id, (orig_h, orig_w))
        cells = index_cells(maps.cells)
        item: dict[str, Any] = {"id": image_id, "ok": True, "orig_hw": (orig_h, orig_w),
                                "mask_path": str(maps.path.resolve())}
        if self.stage == 1:
            item["image"] = normalize(resize_rgby(rgby, self.s.input_size), self.s.mean, self.s.std)
            item["footprints"] = cell_footprints(cells, self.cam_hw) if self.cam_hw else None
            item["cells"] = _light(cells) if self.cam_hw else cells
        else:
            item["crops"] = cell_crops(rgby, maps.cells, cells, self.s, self.stage)
            item["cells"] = _light(cells)
        return item


def cell_crops(rgby: np.ndarray, labels: np.ndarray, cells: CellIndex, settings: InferSettings,
               stage: int | str) -> torch.Tensor:
    """The normalised crops ``K x 4 x S x S`` of every cell: stage 2 cuts the normalised image
    (:func:`~wsss.data.crops.extract_crops`), stage ``cell`` the raw one as in its training
    (:func:`~wsss.data.cells.image_cell_crops`), then normalises the uint8 crops."""
    s = settings
    if stage == "cell":
        raw, _ = image_cell_crops(rgby, labels, s.crop, s.crop_image_size, mean=s.mean, cells=cells)
        return normalize(raw, s.mean, s.std)
    src = rgby if not s.crop_image_size else resize_rgby(rgby, int(s.crop_image_size))
    raw_zero = [-m / d for m, d in zip(s.mean, s.std)]
    return extract_crops(normalize(src, s.mean, s.std), labels, cells, s.crop, raw_zero)[0]


def _collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def _stack_images(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage-1 collate (runs in the worker): the items without their images, and the images in one tensor."""
    images = [item.pop("image") for item in batch if item["ok"]]
    return {"items": batch, "images": torch.stack(images) if images else None}


def _pool_crops(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage-2 collate (runs in the worker): the items without their crops, and all crops in one tensor."""
    crops = [item.pop("crops") for item in batch if item["ok"]]
    counts = [int(c.shape[0]) for c in crops]
    return {"items": batch, "counts": counts, "crops": torch.cat(crops) if sum(counts) else None}


def _loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device,
            collate: Any = _collate) -> DataLoader:
    """Batches of ``batch_size`` items in order; pinned for a CUDA device (asynchronous copies)."""
    return DataLoader(dataset, batch_size=max(1, batch_size), shuffle=False, num_workers=max(0, workers),
                      collate_fn=collate, pin_memory=torch.device(device).type == "cuda", persistent_workers=False)


def scoring_settings(settings: InferSettings, stage: int | str) -> dict[str, Any]:
    """The settings that change a stage's scores (stage 1: CAM scoring; stage 2 and cell: crops), JSON-friendly."""
    common = {"mean": list(settings.mean), "std": list(settings.std), "tta": list(settings.tta),
              "precision": amp_name(settings.precision, settings.device),
              "mask_working_size": settings.mask_working_size}
    if stage == 1:
        multi = {} if tuple(settings.scales) == (1.0,) else {"scales": list(settings.scales)}  # old digests kept
        return {"input_size": settings.input_size, **common, **multi, "score": asdict(settings.score)}
    return {**common, "crop": asdict(settings.crop), "crop_image_size": settings.crop_image_size}


def settings_digest(scoring: dict[str, Any]) -> str:
    """A short stable digest of :func:`scoring_settings`."""
    return hashlib.sha256(json.dumps(scoring, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_run_info(out_dir: Path, tag: str, info: dict[str, Any]) -> None:
    """Refuse to resume into a folder written by another run; record this run's identity.

    A run is identified by its fold, source, checkpoint (``ckpt``, when given) and the digest of
    its scoring settings (``settings_digest``); any difference from the folder's ``run_{tag}.json``
    raises :class:`RunError` (keys missing from either side are not compared).
    """
    path = out_dir / f"run_{tag}.json"
    try:
        old = read_record(path)
    except ResumeError as exc:
        raise RunError(str(exc)) from None
    changed = changed_settings(old, info, RUN_IDENTITY, only_shared=True)
    if changed:
        key = changed[0]
        if key == "settings_digest":
            before, now = old.get("settings", {}), info.get("settings", {})
            diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k)) or ["?"]
            what = f"other scoring settings ({', '.join(diff)} differ)"
        else:
            what = f"{key}={old[key]!r}, not {info[key]!r}"
        raise RunError(f"{out_dir}: holds a {tag} run with {what}; use a new --out or delete it")
    write_json(path, info, indent=2)


def _run_info(settings: InferSettings, stage: int | str) -> dict[str, Any]:
    scoring = scoring_settings(settings, stage)
    return {"stage": stage, "fold": settings.fold, "source": settings.source, **settings.run_info,
            "settings_digest": settings_digest(scoring), "settings": scoring}


def _finish(summary: RunSummary, writer: PartWriter, out_dir: Path, tag: str, started: float,
            order: Sequence[str]) -> RunSummary:
    """End of a stage: every rank's summary merged, then rank 0 consolidates the tables and writes the summary.

    ``seconds`` is rank 0's wall time from the start to the written tables (the whole run's time).
    """
    summary = merge_summaries(dist.all_gather_objects(summary), order)  # every rank has finished here

    def write() -> tuple[dict[str, str], float]:
        summary.outputs = {k: str(v) for k, v in writer.consolidate(order).items()}
        summary.seconds = round(time.perf_counter() - started, 3)
        skipped = pd.DataFrame(summary.skipped, columns=["image_id", "reason"])
        atomic_write_bytes(out_dir / f"skipped_{tag}.csv", skipped.to_csv(index=False).encode())
        atomic_write_bytes(out_dir / f"summary_{tag}.json", json.dumps(summary.to_dict(), indent=2).encode())
        return summary.outputs, summary.seconds

    summary.outputs, summary.seconds = dist.on_main(write)
    return summary


def merge_summaries(parts: Sequence[RunSummary], order: Sequence[str]) -> RunSummary:
    """One :class:`RunSummary` from the ranks' (ids in ``order``); a single part as it is."""
    if len(parts) == 1:
        return parts[0]
    rank = {image_id: i for i, image_id in enumerate(order)}
    first = parts[0]
    return RunSummary(stage=first.stage, requested=first.requested, already_done=first.already_done,
                      processed=sorted((i for p in parts for i in p.processed), key=lambda i: rank.get(i, len(rank))),
                      skipped=sorted((s for p in parts for s in p.skipped), key=lambda s: rank.get(s[0], len(rank))),
                      n_cells=sum(p.n_cells for p in parts))


def probe_cam_size(model: nn.Module, input_size: int, device: torch.device) -> tuple[int, int]:
    """CAM resolution ``(h, w)`` of ``model`` for a square ``input_size`` input (one tiny forward)."""
    with torch.inference_mode():
        _, cams = model(torch.zeros(1, 4, input_size, input_size, device=device))
    return int(cams.shape[-2]), int(cams.shape[-1])


class _Chunk:
    """Rows of finished images waiting to be written as one part."""

    def __init__(self) -> None:
        self.cells: list[pd.DataFrame] = []
        self.images: list[pd.DataFrame] = []
        self.done: list[tuple[str, int, int]] = []

    def __len__(self) -> int:
        return len(self.done)

    def add(self, item: dict[str, Any], settings: InferSettings, cell_probs: np.ndarray, summary: RunSummary) -> None:
        """Queue one finished image's per-cell rows and count it in ``summary``."""
        cells: CellIndex = item["cells"]
        self.cells.append(cell_frame(item["id"], settings.source, settings.fold, cells, cell_probs,
                                     item["orig_hw"], item["mask_path"]))
        self.done.append((item["id"], settings.fold, cells.num_cells))
        summary.processed.append(item["id"])
        summary.n_cells += cells.num_cells

    def flush(self, writer: PartWriter) -> None:
        if not self.done:
            return
        frames = {"cells": pd.concat(self.cells, ignore_index=True) if self.cells else None,
                  "images": pd.concat(self.images, ignore_index=True) if self.images else None}
        done = pd.DataFrame(self.done, columns=["image_id", "fold", "n_cells"])
        writer.write({k: v for k, v in frames.items() if v is not None}, done)
        self.__init__()


def _record_failures(batch: list[dict[str, Any]], summary: RunSummary) -> list[dict[str, Any]]:
    ok = []
    for item in batch:
        if item["ok"]:
            ok.append(item)
        else:
            logger.warning("skipped %s: %s", item["id"], item["error"])
            summary.skipped.append((item["id"], item["error"]))
    return ok


def _start_run(ids: Sequence[str], images: ImageSource, settings: InferSettings, stage: int | str,
               tables: tuple[str, ...], block: int) -> tuple[Path, tuple[str, ...], PartWriter, list[str], RunSummary]:
    """Common start of a stage: check the run folder, pick the ids left to do and this rank's share, open its writer.

    Rank 0 checks the folder and finds the finished ids (of every rank); the other ranks get its
    answer (:func:`wsss.dist.on_main`), then take their share in blocks of ``block`` ids.
    """
    out_dir = Path(settings.out_dir)
    tta = check_tta(settings.tta)
    parse_scales(list(settings.scales))
    tag = f"stage{stage}"
    info = dist.current()
    wanted = list(dict.fromkeys(str(x) for x in ids))

    def plan() -> tuple[list[str], int, list[float]]:
        _check_run_info(out_dir, tag, _run_info(settings, stage))
        done = set(finished_frame(out_dir, tag)["image_id"].astype(str))
        todo = [i for i in wanted if i not in done]
        return todo, len(set(wanted) & done), images.pixel_counts(todo) if info.enabled else []

    todo, done_before, costs = dist.on_main(plan)
    writer = PartWriter(out_dir, tag, tables, rank=info.rank)
    summary = RunSummary(stage=stage, requested=len(wanted), already_done=done_before)
    if done_before and info.is_main:
        logger.info("stage %s: %d ids already done, %d to go", stage, done_before, len(todo))
    return out_dir, tta, writer, dist.take_share(todo, costs, block=block, info=info), summary


def run_stage1(model: nn.Module, ids: Sequence[str], images: ImageSource, masks: MaskSource,
               settings: InferSettings) -> RunSummary:
    """Stage 1 over ``ids`` (resumable); writes ``cells_stage1`` / ``images_stage1`` tables."""
    started = time.perf_counter()
    out_dir, tta, writer, todo, summary = _start_run(ids, images, settings, 1, ("cells", "images"),
                                                     block=settings.batch_size)
    model.eval()
    cam_hw = probe_cam_size(model, settings.input_size, settings.device)
    dataset = _Items(todo, images, masks, settings, stage=1, cam_hw=cam_hw)
    chunk = _Chunk()
    for batch in tqdm(_loader(dataset, settings.batch_size, settings.workers, settings.device, collate=_stack_images),
                      desc="stage 1", total=(len(todo) + settings.batch_size - 1) // max(1, settings.batch_size),
                      unit="batch"):
        ok = _record_failures(batch["items"], summary)
        if not ok:
            continue
        probs, cams = forward_cams(model, batch["images"].to(settings.device, non_blocking=True), tta,
                                   settings.precision, settings.scales, cam_hw)
        probs_np = probs.cpu().numpy()
        cams = cams.float().cpu()  # one copy per batch, not one per image
        for j, item in enumerate(ok):
            overlap, magnitude = cell_measures(item["footprints"], cams[j], settings.score.threshold)
            cell_p = cell_probabilities(overlap, magnitude, probs_np[j], settings.score)
            chunk.images.append(image_frame([item["id"]], settings.source, settings.fold, probs_np[j:j + 1]))
            chunk.add(item, settings, cell_p, summary)
        if len(chunk) >= settings.chunk_images:
            chunk.flush(writer)
    chunk.flush(writer)
    return _finish(summary, writer, out_dir, "stage1", started, list(dict.fromkeys(str(x) for x in ids)))


def _score_crops(model: nn.Module, crops: torch.Tensor, settings: InferSettings, tta: tuple[str, ...]) -> np.ndarray:
    """Probabilities ``N x C`` of ``N`` crops, ``batch_size`` crops per forward pass."""
    outs = []
    step = max(1, settings.batch_size)
    for start in range(0, crops.shape[0], step):
        part = crops[start:start + step].to(settings.device, non_blocking=True)
        outs.append(forward_probs(model, part, tta, settings.precision).cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


def run_stage2(model: nn.Module, ids: Sequence[str], images: ImageSource, masks: MaskSource,
               settings: InferSettings) -> RunSummary:
    """Stage 2 over ``ids`` (resumable); writes the ``cells_stage2`` table."""
    return _run_crops(model, ids, images, masks, settings, 2)


def run_stage_cell(model: nn.Module, ids: Sequence[str], images: ImageSource, masks: MaskSource,
                   settings: InferSettings) -> RunSummary:
    """Stage ``cell`` (the cell classifier) over ``ids`` (resumable); writes the ``cells_stagecell`` table."""
    return _run_crops(model, ids, images, masks, settings, "cell")


def _run_crops(model: nn.Module, ids: Sequence[str], images: ImageSource, masks: MaskSource,
               settings: InferSettings, stage: int | str) -> RunSummary:
    """A crop stage (2 or ``cell``): every cell's crop through ``model``, its sigmoid the cell's row."""
    started = time.perf_counter()
    per = max(1, settings.images_per_batch)
    out_dir, tta, writer, todo, summary = _start_run(ids, images, settings, stage, ("cells",), block=per)
    model.eval()
    dataset = _Items(todo, images, masks, settings, stage=stage)
    chunk = _Chunk()
    for batch in tqdm(_loader(dataset, per, settings.workers, settings.device, collate=_pool_crops), desc=f"stage {stage}",
                      total=(len(todo) + per - 1) // per, unit="batch"):
        ok = _record_failures(batch["items"], summary)
        if not ok:
            continue
        counts = batch["counts"]
        probs = (_score_crops(model, batch["crops"], settings, tta) if batch["crops"] is not None
                 else np.zeros((0, NUM_CLASSES), dtype=np.float32))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        for j, item in enumerate(ok):
            chunk.add(item, settings, probs[offsets[j]:offsets[j + 1]], summary)
        if len(chunk) >= settings.chunk_images:
            chunk.flush(writer)
    chunk.flush(writer)
    return _finish(summary, writer, out_dir, f"stage{stage}", started, list(dict.fromkeys(str(x) for x in ids)))


def render_overlays(model: nn.Module, ids: Sequence[str], images: ImageSource, masks: MaskSource,
                    settings: InferSettings, stage: int | str, top: int = 2, min_prob: float = 0.1) -> list[Path]:
    """Pictures for ``ids`` in ``OUT/overlays/``: cell labels (every stage), CAM grid (stage 1), crops (2, cell).

    The scores are recomputed with the run's settings, so they equal the table's rows.
    """
    from wsss.infer.cams import resize_cams
    from wsss.infer.overlay import cell_label_picture, crop_sheet, save_cam_grid, save_picture

    out = Path(settings.out_dir) / "overlays"
    tta = check_tta(settings.tta)
    written: list[Path] = []
    model.eval()
    for image_id in ids:
        try:
            rgby, orig_h, orig_w = images.read(image_id)
            maps = masks.load(image_id, (orig_h, orig_w))
        except InputError as exc:
            logger.warning("overlay %s skipped: %s", image_id, exc)
            continue
        cells = index_cells(maps.cells)
        if stage == 1:
            x = normalize(resize_rgby(rgby, settings.input_size), settings.mean, settings.std)[None]
            probs, cams = forward_cams(model, x.to(settings.device), tta, settings.precision, settings.scales,
                                       probe_cam_size(model, settings.input_size, settings.device))
            fp = cell_footprints(cells, tuple(cams.shape[-2:]))
            cell_p = cell_probabilities(*cell_measures(fp, cams[0], settings.score.threshold),
                                        probs[0].cpu().numpy(), settings.score)
            written.append(save_cam_grid(out / f"{image_id}_stage1_cams.png", rgby,
                                         resize_cams(cams[0], maps.cells.shape), probs[0].cpu().numpy(),
                                         labels=maps.cells, title=f"{image_id} stage 1 ({settings.source})"))
        else:
            crops = cell_crops(rgby, maps.cells, cells, settings, stage)
            cell_p = (_score_crops(model, crops, settings, tta) if crops.shape[0]
                      else np.zeros((0, NUM_CLASSES), dtype=np.float32))
            written.append(save_picture(out / f"{image_id}_stage{stage}_crops.png",
                                        crop_sheet(crops, cell_p, settings.mean, settings.std)))
        pic = cell_label_picture(rgby, maps.cells, cells.ids, cell_p, top=top, min_prob=min_prob)
        written.append(save_picture(out / f"{image_id}_stage{stage}_cells.png", pic))
    return written
