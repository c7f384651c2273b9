"""The Puzzle-CAM classifier: backbone -> 1x1-conv classifier (one map per class) -> global mean.

Because the classifier is a 1x1 convolution applied *before* global average pooling, the image
logits are exactly the spatial mean of the class activation maps (CAMs): ``logits ==
cams.mean((2, 3))``. The CAMs returned are raw (pre-ReLU) scores at the backbone's output
resolution (``H / stride``).

:meth:`PuzzleCAM.forward_puzzle` runs the Puzzle-CAM training pass: the full image, and its
``grid x grid`` tiles as one batch, through the same network; the tile CAMs are merged back into
one map per image (see :mod:`wsss.models.puzzle`). Calling ``model(x, puzzle=True)`` does the same
through ``forward`` so that a DistributedDataParallel wrapper sees both passes in one call.

Like timm's ``pretrained_cfg``, every model carries its own record, :attr:`PuzzleCAM.model_cfg`
(keys :data:`MODEL_CFG_KEYS`): the build options of :func:`wsss.models.build_model` and the input
it expects (square side, per-channel mean and std). Training fills the input part from its
resolved data config (:meth:`PuzzleCAM.set_input_cfg`); checkpoints store the record and
:func:`wsss.models.checkpoint.load_model_from_checkpoint` restores it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from wsss.models.puzzle import PuzzleError, merge, tile

logger = logging.getLogger(__name__)

#: Keys of :attr:`PuzzleCAM.model_cfg`: build options, then the expected input (``None`` = unknown).
MODEL_CFG_KEYS: tuple[str, ...] = (
    "name", "num_classes", "in_chans", "output_stride", "grid", "input_size", "mean", "std",
)


class PuzzleOutput(NamedTuple):
    """Outputs of the Puzzle-CAM training pass (``B`` images, ``C`` classes)."""

    logits: torch.Tensor  # B x C, full image
    cams: torch.Tensor  # B x C x h x w, full image
    puzzle_logits: torch.Tensor  # B x C, mean of the merged tile CAMs
    puzzle_cams: torch.Tensor  # B x C x h x w, tile CAMs merged back


class PuzzleCAM(nn.Module):
    """CAM classifier over a feature backbone whose ``forward_features`` returns ``B x F x h x w``.

    Args:
        backbone: module with ``forward_features(x)`` (timm convention) or a plain ``forward``
            returning a 4-D feature map.
        num_features: channels ``F`` of that feature map.
        num_classes: number of classes ``C`` (CAMs per image).
        stride: total downsampling of the backbone (32, or 16 with ``output_stride=16``).
        grid: tiles per side in the puzzle branch (2 -> 2x2 tiles).
        name: backbone name, kept for checkpoints and logs.
        model_cfg: entries of the model's record (:data:`MODEL_CFG_KEYS`) beyond those given
            above, e.g. ``in_chans`` and ``output_stride`` from :func:`wsss.models.build_model`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        num_classes: int = 19,
        stride: int = 32,
        grid: int = 2,
        name: str = "",
        model_cfg: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Conv2d(num_features, num_classes, kernel_size=1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)
        self.num_classes = num_classes
        self.stride = stride
        self.grid = grid
        self.name = name
        extra = dict(model_cfg or {})
        unknown = sorted(set(extra) - set(MODEL_CFG_KEYS))
        if unknown:
            raise ValueError(f"unknown model_cfg key(s) {unknown}; known: {', '.join(MODEL_CFG_KEYS)}")
        self.model_cfg: dict[str, Any] = {key: None for key in MODEL_CFG_KEYS}
        self.model_cfg.update(name=name, num_classes=num_classes, grid=grid)
        self.model_cfg.update(extra)

    def set_input_cfg(self, input_size: int | None, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        """Record the input the model expects: square side in pixels and per-channel mean and std."""
        self.model_cfg.update(
            input_size=None if input_size is None else int(input_size),
            mean=None if mean is None else [float(v) for v in mean],
            std=None if std is None else [float(v) for v in std],
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone feature map ``B x F x h x w``."""
        fn = getattr(self.backbone, "forward_features", None)
        feats = fn(x) if callable(fn) else self.backbone(x)
        if feats.ndim != 4:
            raise ValueError(
                f"backbone {self.name or type(self.backbone).__name__} returned features of shape "
                f"{tuple(feats.shape)}; a CAM needs a B x F x h x w map (use a convolutional backbone)"
            )
        return feats

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """Raw class activation maps ``B x C x h x w``."""
        return self.classifier(self.features(x))

    def forward(self, x: torch.Tensor, puzzle: bool = False) -> tuple[torch.Tensor, torch.Tensor] | PuzzleOutput:
        """``(logits B x C, cams B x C x h x w)`` with ``logits == cams.mean((2, 3))``.

        With ``puzzle=True`` returns :class:`PuzzleOutput` (see :meth:`forward_puzzle`).
        """
        if puzzle:
            return self.forward_puzzle(x)
        cams = self.cams(x)
        return cams.mean(dim=(2, 3)), cams

    def check_input_size(self, height: int, width: int) -> None:
        """Raise :class:`PuzzleError` unless ``grid * stride`` divides both sides of the input."""
        step = self.grid * self.stride
        if height % step or width % step:
            raise PuzzleError(
                f"input {height}x{width} cannot be cut into {self.grid}x{self.grid} tiles whose CAMs line up "
                f"with the full CAM: with stride {self.stride} both sides must be multiples of {step}"
            )

    def forward_puzzle(self, x: torch.Tensor) -> PuzzleOutput:
        """Full-image pass plus the tiled pass with the tile CAMs merged back into one map."""
        self.check_input_size(x.shape[-2], x.shape[-1])
        logits, cams = self.forward(x)
        tile_cams = self.cams(tile(x, self.grid))
        merged = merge(tile_cams, self.grid)
        if merged.shape != cams.shape:
            raise PuzzleError(
                f"merged tile CAMs {tuple(merged.shape)} differ from full CAMs {tuple(cams.shape)}; "
                f"the backbone's stride is not {self.stride}"
            )
        return PuzzleOutput(logits, cams, merged.mean(dim=(2, 3)), merged)
