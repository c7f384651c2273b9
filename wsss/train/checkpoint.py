"""Writing checkpoints: model weights in safetensors, resume state in a ``torch.save`` file, atomically.

Reading a checkpoint back into a model is :mod:`wsss.models.checkpoint`, next to the model; this
module only adds what training needs (saving, and the resume state of a ``last`` checkpoint).

Files in a run folder:

* ``{name}.safetensors`` (``name`` = ``last`` or ``best``): the :class:`~wsss.models.PuzzleCAM`
  state dict; its metadata holds ``format``, ``epoch``, ``val_loss``, the model's record
  (:attr:`~wsss.models.PuzzleCAM.model_cfg`: build options, input size, mean and std; ``model``,
  JSON) and the whole resolved config (``config``, JSON) so the file stands alone;
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
from safetensors.torch import save as st_save

from wsss.fileio import atomic_write_bytes
from wsss.models.checkpoint import FORMAT, CheckpointError, load_weights_only, model_cfg_from_config, read_weights
from wsss.train.ddp import unwrap

logger = logging.getLogger(__name__)


def selection_score(select: str, loss: float, metric: float | None, epoch: int, metric_name: str) -> float:
    """The score ``best`` minimises under ``train.select`` (``select``); lower is better.

    The trainers share it: the classifier's metric is its macro mAP (``metric_name="map"``), the watershed
    model's the cells' AP (``"ap"``). ``loss``: the validation loss; ``metric_name``: minus the metric, so the highest
    metric wins; ``last``: minus the finished epoch count, so every epoch improves and ``best`` is the newest
    model (no choice made on the validation fold). A metric that could not be computed (``None`` or NaN) scores
    ``+inf`` and never improves.
    """
    if select == "loss":
        return float(loss)
    if select == "last":
        return -float(epoch)
    if select == metric_name:
        value = float("nan") if metric is None else float(metric)
        return -value if value == value else float("inf")
    raise ValueError(f"train.select must be loss, {metric_name} or last, got {select!r}")


def model_record(model: torch.nn.Module, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The record saved as ``model`` metadata: the model's own ``model_cfg``, else one built from ``cfg``."""
    record = getattr(unwrap(model), "model_cfg", None)
    return dict(record) if isinstance(record, Mapping) else model_cfg_from_config(cfg)


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
        "model": json.dumps(dict(model_spec) if model_spec is not None else model_record(model, cfg)),
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
    return sd, load_weights_only(state_path), meta
