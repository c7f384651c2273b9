"""Stage-2 cell crops: the project's one crop implementation lives in :mod:`wsss.data.crops`
(shared with the cell classifier's training); this module keeps the inference-side names."""

from wsss.data.crops import (
    BLANK_MODES,
    CropError,
    CropParams,
    antialias_scale,
    extract_crops,
    raw_crops,
    square_boxes,
)

__all__ = ["BLANK_MODES", "CropError", "CropParams", "antialias_scale", "extract_crops", "raw_crops", "square_boxes"]
