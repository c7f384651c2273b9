"""Post-processing of a combined per-cell table: image context, image/cell blending, Negative suppression,
border and small-cell down-weighting. Each step is a config key (``configs/ensemble.yaml``, section
``postprocess``; ``wsss-ensemble --config ... --set postprocess.KEY=VALUE``), off by default.

Applied in this order to the per-cell probabilities ``p_kc`` (cell ``k``, class ``c``) after the
sources have been combined (:func:`wsss.ensemble.ensemble`):

1. ``context: {power: a, agg: mean}``: ``p_kc <- p_kc A_c^a`` with ``A_c`` the mean (``agg: max``: the
   maximum) of ``p_c`` over the cells of the cell's image in the same table: the image's pooled evidence
   for class ``c`` multiplies each cell's own (a product of experts, taken from the combined table
   itself, where ``blend`` needs an image-level table). Every cell of an image gets the same factor per
   class, so the order of an image's cells within a class is kept; the cells of different images are
   reordered (cross-image ranking is what the ``strict`` protocol scores). ``power: 0`` (default) is off.
2. ``blend: {cell: a, image: b, method: mean}``: ``p_kc <- (a p_kc + b P_c) / (a + b)`` with ``P_c``
   the image-level probability of the cell's image (an image-level table: ``images_stage1.parquet``
   of a Puzzle-CAM model, i.e. what the naive baseline gives every cell); ``method: geom`` is the
   weighted geometric mean instead (:func:`wsss.ensemble.combine`). ``image: 0`` (default) is off.
3. ``negative_suppression: true``: ``p_kc <- p_kc (1 - p_k,18)`` for ``c != 18`` (18 = Negative).
4. ``border: {factor: f}``: every class of a cell cut by the image edge (``is_border``) is
   multiplied by ``f`` (1 = off).
5. ``small: {factor: f, area: t, unit: median|px}``: every class of a cell whose ``area`` (label-map
   pixels at the working scale) is below ``t`` times its image's median cell area (``unit:
   median``) or below ``t`` pixels (``unit: px``) is multiplied by ``f`` (``f = 1`` or ``t = 0``: off).

Down-weighting all 19 classes of a cell lowers its rank against the cells of other images in
every class, which is what matters under both metric protocols; the order of classes within the
cell is kept. Every function is pure (a table in, a new table out).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from wsss.config import ConfigError, check_config, merge
from wsss.ensemble import EnsembleError, combine, image_probabilities
from wsss.schema import PROB_COLUMNS

logger = logging.getLogger(__name__)

NEGATIVE: int = 18
BLEND_METHODS: tuple[str, ...] = ("mean", "geom")
AREA_UNITS: tuple[str, ...] = ("median", "px")
CONTEXT_AGGS: tuple[str, ...] = ("mean", "max")
#: Defaults of the ``postprocess`` section (mirrored by ``configs/ensemble.yaml``): every step off.
DEFAULTS: dict[str, Any] = {
    "postprocess": {
        "context": {"power": 0.0, "agg": "mean"},
        "blend": {"cell": 1.0, "image": 0.0, "method": "mean"},
        "negative_suppression": False,
        "border": {"factor": 1.0},
        "small": {"factor": 1.0, "area": 0.0, "unit": "median"},
    },
}


@dataclass(frozen=True)
class PostParams:
    """The ``postprocess`` section as values (see the module doc)."""

    context_power: float = 0.0
    context_agg: str = "mean"
    blend_cell: float = 1.0
    blend_image: float = 0.0
    blend_method: str = "mean"
    negative_suppression: bool = False
    border_factor: float = 1.0
    small_factor: float = 1.0
    small_area: float = 0.0
    small_unit: str = "median"

    def __post_init__(self) -> None:
        for name in ("context_power", "blend_cell", "blend_image", "border_factor", "small_factor", "small_area"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or value < 0:
                raise ConfigError(f"postprocess.{name.replace('_', '.', 1)} must be a number >= 0, got {value}")
        if self.blend_cell + self.blend_image <= 0:
            raise ConfigError("postprocess.blend: cell + image weights must be > 0")
        if self.blend_method not in BLEND_METHODS:
            raise ConfigError(f"postprocess.blend.method must be one of {BLEND_METHODS}, got {self.blend_method!r}")
        if self.context_agg not in CONTEXT_AGGS:
            raise ConfigError(f"postprocess.context.agg must be one of {CONTEXT_AGGS}, got {self.context_agg!r}")
        if self.small_unit not in AREA_UNITS:
            raise ConfigError(f"postprocess.small.unit must be one of {AREA_UNITS}, got {self.small_unit!r}")
        if self.border_factor > 1 or self.small_factor > 1:
            raise ConfigError("postprocess border/small factors must be <= 1 (they down-weight)")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> PostParams:
        """From a config holding a ``postprocess`` section (checked against :data:`DEFAULTS`; missing keys default)."""
        merged = _merged(cfg)
        check_config(merged, DEFAULTS)
        pp = merged["postprocess"]
        return cls(context_power=float(pp["context"]["power"]), context_agg=str(pp["context"]["agg"]),
                   blend_cell=float(pp["blend"]["cell"]), blend_image=float(pp["blend"]["image"]),
                   blend_method=str(pp["blend"]["method"]), negative_suppression=bool(pp["negative_suppression"]),
                   border_factor=float(pp["border"]["factor"]), small_factor=float(pp["small"]["factor"]),
                   small_area=float(pp["small"]["area"]), small_unit=str(pp["small"]["unit"]))

    @property
    def needs_images(self) -> bool:
        """True when blending needs an image-level table."""
        return self.blend_image > 0

    @property
    def active(self) -> list[str]:
        """Names of the steps that change anything, in the order they are applied."""
        steps = []
        if self.context_power > 0:
            steps.append(f"context x image {self.context_agg}^{self.context_power:g}")
        if self.blend_image > 0:
            steps.append(f"blend cell {self.blend_cell:g} / image {self.blend_image:g} ({self.blend_method})")
        if self.negative_suppression:
            steps.append("negative suppression")
        if self.border_factor < 1:
            steps.append(f"border x{self.border_factor:g}")
        if self.small_factor < 1 and self.small_area > 0:
            steps.append(f"small (< {self.small_area:g} {self.small_unit}) x{self.small_factor:g}")
        return steps


def _merged(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` deep-merged over :data:`DEFAULTS`."""
    return merge(DEFAULTS, cfg)


