"""Inference configuration: code defaults (mirrored by ``configs/infer.yaml``), checkpoint lookup,
and turning a resolved config into :class:`~wsss.infer.runner.InferSettings`."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wsss.config import TypeSpec, check_config
from wsss.data.dataset import DEFAULT_MEAN, DEFAULT_STD
from wsss.infer.crops import CropParams
from wsss.infer.runner import InferSettings, RunError
from wsss.infer.scoring import ScoreParams
from wsss.infer.tta import parse_scales, tta_modes
from wsss.precision import PRECISION_CHOICES

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "device": "cpu",
    "batch_size": 8,
    "workers": 2,
    "precision": "auto",
    "tta": False,
    "tta_modes": ["hflip", "vflip"],
    "scales": [1.0],
    "chunk_images": 64,
    "source": None,
    "masks": {"working_size": 512},
    "stage1": {"input_size": None, "threshold": 0.1, "overlap_weight": 0.5, "combine": "geometric",
               "negative_floor": 1.0, "image_negative": True, "cam_weight": 0.9},
    "stage2": {"size": "auto", "margin": 0.1, "min_side": 8, "blank": "raw", "antialias": True, "image_size": None,
               "images_per_batch": 8},
    "overlay": {"top_labels": 2, "min_prob": 0.1},
}
CHECKPOINT_NAMES: tuple[str, ...] = ("best.safetensors", "last.safetensors")
#: Types of the keys whose default does not tell (see :func:`wsss.config.check_config`); ``resolved``
#: is written into the saved ``config_stage{n}.yaml`` (which can be given back as ``--config``).
CONFIG_TYPES: dict[str, TypeSpec] = {
    "precision": (str, int),  # auto | 16 | bf16 | 32
    "tta": (bool, str, None),  # false | true (= flip: tta_modes) | flip | d4 | a comma list of D4 mode names
    "scales": (list, str, float, None),  # [1.0] | [0.5, 1, 1.5, 2] | "0.5,1,1.5,2"
    "source": (str, None),
    "masks.working_size": (int, None),
    "stage1.input_size": (int, None),
    "stage2.size": ("auto", int),
    "stage2.image_size": (int, None),
    "resolved": (dict, None),
}


def check_infer_config(cfg: Mapping[str, Any]) -> None:
    """Refuse unknown keys and mistyped values of a resolved inference config (:class:`wsss.config.ConfigError`)."""
    check_config(cfg, DEFAULTS, CONFIG_TYPES)


def default_config() -> dict[str, Any]:
    """A fresh copy of :data:`DEFAULTS`."""
    return copy.deepcopy(DEFAULTS)


def resolve_checkpoint(ckpt: str | Path, fold: int | None = None) -> Path:
    """The weights file of ``ckpt`` (a file, or a run folder -> ``best`` else ``last``).

    ``{fold}`` in the path is replaced by ``fold`` (``runs/fold{fold}`` for per-fold models).
    """
    text = str(ckpt)
    if "{fold}" in text:
        if fold is None:
            raise RunError(f"--ckpt {text} contains {{fold}} but no --fold was given")
        text = text.replace("{fold}", str(fold))
    path = Path(text)
    if path.is_file():
        return path
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise RunError(f"{path}: no {' or '.join(CHECKPOINT_NAMES)} in this run folder")
    raise RunError(f"{path}: checkpoint not found")


def resolve_device(value: Any) -> torch.device:
    """``--device`` as a :class:`torch.device`; a malformed name or a missing GPU raises :class:`RunError`."""
    try:
        device = torch.device(str(value))
    except (RuntimeError, ValueError):
        raise RunError(f"--device must be cpu, cuda or cuda:N, got {value!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise RunError(f"--device must be cpu, cuda or cuda:N, got {value!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RunError(f"--device {value} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RunError(f"--device {value}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def crop_side(size: Any, input_size: int) -> int:
    """The stage-2 crop side: an explicit number, or ``auto`` = a quarter of the model's input side.

    ``auto`` rounds ``input_size / 4`` to a multiple of 32 (at least 32): at the scale a model was
    trained on, an HPA cell's box spans roughly a quarter of the image side (about 128 px in a
    512 px field of view, about 64 px in the 256 px synthetic images), so the crop shows the cell
    at the scale the model learnt.
    """
    if size is None or str(size).lower() == "auto":
        return max(32, int(round(input_size / 4 / 32)) * 32)
    try:
        side = int(size)
    except (TypeError, ValueError):
        raise RunError(f"stage2.size must be a number of pixels or 'auto', got {size!r}") from None
    if side < 8:
        raise RunError(f"stage2.size must be at least 8 px, got {side}")
    return side


def cell_crop_settings(train_cfg: Mapping[str, Any], crop_side: int) -> tuple[CropParams, int | None]:
    """Stage ``cell``: the crop parameters and image resize the cell classifier was trained with
    (its training config's ``cells`` section; the crop side is the model's input side)."""
    cells = dict(train_cfg.get("cells") or {})
    return CropParams.from_mapping({**cells, "size": int(crop_side)}), cells.get("image_size")


def build_settings(cfg: Mapping[str, Any], out_dir: Path, stage: int | str, model_cfg: Mapping[str, Any],
                   fold: int = -1, run_info: Mapping[str, Any] | None = None,
                   train_cfg: Mapping[str, Any] | None = None) -> InferSettings:
    """Settings of a run from the resolved inference config and the loaded model's record.

    ``model_cfg`` is :attr:`PuzzleCAM.model_cfg <wsss.models.PuzzleCAM>` as restored by
    :func:`wsss.models.load_model_from_checkpoint`: its ``input_size`` (unless
    ``stage1.input_size`` is set; else 512), ``mean`` and ``std`` (else the dataset defaults)
    and ``name`` (the default source tag) describe the input. Stage ``cell`` takes its crops from
    the checkpoint's training config ``train_cfg`` (:func:`cell_crop_settings`) and the crop side
    from ``input_size``; ``tta`` there means D4 over the crops.
    """
    model_name = str(model_cfg.get("name") or "model")
    if stage == "cell":
        input_size = model_cfg.get("input_size") or (train_cfg or {}).get("data", {}).get("size") or 64
    else:
        input_size = cfg["stage1"].get("input_size") or model_cfg.get("input_size") or 512
    precision = str(cfg["precision"])
    if precision not in PRECISION_CHOICES:
        raise RunError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    try:
        tta = tta_modes(cfg.get("tta"), cfg["tta_modes"])
        scales = parse_scales(cfg.get("scales"))
    except ValueError as exc:
        raise RunError(str(exc)) from None
    device = resolve_device(cfg["device"])
    stage2 = dict(cfg["stage2"])
    stage2["size"] = crop_side(stage2.get("size"), int(input_size))
    crop, crop_image_size = CropParams.from_mapping(stage2), stage2.get("image_size")
    if stage == "cell":
        crop, crop_image_size = cell_crop_settings(train_cfg or {}, int(input_size))
    source = cfg.get("source") or (f"cell:{model_name}" if stage == "cell" else f"stage{stage}:{model_name}")
    return InferSettings(
        out_dir=Path(out_dir), input_size=int(input_size),
        mean=tuple(float(v) for v in (model_cfg.get("mean") or DEFAULT_MEAN)),
        std=tuple(float(v) for v in (model_cfg.get("std") or DEFAULT_STD)),
        device=device, batch_size=int(cfg["batch_size"]), workers=int(cfg["workers"]), precision=precision,
        tta=tta, scales=scales, chunk_images=int(cfg["chunk_images"]),
        source=str(source), fold=int(fold),
        mask_working_size=cfg["masks"].get("working_size"),
        score=ScoreParams.from_mapping(cfg["stage1"]), crop=crop,
        crop_image_size=crop_image_size, images_per_batch=int(stage2.get("images_per_batch", 8)),
        run_info=dict(run_info or {}),
    )
