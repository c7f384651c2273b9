"""Cutting a batch into an ``n x n`` grid of tiles and merging tile maps back (Puzzle-CAM).

The puzzle branch of Puzzle-CAM feeds the four quarters of every image through the same network
as one larger batch, then re-assembles the quarter CAMs into one map that is compared with the
CAM of the full image. :func:`tile` and :func:`merge` are exact inverses of each other.

Layout: for a batch ``B x C x H x W`` and ``grid = n``, :func:`tile` returns ``(n*n*B) x C x
(H/n) x (W/n)`` with the tiles in row-major grid order as the *outer* index, i.e. tile ``k`` of
image ``b`` is at index ``k * B + b`` (``k = row * n + col``).

Sizes that ``n`` does not divide are refused with :class:`PuzzleError` rather than padded or
cropped: padding would shift the tile borders away from the feature-map cells, so the merged CAM
would no longer line up with the full-image CAM. For the model this means the input side must be
divisible by ``grid * stride`` (64 for a stride-32 backbone and 2 x 2 tiles); the check is done in
:meth:`wsss.models.puzzlecam.PuzzleCAM.forward_puzzle` with a message naming the sizes.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


class PuzzleError(ValueError):
    """A tensor that cannot be cut into (or merged from) an ``n x n`` grid of equal tiles."""


def _check_grid(grid: int) -> None:
    if not isinstance(grid, int) or grid < 1:
        raise PuzzleError(f"grid must be a positive integer, got {grid!r}")


def tile(x: torch.Tensor, grid: int = 2) -> torch.Tensor:
    """Cut ``B x C x H x W`` into ``grid * grid`` tiles stacked along the batch axis (tile-major).

    Raises :class:`PuzzleError` when ``H`` or ``W`` is not divisible by ``grid``.
    """
    _check_grid(grid)
    if x.ndim != 4:
        raise PuzzleError(f"tile expects a B x C x H x W tensor, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if h % grid or w % grid:
        raise PuzzleError(
            f"cannot cut a {h}x{w} map into {grid}x{grid} equal tiles: height and width must be "
            f"divisible by {grid}"
        )
    th, tw = h // grid, w // grid
    # B C n th n tw -> n n B C th tw
    t = x.reshape(b, c, grid, th, grid, tw).permute(2, 4, 0, 1, 3, 5)
    return t.reshape(grid * grid * b, c, th, tw)


def merge(tiles: torch.Tensor, grid: int = 2) -> torch.Tensor:
    """Re-assemble tiles made by :func:`tile` into ``B x C x (grid*h) x (grid*w)`` maps.

    Raises :class:`PuzzleError` when the batch size is not a multiple of ``grid * grid``.
    """
    _check_grid(grid)
    if tiles.ndim != 4:
        raise PuzzleError(f"merge expects an N x C x h x w tensor, got shape {tuple(tiles.shape)}")
    n, c, th, tw = tiles.shape
    if n % (grid * grid):
        raise PuzzleError(f"merge got {n} tiles, not a multiple of {grid}x{grid}={grid * grid}")
    b = n // (grid * grid)
    t = tiles.reshape(grid, grid, b, c, th, tw).permute(2, 3, 0, 4, 1, 5)
    return t.reshape(b, c, grid * th, grid * tw)
