"""Four-channel (RGBY) stems from three-channel (RGB) pretrained weights.

Rule (``rule="mean"``, the default): the pretrained filters of the first convolution are kept
unchanged for the red, green and blue inputs, and the filter for the fourth (yellow, ER) input is
the mean of the three RGB filters. The RGB part of the network therefore starts exactly as
pretrained, and the yellow stain, which like red marks cell structure, enters with a filter of the
same scale as an average colour channel. No rescaling is applied.

Other rules: ``"red"`` copies the red filter (yellow and red stains look alike: both outline the
cytoplasm), ``"zero"`` starts the yellow filter at zero (the pretrained function is kept exactly
at step 0), ``"timm"`` is timm's own rule (RGB filters repeated cyclically, all scaled by 3/4).

Weights are only ever read from a local file (``.safetensors``, or a ``torch.save`` file read
with ``weights_only=True``); nothing is downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from wsss.models.checkpoint import CheckpointError, read_state_file

logger = logging.getLogger(__name__)

STEM_RULES: tuple[str, ...] = ("mean", "red", "zero", "timm")
_NESTED_KEYS: tuple[str, ...] = ("state_dict", "model", "model_state_dict", "module")


class PretrainedError(RuntimeError):
    """A pretrained weights file that is missing, unreadable or does not fit the backbone."""


def adapt_first_conv_weight(weight: torch.Tensor, in_chans: int = 4, rule: str = "mean") -> torch.Tensor:
    """Turn a ``O x 3 x k x k`` first-conv weight into ``O x in_chans x k x k`` (see the module doc).

    ``in_chans`` equal to the weight's channel count returns the weight unchanged; fewer channels
    keep the first ``in_chans`` filters (``in_chans == 1`` sums them, as for a grey image).
    """
    if weight.ndim != 4:
        raise PretrainedError(f"first-conv weight must be 4-D (O x I x k x k), got shape {tuple(weight.shape)}")
    if rule not in STEM_RULES:
        raise PretrainedError(f"unknown stem rule {rule!r}; choose one of {', '.join(STEM_RULES)}")
    src = weight.shape[1]
    if in_chans == src:
        return weight
    dtype = weight.dtype
    w = weight.float()
    if in_chans == 1:
        return w.sum(dim=1, keepdim=True).to(dtype)
    if in_chans < src:
        return w[:, :in_chans].clone().to(dtype)
    if rule == "timm":
        repeat = -(-in_chans // src)
        return (w.repeat(1, repeat, 1, 1)[:, :in_chans] * (src / in_chans)).to(dtype)
    extra = in_chans - src
    if rule == "mean":
        new = w.mean(dim=1, keepdim=True).expand(-1, extra, -1, -1)
    elif rule == "red":
        new = w[:, :1].expand(-1, extra, -1, -1)
    else:  # zero
        new = torch.zeros_like(w[:, :1]).expand(-1, extra, -1, -1)
    return torch.cat([w, new], dim=1).to(dtype)


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``,
    :func:`wsss.models.checkpoint.read_state_file`).

    A dict nested under ``state_dict``/``model``/``module`` is unwrapped and a ``module.`` prefix
    (DistributedDataParallel) is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"{path}: pretrained weights file not found")
    try:
        sd: object = read_state_file(path)[0]
    except CheckpointError as exc:  # one line; a file needing unpickling is refused, not run
        raise PretrainedError(str(exc)) from None
    for _ in range(3):
        if isinstance(sd, Mapping):
            nested = next((k for k in _NESTED_KEYS if k in sd and isinstance(sd[k], Mapping)), None)
            if nested is None:
                break
            sd = sd[nested]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PretrainedError(f"{path}: not a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def first_conv_name(backbone: nn.Module) -> str:
    """Name of the backbone's first convolution (timm's ``pretrained_cfg['first_conv']`` or the first Conv2d)."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    name = cfg.get("first_conv")
    modules = dict(backbone.named_modules())
    if isinstance(name, str) and isinstance(modules.get(name), nn.Conv2d):
        return name
    for mod_name, mod in modules.items():
        if isinstance(mod, nn.Conv2d):
            return mod_name
    raise PretrainedError(f"{type(backbone).__name__}: no Conv2d found to adapt")


def load_pretrained_backbone(
    backbone: nn.Module, path: Path | str, rule: str = "mean"
) -> dict[str, list[str]]:
    """Load 3-channel (or matching) pretrained weights from ``path`` into ``backbone`` in place.

    The first convolution is adapted with :func:`adapt_first_conv_weight`; classifier weights in
    the file (timm's ``pretrained_cfg['classifier']``) are ignored because the backbone has no
    head. Any other missing or unexpected key raises :class:`PretrainedError`: the file must be a
    timm-layout state dict of the same architecture. Returns ``{"adapted": [...], "ignored": [...]}``.
    """
    sd = read_state_dict(path)
    conv = first_conv_name(backbone)
    target = backbone.state_dict()
    key = f"{conv}.weight"
    adapted: list[str] = []
    if key in sd and key in target and sd[key].shape != target[key].shape:
        sd[key] = adapt_first_conv_weight(sd[key], target[key].shape[1], rule)
        adapted.append(key)
    head = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or ""
    heads = [head] if isinstance(head, str) else list(head)
    ignored = [k for k in sd if k not in target and any(h and k.startswith(h + ".") for h in heads)]
    for k in ignored:
        del sd[k]
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    bad_shape = [k for k in sd if k in target and sd[k].shape != target[k].shape]
    if missing or unexpected or bad_shape:
        raise PretrainedError(
            f"{path}: does not fit {type(backbone).__name__} "
            f"(missing {len(missing)} keys e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]}, "
            f"shape mismatch {bad_shape[:2]})"
        )
    backbone.load_state_dict(sd, strict=True)
    logger.info("loaded %s (adapted %s with rule %r, ignored %d head keys)", path, adapted, rule, len(ignored))
    return {"adapted": adapted, "ignored": ignored}
