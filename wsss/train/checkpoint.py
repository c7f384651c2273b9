"""Checkpoints: model weights in safetensors, resume state in a ``torch.save`` file, written atomically.

Files in a run folder:

* ``{name}.safetensors`` (``name`` = ``last`` or ``best``): the :class:`~wsss.models.PuzzleCAM`
  state dict; its metadata holds ``format``, ``epoch``, ``val_loss``, the model's build options
  (``model``, JSON) and the whole resolved config (``config``, JSON) so the file stands alone;
* ``config.yaml``: the resolved config, written at the start of the run;
* ``{name}.state-e{epoch:04d}.pt`` (``last`` only): optimizer, scheduler, GradScaler, sampler,
  epoch counters, best score, history and RNG states, read back with ``weights_only=True``.

Atomicity: every file is written to a temporary sibling and renamed over its final name
(``os.replace``). The weights file is the commit point: it names its resume-state file in its
metadata (``state_file``); that state file has a new, epoch-specific name, is written *before*
the weights, and older state files are deleted only *after* the new weights are in place. A kill
at any moment therefore leaves ``last.safetensors`` paired with a complete state file, either the
old pair or the new one.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from wsss.fileio import atomic_write_bytes
from wsss.train.ddp import unwrap

logger = logging.getLogger(__name__)

FORMAT = "wsss-puzzlecam-1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or not a wsss Puzzle-CAM checkpoint."""


def _model_spec(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Build options of :func:`wsss.models.build_model` taken from the config's ``model`` section."""
    m = dict(cfg.get("model", {}))
    return {
        "name": m.get("name", "seresnext50_32x4d"),
        "num_classes": int(m.get("num_classes", 19)),
        "in_chans": int(m.get("in_chans", 4)),
        "output_stride": m.get("output_stride"),
        "grid": int(m.get("puzzle_grid", 2)),
    }


def save_weights(path: Path | str, model: torch.nn.Module, metadata: Mapping[str, str]) -> Path:
    """Write ``model``'s state dict to ``path`` as safetensors with string ``metadata``, atomically."""
    path = Path(path)
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}
    atomic_write_bytes(path, st_save(sd, metadata={k: str(v) for k, v in metadata.items()}))
    return path


def save_checkpoint(
    run_dir: Path | str,
    name: str,
    model: torch.nn.Module,
    cfg: Mapping[str, Any],
    epoch: int,
    val_loss: float | None = None,
    state: Mapping[str, Any] | None = None,
    format_name: str = FORMAT,
    model_spec: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``{run_dir}/{name}.safetensors`` (and its resume ``state`` when given); see the module doc.

    ``epoch`` is the number of finished epochs. ``format_name`` and ``model_spec`` (the build options
    kept in the metadata) default to the Puzzle-CAM ones; other models (the watershed segmenter)
    pass their own.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": format_name,
        "epoch": str(int(epoch)),
        "val_loss": "" if val_loss is None else repr(float(val_loss)),
        "model": json.dumps(dict(model_spec) if model_spec is not None else _model_spec(cfg)),
        "config": json.dumps(cfg, default=str),
    }
    if state is not None:
        state_name = f"{name}.state-e{int(epoch):04d}.pt"
        buf = io.BytesIO()
        torch.save(dict(state), buf)
        atomic_write_bytes(run_dir / state_name, buf.getvalue())
        meta["state_file"] = state_name
    path = save_weights(run_dir / f"{name}.safetensors", model, meta)
    if state is not None:
        for old in run_dir.glob(f"{name}.state-e*.pt"):
            if old.name != meta["state_file"]:
                old.unlink(missing_ok=True)
    return path


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


def load_resume_state(weights_path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str]]:
    """Weights, resume state and metadata of a ``last`` checkpoint (the state file its metadata names)."""
    weights_path = Path(weights_path)
    sd, meta = read_weights(weights_path)
    state_name = meta.get("state_file")
    if not state_name:
        raise CheckpointError(f"{weights_path}: no resume state recorded (use the 'last' checkpoint)")
    state_path = weights_path.parent / state_name
    if not state_path.is_file():
        raise CheckpointError(f"{weights_path}: its resume state {state_path.name} is missing")
    try:
        state = torch.load(str(state_path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{state_path}: cannot read resume state ({exc.__class__.__name__}: {exc})") from None
    return sd, state, meta


def _config_for(path: Path, meta: Mapping[str, str]) -> dict[str, Any]:
    """The config stored in the file's metadata (exactly what it was trained with), else ``config.yaml`` beside it.

    The metadata wins: ``config.yaml`` is rewritten by every (resumed) run in the folder, so an
    older ``best`` may no longer match it.
    """
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


def load_model_from_checkpoint(
    path: Path | str, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the :class:`~wsss.models.PuzzleCAM` of a checkpoint, in eval mode on ``device``.

    Returns ``(model, cfg)`` where ``cfg`` is the resolved training config (the copy in its
    metadata, else ``config.yaml`` beside the file); ``cfg["data"]["size"]``, ``["mean"]``,
    ``["std"]`` and ``cfg["model"]["name"]`` describe the expected input.
    """
    from wsss.models import build_model

    path = Path(path)
    sd, meta = read_weights(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a wsss Puzzle-CAM checkpoint (format {meta.get('format')!r})")
    cfg = _config_for(path, meta)
    spec = json.loads(meta["model"]) if meta.get("model") else _model_spec(cfg)
    model = build_model(
        spec["name"], num_classes=spec["num_classes"], in_chans=spec["in_chans"],
        pretrained_file=None, output_stride=spec.get("output_stride"), grid=spec.get("grid", 2),
    )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {spec['name']} ({str(exc).splitlines()[0]})") from None
    model.to(device).eval()
    return model, cfg