def default_config() -> dict[str, Any]:
    """A fresh copy of :data:`DEFAULTS`."""
    return copy.deepcopy(DEFAULTS)


def _probs(cells: pd.DataFrame) -> np.ndarray:
    return cells[PROB_COLUMNS].to_numpy(dtype=np.float64)


def _with_probs(cells: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    out = cells.copy()
    out[PROB_COLUMNS] = probs
    return out


def image_context(cells: pd.DataFrame, power: float, agg: str = "mean") -> pd.DataFrame:
    """``p_kc * A_c ** power`` with ``A_c`` the ``agg`` (mean or max) of ``p_c`` over the cells of cell ``k``'s
    image."""
    if agg not in CONTEXT_AGGS:
        raise ConfigError(f"postprocess.context.agg must be one of {CONTEXT_AGGS}, got {agg!r}")
    probs = _probs(cells)
    groups = pd.DataFrame(probs).groupby(cells["image_id"].astype(str).to_numpy(), sort=False)
    context = groups.transform(agg).to_numpy(dtype=np.float64)
    return _with_probs(cells, probs * context ** float(power))


def blend_with_image(cells: pd.DataFrame, images: pd.DataFrame, cell_weight: float = 0.7,
                     image_weight: float = 0.3, method: str = "mean") -> pd.DataFrame:
    """``(a p_cell + b P_image) / (a + b)`` per cell and class (``method: geom``: weighted geometric mean)."""
    stacked = np.stack([_probs(cells), image_probabilities(cells, images)])
    return _with_probs(cells, combine(stacked, [cell_weight, image_weight], method=method))


def suppress_negative(cells: pd.DataFrame) -> pd.DataFrame:
    """``p_c *= 1 - p_18`` for every class ``c != 18``; Negative itself unchanged."""
    probs = _probs(cells)
    keep = 1.0 - probs[:, NEGATIVE:NEGATIVE + 1]
    probs[:, :NEGATIVE] *= keep
    return _with_probs(cells, probs)


def small_cells(cells: pd.DataFrame, area: float, unit: str = "median") -> np.ndarray:
    """Bool per row: ``area`` below ``area`` x the image's median cell area (``median``) or ``area`` px (``px``)."""
    if unit not in AREA_UNITS:
        raise ConfigError(f"postprocess.small.unit must be one of {AREA_UNITS}, got {unit!r}")
    areas = cells["area"].to_numpy(dtype=np.float64)
    if unit == "px":
        return areas < area
    median = cells.groupby(cells["image_id"].astype(str), sort=False)["area"].transform("median").to_numpy(float)
    return areas < area * median


def downweight(cells: pd.DataFrame, rows: np.ndarray, factor: float) -> pd.DataFrame:
    """Every probability of the rows flagged in ``rows`` multiplied by ``factor``."""
    probs = _probs(cells)
    probs[np.asarray(rows, dtype=bool)] *= float(factor)
    return _with_probs(cells, probs)


def postprocess(cells: pd.DataFrame, params: PostParams, images: pd.DataFrame | None = None) -> pd.DataFrame:
    """Apply the active steps of ``params`` in order (module doc); the table comes back unchanged when none is."""
    out = cells
    if params.context_power > 0:
        out = image_context(out, params.context_power, params.context_agg)
    if params.blend_image > 0:
        if images is None:
            raise EnsembleError("postprocess.blend.image > 0 needs an image-level table (wsss-ensemble --images)")
        out = blend_with_image(out, images, params.blend_cell, params.blend_image, params.blend_method)
    if params.negative_suppression:
        out = suppress_negative(out)
    if params.border_factor < 1:
        if "is_border" not in out.columns:
            raise EnsembleError("postprocess.border needs the is_border column of a per-cell table")
        out = downweight(out, out["is_border"].fillna(False).to_numpy(dtype=bool), params.border_factor)
    if params.small_factor < 1 and params.small_area > 0:
        if "area" not in out.columns:
            raise EnsembleError("postprocess.small needs the area column of a per-cell table")
        out = downweight(out, small_cells(out, params.small_area, params.small_unit), params.small_factor)
    return out


__all__: Sequence[str] = [
    "NEGATIVE", "BLEND_METHODS", "AREA_UNITS", "CONTEXT_AGGS", "DEFAULTS", "PostParams", "default_config",
    "image_context", "blend_with_image", "suppress_negative", "small_cells", "downweight", "postprocess",
]
