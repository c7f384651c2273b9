"""Pictures of inference results for one image.

* :func:`cell_label_picture`: the RGBY composite at the label map's size with every cell's outline
  and its top labels (``class:prob``) written at the cell's centroid;
* :func:`save_cam_grid`: a matplotlib grid of the composite and the normalised CAM of each
  predicted class (image-level probability >= ``min_prob``, at least the top ``min_classes``),
  titled with the class name and its probability;
* :func:`crop_sheet`: stage-2 crops of a few cells with their top label.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from wsss.data.classes import CLASS_NAMES, NUM_CLASSES
from wsss.data.io import resize_rgby
from wsss.masks import resize_labels
from wsss.viz import cell_centroids, draw_outlines, put_text, rgby_composite, save_png, tile_grid

logger = logging.getLogger(__name__)


def _composite_at(rgby: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rgb = rgby_composite(rgby)
    if rgb.shape[:2] != tuple(shape):
        import cv2

        interp = cv2.INTER_AREA if rgb.shape[0] > shape[0] else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (shape[1], shape[0]), interpolation=interp)
    return rgb


def top_labels(probs: np.ndarray, top: int = 2, min_prob: float = 0.1) -> list[list[tuple[int, float]]]:
    """Per row, up to ``top`` ``(class, prob)`` pairs with ``prob >= min_prob``, best first."""
    order = np.argsort(-probs, axis=1)[:, :top]
    out = []
    for row, idx in zip(probs, order):
        out.append([(int(c), float(row[c])) for c in idx if row[c] >= min_prob])
    return out


def cell_label_picture(rgby: np.ndarray, labels: np.ndarray, cell_ids: np.ndarray, probs: np.ndarray,
                       top: int = 2, min_prob: float = 0.1, min_side: int = 768) -> np.ndarray:
    """Composite with outlines and each cell's top labels (drawn on an upscaled copy if small)."""
    scale = max(1, int(np.ceil(min_side / max(labels.shape))))
    shape = (labels.shape[0] * scale, labels.shape[1] * scale)
    big = np.kron(labels, np.ones((scale, scale), dtype=labels.dtype)) if scale > 1 else labels
    pic = draw_outlines(_composite_at(rgby, shape), big)
    centres = cell_centroids(big)
    for cid, labs in zip(np.asarray(cell_ids).tolist(), top_labels(np.asarray(probs), top, min_prob)):
        if cid not in centres:
            continue
        x, y = centres[cid]
        text = [f"{c}:{p:.2f}" for c, p in labs] or ["-"]
        for line, t in enumerate(text):
            put_text(pic, t, (x - 18, y + 12 * line), scale=0.4)
    return pic


def save_cam_grid(path: Path | str, rgby: np.ndarray, cams: torch.Tensor | np.ndarray, image_probs: np.ndarray,
                  labels: np.ndarray | None = None, min_prob: float = 0.5, min_classes: int = 3,
                  title: str = "") -> Path:
    """Save a PNG grid: composite (+ outlines) and the normalised CAM of each predicted class.

    ``cams`` are normalised ``19 x H x W`` maps already at the picture's size (use
    :func:`wsss.infer.cams.resize_cams`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cam = cams.detach().cpu().numpy() if isinstance(cams, torch.Tensor) else np.asarray(cams)
    probs = np.asarray(image_probs, dtype=np.float64).reshape(NUM_CLASSES)
    order = np.argsort(-probs)
    chosen = [int(c) for c in order if probs[c] >= min_prob]
    for c in order:
        if len(chosen) >= min_classes:
            break
        if int(c) not in chosen:
            chosen.append(int(c))
    shape = cam.shape[-2:]
    rgb = _composite_at(rgby, shape)
    if labels is not None:
        rgb = draw_outlines(rgb, resize_labels(labels, *rgb.shape[:2]))
    panels = 1 + len(chosen)
    cols = min(4, panels)
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title("RGBY composite", fontsize=9)
    gray = rgb.mean(axis=2) / 255.0
    for k, c in enumerate(chosen, start=1):
        ax = axes.ravel()[k]
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
        ax.imshow(cam[c], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(f"{c} {CLASS_NAMES[c][:22]}  p={probs[c]:.2f}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def crop_sheet(crops: torch.Tensor, probs: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
               max_cells: int = 16, columns: int = 4) -> np.ndarray:
    """Tile up to ``max_cells`` normalised crops (de-normalised to RGBY composites) with their top label."""
    n = min(max_cells, crops.shape[0])
    if n == 0:
        return np.zeros((32, 32, 3), dtype=np.uint8)
    m = torch.as_tensor(mean, dtype=crops.dtype).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=crops.dtype).reshape(1, -1, 1, 1)
    raw = ((crops[:n] * s + m).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pics = []
    for k in range(n):
        pic = np.ascontiguousarray(rgby_composite(resize_rgby(raw[k], max(128, raw.shape[1]))))
        c = int(np.argmax(probs[k]))
        put_text(pic, f"{c}:{probs[k, c]:.2f}", (4, 14), scale=0.4)
        pics.append(pic)
    return tile_grid(pics, columns=min(columns, n))


def save_picture(path: Path | str, rgb: np.ndarray) -> Path:
    """Save an RGB picture (thin wrapper so callers need not import :mod:`wsss.viz`)."""
    return save_png(path, rgb)
