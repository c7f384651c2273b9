"""Reading checkpoints: weights files and the model they describe, as timm's ``create_model`` and
smp's ``from_pretrained`` do next to their models.

A wsss checkpoint is ``{name}.safetensors`` (written by :mod:`wsss.train.checkpoint`): the
:class:`~wsss.models.PuzzleCAM` state dict, with string metadata ``format``
(:data:`FORMAT`), ``epoch``, ``val_loss``, ``model`` (the model's record,
:attr:`PuzzleCAM.model_cfg <wsss.models.PuzzleCAM>`, as JSON) and ``config`` (the resolved
training config, as JSON). :func:`load_model_from_checkpoint` rebuilds the model from its record.
Checkpoints written before the record held ``input_size``, ``mean`` and ``std`` get those from the
training config (the copy in the metadata, else ``config.yaml`` beside the weights).

Only safetensors and ``torch.save`` files that load with ``weights_only=True`` are read: a file
that needs unpickling is refused with one line (:func:`load_weights_only`), never executed.
"""

from __future__ import annotations

import json
import logging
from pickle import UnpicklingError  # the exception class only: nothing here unpickles
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load

from wsss.models.puzzlecam import MODEL_CFG_KEYS, PuzzleCAM

logger = logging.getLogger(__name__)

FORMAT = "wsss-puzzlecam-1"
SAFETENSORS_SUFFIX = ".safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or not a wsss Puzzle-CAM checkpoint."""


def not_weights_only_message(path: Path | str) -> str:
    """The one line refusing a file whose content would need unpickling."""
    return f"{path}: not a safetensors or weights-only checkpoint; it will not be unpickled"


def read_metadata(path: Path | str) -> dict[str, str]:
    """The string metadata of a safetensors checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - corrupt header etc.
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def read_weights(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict and metadata of a safetensors checkpoint (on the CPU)."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        sd = st_load(path.read_bytes())
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read tensors ({exc})") from None
    return sd, meta


def load_weights_only(path: Path | str) -> Any:
    """The content of a ``torch.save`` file, read with ``weights_only=True`` on the CPU.

    A file that would need unpickling (any object beyond tensors and plain containers) is refused
    with :func:`not_weights_only_message` instead of PyTorch's multi-line advice; nothing in it
    is executed. Other read failures give one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # a raw pickle of another protocol warns before it is refused
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except UnpicklingError:
        raise CheckpointError(not_weights_only_message(path)) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, empty file, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: cannot read ({exc.__class__.__name__}: {first})") from None


def read_state_file(path: Path | str) -> tuple[Any, dict[str, str]]:
    """``(content, metadata)`` of a weights file: a ``.safetensors`` state dict with its metadata,
    any other suffix a ``torch.save`` file read by :func:`load_weights_only` (no metadata)."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return read_weights(path)
    return load_weights_only(path), {}


def model_cfg_from_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A model record (:data:`~wsss.models.puzzlecam.MODEL_CFG_KEYS`) from a training config's
    ``model`` and ``data`` sections; for checkpoints written before the model kept its record."""
    m = dict(cfg.get("model", {}) or {})
    d = dict(cfg.get("data", {}) or {})
    return {
        "name": m.get("name", "seresnext50_32x4d"),
        "num_classes": int(m.get("num_classes", 19)),
        "in_chans": int(m.get("in_chans", 4)),
        "output_stride": m.get("output_stride"),
        "grid": int(m.get("puzzle_grid", 2)),
        "input_size": d.get("size"),
        "mean": d.get("mean"),
        "std": d.get("std"),
    }


def config_for(path: Path | str, meta: Mapping[str, str]) -> dict[str, Any]:
    """The config stored in the file's metadata (exactly what it was trained with), else ``config.yaml`` beside it.

    The metadata wins: ``config.yaml`` is rewritten by every (resumed) run in the folder, so an
    older ``best`` may no longer match it.
    """
    path = Path(path)
    if meta.get("config"):
        try:
            return json.loads(meta["config"])
        except ValueError as exc:
            raise CheckpointError(f"{path}: unreadable config in its metadata ({exc})") from None
    beside = path.parent / "config.yaml"
    if beside.is_file():
        from wsss.config import load_config

        return load_config(beside)
    raise CheckpointError(f"{path}: no config.yaml beside it and no config in its metadata")


def stored_model_cfg(path: Path | str, meta: Mapping[str, str], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The model record of a checkpoint: its ``model`` metadata, entries absent or empty there
    taken from the training config ``cfg`` (:func:`model_cfg_from_config`)."""
    stored: dict[str, Any] = {}
    if meta.get("model"):
        try:
            stored = json.loads(meta["model"])
        except ValueError as exc:
            raise CheckpointError(f"{Path(path)}: unreadable model record in its metadata ({exc})") from None
    fallback = model_cfg_from_config(cfg)
    return {k: stored[k] if stored.get(k) is not None else fallback[k] for k in MODEL_CFG_KEYS}


def load_model_from_checkpoint(
    path: Path | str, device: torch.device | str = "cpu"
) -> tuple[PuzzleCAM, dict[str, Any]]:
    """Rebuild the :class:`~wsss.models.PuzzleCAM` of a checkpoint, in eval mode on ``device``.

    Returns ``(model, cfg)``: ``model.model_cfg`` is the checkpoint's record (backbone, classes,
    channels, output stride, puzzle grid, input size, mean, std; see :func:`stored_model_cfg`)
    and ``cfg`` the resolved training config (the copy in its metadata, else ``config.yaml``
    beside the file).
    """
    from wsss.models import build_model

    path = Path(path)
    sd, meta = read_state_file(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a wsss Puzzle-CAM checkpoint (format {meta.get('format')!r})")
    cfg = config_for(path, meta)
    record = stored_model_cfg(path, meta, cfg)
    model = build_model(
        record["name"], num_classes=int(record["num_classes"]), in_chans=int(record["in_chans"]),
        pretrained_file=None, output_stride=record["output_stride"], grid=int(record["grid"]),
    )
    model.model_cfg.update({k: record[k] for k in ("input_size", "mean", "std")})
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {record['name']} ({str(exc).splitlines()[0]})") from None
    model.to(device).eval()
    return model, cfg
