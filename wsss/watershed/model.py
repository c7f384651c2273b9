"""The watershed network: a timm ``features_only`` encoder, a small U-Net decoder and per-pixel heads.

Why timm ``features_only`` and not ``segmentation_models_pytorch``: timm is already a dependency and
gives every encoder by name (including the narrow ``resnet10t_w16``/``_w32`` variants of
:data:`wsss.models.VARIANTS`) with a 4-channel stem; the decoder needed here is a few
upsample-concat-conv blocks, so a second package (with its own pins and a hub client) buys nothing.

Heads, all at the input resolution (logits):

* ``semantic``: 3 channels, background / cell interior / wall between touching cells
  (:data:`wsss.watershed.targets.SEMANTIC_CLASSES`), each an independent sigmoid (BCE + Dice);
* ``energy``: ``levels`` channels, a softmax over quantised distance levels;
* ``direction`` (optional): 2 channels (dy, dx), unit vectors after :func:`unit_direction`;
* ``classes`` (optional): ``num_classes`` per-pixel class logits (sigmoid).

``channels`` selects the input stains (indices into RGBY; ``[0, 2, 3]`` drops the green protein
stain for a model that must not see it). Inputs of any size are padded symmetrically to a multiple
of the encoder stride and the outputs cropped back (:func:`pad_to_stride`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.models import VARIANTS, ModelError, resolve_name

logger = logging.getLogger(__name__)

HEADS: tuple[str, ...] = ("semantic", "energy", "direction", "classes")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _symmetric_index(n: int, extra: int, device: torch.device) -> torch.Tensor:
    """Indices ``0 .. n + extra - 1`` folded back into ``0 .. n - 1`` by mirroring (edge pixel repeated)."""
    i = torch.arange(n + extra, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def pad_to_stride(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``x`` (N x C x H x W) at the bottom and right, symmetrically, to a multiple of ``stride``.

    Symmetric = mirrored with the edge pixel repeated (numpy's ``mode="symmetric"``). Returns the
    padded tensor and the original ``(H, W)``.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph:
        x = x.index_select(-2, _symmetric_index(h, ph, x.device))
    if pw:
        x = x.index_select(-1, _symmetric_index(w, pw, x.device))
    return x, (h, w)


def unit_direction(raw: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise a 2-channel direction output to unit length per pixel."""
    return raw / raw.norm(dim=1, keepdim=True).clamp_min(eps)


class WatershedNet(nn.Module):
    """Encoder-decoder with the semantic, energy and optional direction/class heads (see module doc)."""

    def __init__(self, encoder: str = "resnet10t_w32", channels: Sequence[int] = (0, 1, 2, 3), levels: int = 16,
                 decoder_channels: Sequence[int] = (96, 64, 48, 32), direction: bool = True, num_classes: int = 0,
                 pretrained_file: str | None = None, stem_rule: str = "mean") -> None:
        super().__init__()
        import timm

        self.encoder_name = encoder
        self.channels = [int(c) for c in channels]
        if not self.channels or any(c not in (0, 1, 2, 3) for c in self.channels):
            raise ModelError(f"model.channels must be indices into RGBY (0-3), got {list(channels)}")
        self.levels = int(levels)
        self.num_classes = int(num_classes)
        timm_name, extra = VARIANTS.get(encoder, (resolve_name(encoder), {}))
        try:
            self.encoder = timm.create_model(timm_name, pretrained=False, features_only=True,
                                             in_chans=len(self.channels), **extra)
        except RuntimeError as exc:
            raise ModelError(f"encoder {encoder!r}: {str(exc).splitlines()[0]}") from None
        if pretrained_file:
            from wsss.models.stem import load_pretrained_backbone

            load_pretrained_backbone(self.encoder, pretrained_file, rule=stem_rule)
        enc_ch = list(self.encoder.feature_info.channels())
        reductions = list(self.encoder.feature_info.reduction())
        self.stride = int(reductions[-1])
        self.out_reduction = int(reductions[0])
        dec = list(decoder_channels)
        if len(dec) != len(enc_ch) - 1:
            raise ModelError(f"model.decoder_channels needs {len(enc_ch) - 1} values for {encoder}, got {dec}")
        blocks = []
        cin = enc_ch[-1]
        for skip, cout in zip(reversed(enc_ch[:-1]), dec):
            blocks.append(_block(cin + skip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.heads = nn.ModuleDict({"semantic": nn.Conv2d(cin, 3, 1), "energy": nn.Conv2d(cin, self.levels, 1)})
        if direction:
            self.heads["direction"] = nn.Conv2d(cin, 2, 1)
        if self.num_classes:
            self.heads["classes"] = nn.Conv2d(cin, self.num_classes, 1)

    @property
    def head_names(self) -> list[str]:
        """The heads this network has, in :data:`HEADS` order."""
        return [h for h in HEADS if h in self.heads]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: N x 4 x H x W normalised RGBY (the model picks its ``channels``); returns head -> logits at H x W."""
        if x.shape[1] != len(self.channels):
            x = x[:, self.channels]
        x, (h, w) = pad_to_stride(x, self.stride)
        feats = self.encoder(x)
        y = feats[-1]
        for block, skip in zip(self.decoder, reversed(feats[:-1])):
            y = F.interpolate(y, size=skip.shape[-2:], mode="nearest")
            y = block(torch.cat([y, skip], dim=1))
        out = {}
        for name, head in self.heads.items():
            z = head(y)
            if self.out_reduction > 1:
                z = F.interpolate(z, scale_factor=self.out_reduction, mode="bilinear", align_corners=False)
            out[name] = z[..., :h, :w]
        return out


def model_kwargs(m: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`WatershedNet` arguments from a config's ``model`` section."""
    return {
        "encoder": str(m["encoder"]),
        "channels": [int(c) for c in m.get("channels", (0, 1, 2, 3))],
        "levels": int(m.get("levels", 16)),
        "decoder_channels": [int(c) for c in m.get("decoder_channels", (96, 64, 48, 32))],
        "direction": bool(m.get("direction", True)),
        "num_classes": int(m.get("num_classes", 0) or 0),
    }


def build_watershed_model(m: Mapping[str, Any]) -> WatershedNet:
    """Build the network described by a config's ``model`` section (random init unless ``pretrained_file``)."""
    net = WatershedNet(**model_kwargs(m), pretrained_file=m.get("pretrained_file"), stem_rule=m.get("stem_rule", "mean"))
    logger.info("built watershed net %s (heads %s, channels %s): %d parameters", net.encoder_name,
                ",".join(net.head_names), net.channels, sum(p.numel() for p in net.parameters()))
    return net
