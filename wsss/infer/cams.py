"""Class activation maps for inference: one forward pass, flip TTA, normalisation and resizing.

Normalisation (:func:`normalize_cams`), per image and per class, at the CAM's own resolution:

* ``A = ReLU(cam)``;
* a class map holding any non-finite value (overflow in half precision, a broken checkpoint) is
  set to zeros: it cannot be trusted and must not spread NaN into the cell scores;
* ``A / max(A)`` when ``max(A) > eps`` (``eps = 1e-6``), zeros otherwise (a class with no positive
  evidence anywhere has an all-zero map, not a map of noise divided by a tiny number).

The result lies in ``[0, 1]`` with the image's peak at exactly 1 for every class that fires.
:func:`resize_cams` brings normalised maps to a label map's size by bilinear interpolation
(``align_corners=False``, the convention of :func:`torch.nn.functional.interpolate`); a convex
combination of values in ``[0, 1]`` stays in ``[0, 1]``. The stage-1 scorer does not need the
resized maps at all (see :mod:`wsss.infer.scoring`); they serve the pictures and the tests.

Flip TTA (:func:`forward_cams` with ``tta=("hflip", "vflip")``): the flipped copies go through the
network in the same batch as the originals; each copy's CAM is flipped back, the ReLU'd CAMs are
averaged over views *before* normalisation and the sigmoid probabilities are averaged over views.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsss.precision import AmpSettings, autocast, resolve_precision

logger = logging.getLogger(__name__)

TTA_MODES: tuple[str, ...] = ("hflip", "vflip", "hvflip")
_FLIP_DIMS: dict[str, tuple[int, ...]] = {"hflip": (-1,), "vflip": (-2,), "hvflip": (-2, -1)}


def check_tta(tta: Sequence[str]) -> tuple[str, ...]:
    """Validate TTA mode names (subset of :data:`TTA_MODES`, no repeats); return them as a tuple."""
    modes = tuple(str(m) for m in tta)
    for mode in modes:
        if mode not in _FLIP_DIMS:
            raise ValueError(f"unknown TTA mode {mode!r}; choose from {', '.join(TTA_MODES)}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"TTA modes repeated: {modes}")
    return modes


def normalize_cams(cams: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """ReLU then divide every ``... x H x W`` map by its own max; guarded (see the module doc).

    Works on ``B x C x H x W`` or ``C x H x W``; returns float32 in ``[0, 1]``.
    """
    cams = cams.float()
    finite = torch.isfinite(cams).flatten(-2).all(dim=-1)  # ... x C
    cams = torch.nan_to_num(cams, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    peak = cams.flatten(-2).amax(dim=-1)
    ok = finite & (peak > eps)
    scale = torch.where(ok, 1.0 / torch.where(ok, peak, torch.ones_like(peak)), torch.zeros_like(peak))
    return cams * scale[..., None, None]


def resize_cams(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``) of ``B x C x h x w`` or ``C x h x w`` maps to ``size = (H, W)``."""
    if tuple(cams.shape[-2:]) == tuple(size):
        return cams
    squeeze = cams.ndim == 3
    x = cams[None] if squeeze else cams
    out = F.interpolate(x.float(), size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)
    return out[0] if squeeze else out


def flip(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Flip the last two dims of ``x`` as ``mode`` says (a flip is its own inverse)."""
    return torch.flip(x, dims=_FLIP_DIMS[mode])


@functools.lru_cache(maxsize=None)
def _amp(precision: str, device_type: str) -> AmpSettings:
    return resolve_precision(precision, device_type)  # cached: resolve (and warn) once, not per batch


def amp_settings(precision: str, device: torch.device | str) -> AmpSettings:
    """The resolved :class:`~wsss.precision.AmpSettings` of ``precision`` on ``device`` (cached per device type)."""
    return _amp(str(precision), torch.device(device).type)


def amp_name(precision: str, device: torch.device | str) -> str:
    """The autocast dtype ``precision`` means on ``device``: ``fp32``, ``fp16`` or ``bf16``."""
    return amp_settings(precision, device).name


def autocast_context(device: torch.device, precision: str):
    """Autocast for ``precision`` on ``device`` as in training (:mod:`wsss.precision`; see the module doc).

    An unknown precision raises :class:`~wsss.precision.PrecisionError` (a ``ValueError``).
    """
    return autocast(amp_settings(precision, device))


@torch.inference_mode()
def forward_cams(model: nn.Module, x: torch.Tensor, tta: Sequence[str] = (), precision: str = "auto"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batched forward pass (all TTA views together) -> ``(probs B x C, cams B x C x h x w)``.

    ``probs`` are sigmoid probabilities averaged over the views; ``cams`` are the *normalised*
    CAMs (:func:`normalize_cams`) of the view-averaged ReLU'd raw CAMs, at the CAM resolution.
    """
    modes = check_tta(tta)
    views = [x] + [flip(x, m) for m in modes]
    batch = torch.cat(views, dim=0) if modes else x
    with autocast_context(batch.device, precision):
        logits, cams = model(batch)
    logits, cams = logits.float(), cams.float()
    n = x.shape[0]
    probs = torch.sigmoid(logits).reshape(len(views), n, -1).mean(dim=0)
    cams = cams.clamp_min(0.0)
    if modes:
        parts = [cams[:n]] + [flip(cams[(k + 1) * n:(k + 2) * n], m) for k, m in enumerate(modes)]
        cams = torch.stack(parts, dim=0).mean(dim=0)
    return probs, normalize_cams(cams)
