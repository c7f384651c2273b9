"""Two-stage inference: per-cell prediction tables from a Puzzle-CAM checkpoint and cell label maps.

* :mod:`wsss.infer.cams`: one forward pass, flip TTA, CAM normalisation and resizing;
* :mod:`wsss.infer.scoring`: stage-1 per-cell scores (overlap x magnitude x image probability);
* :mod:`wsss.infer.crops`: stage-2 square cell crops, batched;
* :mod:`wsss.infer.sources`: images and label maps (read through :mod:`wsss.masks`); :mod:`wsss.infer.tables`: resumable parquet parts;
* :mod:`wsss.infer.runner`: the stage drivers; :mod:`wsss.infer.oof`: the out-of-fold merge;
* :mod:`wsss.infer.overlay`: pictures. Formulas: ``docs/inference.md``.
"""

from wsss.infer.cams import forward_cams, normalize_cams, resize_cams
from wsss.infer.crops import CropParams, extract_crops, square_boxes
from wsss.infer.scoring import (
    ScoreParams,
    cell_footprints,
    cell_measures,
    cell_probabilities,
    score_cells,
)

__all__ = [
    "CropParams",
    "ScoreParams",
    "cell_footprints",
    "cell_measures",
    "cell_probabilities",
    "extract_crops",
    "forward_cams",
    "normalize_cams",
    "resize_cams",
    "score_cells",
    "square_boxes",
]
