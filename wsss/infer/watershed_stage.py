"""Stage ``ws``: per-cell class scores from the watershed model's class head.

For every image the class head's per-pixel sigmoid probabilities (flip TTA optional, at the label
map's working scale) are averaged inside each cell of the given label maps; the rows follow the
per-cell table contract (:data:`wsss.schema.CELL_COLUMNS`, ``source = "ws"``), so the table enters
``wsss-ensemble`` like the stage-1/2 tables. The run writes ``OUT/cells_ws.parquet`` in one go
(no chunked resume); an id that fails is logged and listed, and the run goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from wsss.data.dataset import normalize
from wsss.infer.sources import ImageSource, InputError, MaskSource
from wsss.infer.tables import cell_frame, empty_frame, write_parquet
from wsss.masks import CellIndex, index_cells
from wsss.watershed.model import WatershedNet
from wsss.watershed.predict import predict_probs

logger = logging.getLogger(__name__)

SOURCE = "ws"


def mean_in_cells(cells: CellIndex, probs: np.ndarray) -> np.ndarray:
    """Mean of each ``C x H x W`` channel inside every cell (``num_cells x C``, cells in index order)."""
    k = cells.num_cells
    flat = probs.reshape(probs.shape[0], -1)
    pix = cells.pix_y * cells.shape[1] + cells.pix_x
    sums = np.stack([np.bincount(cells.pix_k, weights=flat[c, pix], minlength=k) for c in range(flat.shape[0])], axis=1)
    return sums / np.maximum(cells.area, 1)[:, None]


def cell_class_probs(net: WatershedNet, cfg: Mapping[str, Any], rgby: np.ndarray, cells: CellIndex,
                     tta: bool = False, device: torch.device | str = "cpu") -> np.ndarray:
    """Per-cell mean class-head probabilities of one image (``num_cells x num_classes``)."""
    if "classes" not in net.heads:
        raise ValueError("this watershed model has no class head (train it with model.num_classes: 19)")
    h, w = cells.shape
    if rgby.shape[:2] != (h, w):
        rgby = cv2.resize(rgby, (w, h), interpolation=cv2.INTER_AREA)
    x = normalize(np.ascontiguousarray(rgby), cfg["data"]["mean"], cfg["data"]["std"]).unsqueeze(0).to(device)
    probs = predict_probs(net, x, tta)["classes"][0].cpu().numpy()
    return mean_in_cells(cells, probs)


def run_stage_ws(net: WatershedNet, cfg: Mapping[str, Any], ids: Sequence[str], images: ImageSource,
                 masks: MaskSource, out_dir: Path | str, fold: int = -1, tta: bool = False,
                 device: torch.device | str = "cpu") -> tuple[Path, list[tuple[str, str]], int]:
    """Score every cell of ``ids``; returns ``(table path, skipped (id, reason) pairs, number of cells)``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames: list[pd.DataFrame] = []
    skipped: list[tuple[str, str]] = []
    for image_id in ids:
        try:
            rgby, oh, ow = images.read(image_id)
            maps = masks.load(image_id, (oh, ow))
            cells = index_cells(np.asarray(maps.cells))
            probs = cell_class_probs(net, cfg, rgby, cells, tta, device)
        except InputError as exc:
            logger.warning("%s: %s (skipped)", image_id, exc)
            skipped.append((image_id, str(exc)))
            continue
        frames.append(cell_frame(image_id, SOURCE, fold, cells, probs, (maps.orig_height, maps.orig_width),
                                 str(maps.path)))
    frames = [f for f in frames if len(f)]
    table = pd.concat(frames, ignore_index=True) if frames else empty_frame("cells")
    path = write_parquet(table, out_dir / f"cells_{SOURCE}.parquet")
    return path, skipped, len(table)
