"""Puzzle-CAM models: :func:`build_model` turns a backbone name into a 4-channel :class:`PuzzleCAM`.

Any timm model that yields a spatial feature map can be used by name. The writeup's backbones are
listed in :data:`WRITEUP_BACKBONES`; :data:`ALIASES` maps names that differ in timm 1.0 to the
current ones (``gluon_seresnext101_32x4d`` is ``seresnext101_32x4d`` with the Gluon weights tag in
timm 1.0; ``regnety_64`` is the writeup's spelling of ``regnety_064``). Non-timm backbones can be
added with :func:`register_backbone`. Nothing is ever downloaded: pretrained weights come only
from a local file, adapted to 4 channels by :mod:`wsss.models.stem`.

:func:`load_model_from_checkpoint` (:mod:`wsss.models.checkpoint`) rebuilds a trained model, with
its record :attr:`PuzzleCAM.model_cfg`, from a checkpoint written by :mod:`wsss.train.checkpoint`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from torch import nn

from wsss.models.checkpoint import CheckpointError, load_model_from_checkpoint
from wsss.models.puzzle import PuzzleError, merge, tile
from wsss.models.puzzlecam import MODEL_CFG_KEYS, PuzzleCAM, PuzzleOutput
from wsss.models.stem import PretrainedError, adapt_first_conv_weight, load_pretrained_backbone

logger = logging.getLogger(__name__)

__all__ = [
    "ALIASES",
    "CheckpointError",
    "MODEL_CFG_KEYS",
    "VARIANTS",
    "WRITEUP_BACKBONES",
    "ModelError",
    "PretrainedError",
    "PuzzleCAM",
    "PuzzleError",
    "PuzzleOutput",
    "adapt_first_conv_weight",
    "build_model",
    "load_model_from_checkpoint",
    "merge",
    "register_backbone",
    "resolve_name",
    "tile",
]

WRITEUP_BACKBONES: tuple[str, ...] = (
    "seresnext50_32x4d",
    "gluon_seresnext101_32x4d",
    "cspresnext50",
    "regnety_064",
)
ALIASES: dict[str, str] = {
    "gluon_seresnext101_32x4d": "seresnext101_32x4d",
    "regnety_64": "regnety_064",
}
# Narrow variants of timm architectures for CPU demos and tests: name -> (timm name, extra
# create_model arguments). resnet10t_w16 is resnet10t at a quarter of its width (stages of 16-128
# channels, an 8-channel deep stem, 0.3 M parameters): a Puzzle-CAM step at 256 px, output stride
# 16, costs about a tenth of resnet10t's on a 2-core AVX2 CPU (scripts/bench_train.py).
VARIANTS: dict[str, tuple[str, dict]] = {
    "resnet10t_w16": ("resnet10t", {"channels": (16, 32, 64, 128), "stem_width": 8}),
    "resnet10t_w32": ("resnet10t", {"channels": (32, 64, 128, 256), "stem_width": 16}),
}

# name -> fn(in_chans, output_stride) -> (backbone, num_features, stride)
BackboneFactory = Callable[[int, int | None], tuple[nn.Module, int, int]]
_REGISTRY: dict[str, BackboneFactory] = {}


class ModelError(ValueError):
    """A backbone name or option that cannot be built."""


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering a non-timm backbone factory under ``name``."""

    def deco(fn: BackboneFactory) -> BackboneFactory:
        _REGISTRY[name] = fn
        return fn

    return deco


def resolve_name(name: str) -> str:
    """Map a writeup/legacy backbone name to its timm 1.0 name (unknown names pass through)."""
    return ALIASES.get(name, name)


def _timm_backbone(name: str, in_chans: int, output_stride: int | None) -> tuple[nn.Module, int, int]:
    import timm

    timm_name, extra = VARIANTS.get(name, (resolve_name(name), {}))
    kwargs: dict = dict(pretrained=False, in_chans=in_chans, num_classes=0, global_pool="", **extra)
    if output_stride is not None and output_stride != 32:
        kwargs["output_stride"] = output_stride
    try:
        backbone = timm.create_model(timm_name, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" not in str(exc):
            raise
        close = timm.list_models(f"*{timm_name.split('.')[0].split('_')[0]}*")[:8]
        raise ModelError(f"unknown backbone {name!r} (timm {timm.__version__}); similar: {', '.join(close) or 'none'}") from None
    except TypeError as exc:
        raise ModelError(f"backbone {name!r} does not accept output_stride={output_stride} ({exc})") from None
    reduction = 32
    info = getattr(backbone, "feature_info", None)
    if isinstance(info, list) and info and isinstance(info[-1], dict):
        reduction = int(info[-1].get("reduction", 32))
    stride = min(reduction, output_stride) if output_stride else reduction
    return backbone, int(backbone.num_features), stride


def build_model(
    name: str,
    num_classes: int = 19,
    in_chans: int = 4,
    pretrained_file: str | Path | None = None,
    output_stride: int | None = None,
    grid: int = 2,
    stem_rule: str = "mean",
) -> PuzzleCAM:
    """Build a :class:`PuzzleCAM` over backbone ``name`` with an ``in_chans``-channel stem.

    Args:
        name: a registered backbone, a timm model name, an alias in :data:`ALIASES` or a
            narrow variant in :data:`VARIANTS`.
        num_classes: CAMs per image (19 for HPA).
        in_chans: input channels (4 for RGBY).
        pretrained_file: local timm-layout state dict (``.safetensors`` / ``.pth``) with 3-channel
            (or ``in_chans``-channel) weights; ``None`` = random init. Never downloads.
        output_stride: 16 for finer CAMs (dilated last stage) where the backbone allows; ``None``/32 = default.
        grid: tiles per side in the puzzle branch.
        stem_rule: how the extra input channels are initialised from RGB filters (:mod:`wsss.models.stem`).

    The model's record (:attr:`PuzzleCAM.model_cfg`) holds these build options (not the
    pretrained file or stem rule: the weights are in the model); its input size, mean and std
    stay ``None`` until set (:meth:`PuzzleCAM.set_input_cfg`).
    """
    if output_stride not in (None, 8, 16, 32):
        raise ModelError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    if name in _REGISTRY:
        backbone, num_features, stride = _REGISTRY[name](in_chans, output_stride)
    else:
        backbone, num_features, stride = _timm_backbone(name, in_chans, output_stride)
    if pretrained_file:
        load_pretrained_backbone(backbone, pretrained_file, rule=stem_rule)
    model = PuzzleCAM(backbone, num_features, num_classes=num_classes, stride=stride, grid=grid, name=name,
                      model_cfg={"in_chans": in_chans, "output_stride": output_stride})
    logger.info("built %s: %d features, stride %d, %d parameters", name, num_features, stride,
                sum(p.numel() for p in model.parameters()))
    return model
