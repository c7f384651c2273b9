"""Column names of the tables passed between stages (per-cell and image-level predictions)."""

from __future__ import annotations

from wsss.data.classes import NUM_CLASSES

PROB_COLUMNS: list[str] = [f"p_{i}" for i in range(NUM_CLASSES)]
CELL_KEY_COLUMNS: list[str] = ["image_id", "cell_id"]
CELL_COLUMNS: list[str] = [
    "image_id", "cell_id", "source", "fold", "x0", "y0", "x1", "y1", "area", "is_border",
    "orig_width", "orig_height", "mask_path", *PROB_COLUMNS,
]
IMAGE_COLUMNS: list[str] = ["image_id", "source", "fold", *PROB_COLUMNS]
