"""Pictures for people: RGBY composites, label outlines and contact sheets.

A pure leaf: numpy, OpenCV and scikit-image drawing only, no import from the project (so the
synthetic-data generator in :mod:`wsss.data` can use it). Label maps are drawn at the picture's
size; callers resize them first with the project's one rule, :func:`wsss.masks.resize_labels`.
Nothing here is needed by training or inference.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from skimage.segmentation import find_boundaries

logger = logging.getLogger(__name__)


def rgby_composite(rgby: np.ndarray) -> np.ndarray:
    """Render an RGBY ``uint8`` image as RGB ``uint8`` for display.

    Red, green and blue go to their own display channels; yellow (ER) is added at half strength
    to red and green, so it shows yellow without hiding the green protein channel.
    """
    arr = rgby.astype(np.float32)
    red = arr[..., 0] + 0.5 * arr[..., 3]
    green = arr[..., 1] + 0.5 * arr[..., 3]
    blue = arr[..., 2]
    return np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)


def outline_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean map of the inner boundary pixels of every instance in a label map."""
    return find_boundaries(labels, mode="inner") & (labels > 0)


def draw_outlines(rgb: np.ndarray, labels: np.ndarray, color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Return a copy of ``rgb`` with the instance outlines of ``labels`` (``H x W``, the picture's size) in ``color``."""
    if labels.shape[:2] != rgb.shape[:2]:
        raise ValueError(f"label map {labels.shape[:2]} and picture {rgb.shape[:2]} differ in size; "
                         "resize the labels first (wsss.masks.resize_labels)")
    out = rgb.copy()
    out[outline_mask(labels)] = color
    return out


def cell_centroids(labels: np.ndarray) -> dict[int, tuple[float, float]]:
    """Centroid ``(x, y)`` of each non-zero label, computed for all labels at once."""
    flat = labels.reshape(-1).astype(np.int64)
    n = int(flat.max()) + 1 if flat.size else 1
    ys, xs = np.indices(labels.shape)
    count = np.bincount(flat, minlength=n)
    sx = np.bincount(flat, weights=xs.reshape(-1), minlength=n)
    sy = np.bincount(flat, weights=ys.reshape(-1), minlength=n)
    return {int(i): (sx[i] / count[i], sy[i] / count[i]) for i in np.flatnonzero(count) if i != 0}


def put_text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.35,
             color: tuple[int, int, int] = (255, 255, 255)) -> None:
    """Draw ``text`` in place with a dark halo so it reads on any background."""
    x, y = int(org[0]), int(org[1])
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def save_png(path: Path | str, rgb: np.ndarray) -> Path:
    """Save an RGB ``uint8`` picture as PNG (creating the folder) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write PNG")
    return path


def tile_grid(pictures: list[np.ndarray], columns: int, pad: int = 4) -> np.ndarray:
    """Arrange equally sized RGB pictures in a grid with ``pad`` px of dark gap."""
    if not pictures:
        raise ValueError("tile_grid needs at least one picture")
    h, w = pictures[0].shape[:2]
    rows = (len(pictures) + columns - 1) // columns
    sheet = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 24, dtype=np.uint8)
    for k, pic in enumerate(pictures):
        r, c = divmod(k, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y:y + h, x:x + w] = pic
    return sheet
