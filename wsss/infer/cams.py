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

TTA (:func:`forward_cams` with ``tta`` = D4 mode names of :mod:`wsss.infer.tta`, e.g. the flips
``("hflip", "vflip")`` or all 7 of ``d4``): the transformed copies go through the network in the
same batch as the originals (views of another shape, a transpose of a non-square input, in a
batch of their own); each copy's CAM is brought back by the inverse transform
(:func:`wsss.infer.tta.invert_tta`). Multi-scale (``scales``, e.g. ``(0.5, 1, 1.5, 2)``): the
batch is also resized (bilinear) to each scale's side, rounded to a multiple of the model's
stride, and each scale's CAMs are resized back (bilinear) to the base CAM size (the CAM of the
unscaled input). The ReLU'd CAMs of every view and scale are averaged *before* normalisation;
the sigmoid probabilities are averaged over all views and scales.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsss.infer.tta import apply_tta, check_tta, invert_tta, parse_scales, scaled_side
from wsss.precision import AmpSettings, autocast, resolve_precision

logger = logging.getLogger(__name__)

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


def forward_views(model: nn.Module, x: torch.Tensor, modes: Sequence[str], precision: str = "auto"
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(logits, cams)`` of ``x`` and of each TTA view of it, the CAMs brought back by the inverse transform.

    Views of the same shape go through the network in one batch (all of them for a square input).
    The first entry is the untransformed input; logits and CAMs are float32.
    """
    names = ("identity", *check_tta(modes))
    views = [apply_tta(x, m) for m in names]
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(names)
    n = x.shape[0]
    for shape in dict.fromkeys(tuple(v.shape) for v in views):
        members = [k for k, v in enumerate(views) if tuple(v.shape) == shape]
        batch = torch.cat([views[k] for k in members], dim=0) if len(members) > 1 else views[members[0]]
        with autocast_context(batch.device, precision):
            logits, cams = model(batch)
        for j, k in enumerate(members):
            out[k] = (logits[j * n:(j + 1) * n].float(), invert_tta(cams[j * n:(j + 1) * n].float(), names[k]))
    return [o for o in out if o is not None]


def _scaled(x: torch.Tensor, scale: float, multiple: int) -> torch.Tensor:
    """``x`` resized (bilinear) by ``scale``, both sides rounded to a multiple of ``multiple``."""
    if scale == 1.0:
        return x
    size = (scaled_side(x.shape[-2], scale, multiple), scaled_side(x.shape[-1], scale, multiple))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@torch.inference_mode()
def forward_cams(model: nn.Module, x: torch.Tensor, tta: Sequence[str] = (), precision: str = "auto",
                 scales: Sequence[float] = (1.0,), cam_hw: tuple[int, int] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward passes over TTA views and scales -> ``(probs B x C, cams B x C x h x w)``.

    ``probs`` are sigmoid probabilities averaged over every view and scale; ``cams`` are the
    *normalised* CAMs (:func:`normalize_cams`) of the ReLU'd raw CAMs averaged over views and
    scales at the base CAM size ``cam_hw`` (default: the CAM size of the unscaled input, which
    costs one extra pass when 1 is not among ``scales``). See the module doc.
    """
    modes = check_tta(tta)
    factors = parse_scales(list(scales))
    multiple = int(getattr(model, "stride", 1) or 1)
    if cam_hw is None and 1.0 not in factors:
        cam_hw = tuple(forward_views(model, x[:1], (), precision)[0][1].shape[-2:])
    prob_sum: torch.Tensor | None = None
    cam_sum: torch.Tensor | None = None
    count = 0
    for scale in sorted(factors, key=lambda f: f != 1.0):  # the unscaled pass first: it sets the base size
        for logits, cams in forward_views(model, _scaled(x, scale, multiple), modes, precision):
            if cam_hw is None:
                cam_hw = (int(cams.shape[-2]), int(cams.shape[-1]))
            cams = resize_cams(cams.clamp_min(0.0), cam_hw)
            probs = torch.sigmoid(logits)
            prob_sum = probs if prob_sum is None else prob_sum + probs
            cam_sum = cams if cam_sum is None else cam_sum + cams
            count += 1
    assert prob_sum is not None and cam_sum is not None
    return prob_sum / count, normalize_cams(cam_sum / count)


@torch.inference_mode()
def forward_probs(model: nn.Module, x: torch.Tensor, tta: Sequence[str] = (), precision: str = "auto") -> torch.Tensor:
    """Sigmoid probabilities ``B x C`` of a batch (e.g. stage-2 crops), averaged over the TTA views."""
    probs = [torch.sigmoid(logits) for logits, _ in forward_views(model, x, tta, precision)]
    return torch.stack(probs, dim=0).mean(dim=0)
