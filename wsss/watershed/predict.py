"""Running a trained watershed model: checkpoint loading, probabilities (with flip TTA), cells.

:func:`load_watershed` rebuilds the network of a ``wsss-seg-train`` checkpoint (its metadata holds
the resolved config); :func:`predict_probs` gives per-pixel probabilities of one image, averaged
over the horizontal/vertical flips when ``tta`` (the direction field's flipped component changes
sign); :func:`segment_image` adds the post-processing of :mod:`wsss.watershed.postprocess`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.data.dataset import normalize
from wsss.data.io import resize_rgby
from wsss.models.checkpoint import CheckpointError, read_weights
from wsss.watershed.defaults import FORMAT
from wsss.watershed.model import WatershedNet, model_kwargs
from wsss.watershed.postprocess import PostParams, postprocess

logger = logging.getLogger(__name__)

#: flips of the TTA: (dims flipped, sign of (dy, dx) afterwards)
FLIPS: tuple[tuple[tuple[int, ...], tuple[float, float]], ...] = (
    ((), (1.0, 1.0)), ((-1,), (1.0, -1.0)), ((-2,), (-1.0, 1.0)), ((-2, -1), (-1.0, -1.0)),
)


def load_watershed(path: Path | str, device: torch.device | str = "cpu") -> tuple[WatershedNet, dict[str, Any]]:
    """The network of a watershed checkpoint in eval mode on ``device``, and its resolved config."""
    path = Path(path)
    sd, meta = read_weights(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a wsss watershed checkpoint (format {meta.get('format')!r})")
    try:
        cfg = json.loads(meta["config"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: no readable config in its metadata ({exc})") from None
    net = WatershedNet(**model_kwargs(cfg["model"]))
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the recorded model ({str(exc).splitlines()[0]})") from None
    return net.to(device).eval(), cfg


def probabilities(out: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Head logits to probabilities: sigmoid semantic and classes, softmax energy, unit direction."""
    probs = {"semantic": torch.sigmoid(out["semantic"].float()), "energy": torch.softmax(out["energy"].float(), dim=1)}
    if "direction" in out:
        d = out["direction"].float()
        probs["direction"] = d / d.norm(dim=1, keepdim=True).clamp_min(1e-6)
    if "classes" in out:
        probs["classes"] = torch.sigmoid(out["classes"].float())
    return probs


@torch.no_grad()
def predict_probs(net: WatershedNet, images: torch.Tensor, tta: bool = False) -> dict[str, torch.Tensor]:
    """Probabilities of a normalised batch (N x 4 x H x W), averaged over the 4 flips when ``tta``."""
    flips = FLIPS if tta else FLIPS[:1]
    acc: dict[str, torch.Tensor] = {}
    for dims, sign in flips:
        x = images.flip(dims) if dims else images
        probs = probabilities(net(x))
        for key, value in probs.items():
            value = value.flip(dims) if dims else value
            if key == "direction":
                value = value * torch.tensor(sign, dtype=value.dtype, device=value.device).view(1, 2, 1, 1)
            acc[key] = acc[key] + value if key in acc else value
    return {k: v / len(flips) for k, v in acc.items()}


def image_tensor(rgby: np.ndarray, cfg: Mapping[str, Any], size: int | None) -> torch.Tensor:
    """A uint8 RGBY image at the working size as a normalised 1 x 4 x H x W tensor."""
    if size is not None and rgby.shape[:2] != (size, size):
        rgby = resize_rgby(rgby, int(size))
    return normalize(np.ascontiguousarray(rgby), cfg["data"]["mean"], cfg["data"]["std"]).unsqueeze(0)


def post_params(cfg: Mapping[str, Any], overrides: Mapping[str, float] | None = None) -> PostParams:
    """The post-processing parameters of a config's ``post`` section (``tta`` left out), with overrides."""
    post = {k: v for k, v in dict(cfg.get("post") or {}).items() if k != "tta"}
    return PostParams().with_overrides(**post, **dict(overrides or {}))


def segment_image(net: WatershedNet, cfg: Mapping[str, Any], rgby: np.ndarray, size: int | None = 512,
                  tta: bool = True, markers: np.ndarray | None = None, device: torch.device | str = "cpu",
                  params: PostParams | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cells (``uint16`` at the working size) and the probabilities (numpy, C x H x W) of one RGBY image."""
    x = image_tensor(rgby, cfg, size).to(device)
    probs = {k: v[0].cpu().numpy() for k, v in predict_probs(net, x, tta).items()}
    cells = postprocess(probs["semantic"], probs["energy"], params or post_params(cfg), markers)
    return cells, probs
