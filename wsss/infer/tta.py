"""Test-time augmentation: the D4 group (flips and transposes) of the last two axes, and scales.

Every element of D4, the 8 symmetries of a square, is written ``(t, fh, fw)``: transpose the
last two axes when ``t``, then flip the rows (axis -2) when ``fh`` and the columns (axis -1)
when ``fw``. Names (:data:`D4_MODES`, identity left out):

======================  =============  ==============================================
name                    ``(t, fh, fw)``  what it is
======================  =============  ==============================================
``hflip``               (0, 0, 1)      left-right mirror
``vflip``               (0, 1, 0)      up-down mirror
``hvflip``              (0, 1, 1)      rotation by 180 degrees
``transpose``           (1, 0, 0)      mirror about the main diagonal
``rot90``               (1, 1, 0)      rotation by 90 degrees counter-clockwise (:func:`torch.rot90` ``k=1``)
``rot270``              (1, 0, 1)      rotation by 90 degrees clockwise (``k=3``)
``antitranspose``       (1, 1, 1)      mirror about the anti-diagonal
======================  =============  ==============================================

The inverse of a flip-only element is itself; the inverse of ``(1, fh, fw)`` is ``(1, fw, fh)``
(flips before a transpose act on the other axis), so ``rot90`` and ``rot270`` undo each other
and the other transposes are their own inverses. :func:`apply_tta` and :func:`invert_tta` are
pure functions of a ``torch.Tensor`` or a numpy array (any leading axes), used for stage-1 CAMs
(the CAM of a view is brought back with :func:`invert_tta`), stage-2 crops and any other
per-cell crop.

:func:`tta_modes` turns the ``tta`` config value into mode names: ``false``/``none`` (no TTA),
``true``/``flip`` (the configured flips, ``tta_modes``), ``d4`` (all 7), or a comma list of names.
:func:`parse_scales` reads the multi-scale list (``"0.5,1,1.5,2"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: The D4 elements other than the identity, as ``name -> (transpose, flip rows, flip columns)``.
D4: dict[str, tuple[bool, bool, bool]] = {
    "hflip": (False, False, True),
    "vflip": (False, True, False),
    "hvflip": (False, True, True),
    "transpose": (True, False, False),
    "rot90": (True, True, False),
    "rot270": (True, False, True),
    "antitranspose": (True, True, True),
}
D4_MODES: tuple[str, ...] = tuple(D4)
FLIP_MODES: tuple[str, ...] = ("hflip", "vflip", "hvflip")
#: Mode names of ``tta: true`` when no ``tta_modes`` are configured (the flips of the original ``--tta``).
DEFAULT_FLIPS: tuple[str, ...] = ("hflip", "vflip")
#: The scale list of the Puzzle-CAM inference code.
PUZZLE_CAM_SCALES: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def check_tta(tta: Sequence[str]) -> tuple[str, ...]:
    """Validate TTA mode names (a subset of :data:`D4_MODES`, no repeats); return them as a tuple."""
    modes = tuple(str(m) for m in tta)
    for mode in modes:
        if mode not in D4:
            raise ValueError(f"unknown TTA mode {mode!r}; choose from {', '.join(D4_MODES)}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"TTA modes repeated: {modes}")
    return modes


def _transform(x: ArrayT, transpose: bool, flip_rows: bool, flip_cols: bool) -> ArrayT:
    """Transpose the last two axes (optional), then flip rows and/or columns."""
    dims = tuple(d for d, on in ((-2, flip_rows), (-1, flip_cols)) if on)
    if isinstance(x, torch.Tensor):
        y = x.transpose(-2, -1) if transpose else x
        return torch.flip(y, dims=dims) if dims else y
    y = np.swapaxes(x, -2, -1) if transpose else x
    return np.flip(y, axis=dims) if dims else y


def apply_tta(x: ArrayT, mode: str) -> ArrayT:
    """The view ``mode`` (a :data:`D4_MODES` name, or ``identity``) of ``x``'s last two axes."""
    if mode == "identity":
        return x
    return _transform(x, *D4[check_tta((mode,))[0]])


def invert_tta(x: ArrayT, mode: str) -> ArrayT:
    """Undo :func:`apply_tta`: ``invert_tta(apply_tta(x, m), m)`` equals ``x`` for every mode."""
    if mode == "identity":
        return x
    transpose, flip_rows, flip_cols = D4[check_tta((mode,))[0]]
    if transpose:
        flip_rows, flip_cols = flip_cols, flip_rows
    return _transform(x, transpose, flip_rows, flip_cols)


def swaps_axes(mode: str) -> bool:
    """True when ``mode`` transposes (a non-square input then changes shape)."""
    return mode != "identity" and D4[mode][0]


def tta_modes(tta: Any, configured: Sequence[str] = DEFAULT_FLIPS) -> tuple[str, ...]:
    """Mode names of a ``tta`` setting (see the module doc); ``ValueError`` on an unknown value."""
    if tta is None or tta is False or (isinstance(tta, str) and tta.lower() in ("", "none", "false", "off")):
        return ()
    if tta is True or (isinstance(tta, str) and tta.lower() in ("true", "flip", "flips", "on")):
        return check_tta(configured)
    if isinstance(tta, str) and tta.lower() == "d4":
        return D4_MODES
    if isinstance(tta, str):
        return check_tta([m.strip() for m in tta.split(",") if m.strip()])
    if isinstance(tta, (list, tuple)):
        return check_tta(tta)
    raise ValueError(f"tta must be false, true, flip, d4 or a comma list of {', '.join(D4_MODES)}; got {tta!r}")


def parse_scales(value: Any) -> tuple[float, ...]:
    """The multi-scale factors of ``--scales 0.5,1,1.5,2`` (or a list, or one number); each > 0, no repeats.

    ``None`` or an empty value means ``(1.0,)`` (one pass at the model's input size).
    """
    if value is None or value == "" or value == []:
        return (1.0,)
    items = value.split(",") if isinstance(value, str) else (value if isinstance(value, (list, tuple)) else [value])
    try:
        scales = tuple(float(str(v).strip()) for v in items if str(v).strip())
    except ValueError:
        raise ValueError(f"scales must be numbers separated by commas, e.g. 0.5,1,1.5,2; got {value!r}") from None
    if not scales:
        return (1.0,)
    if any(not np.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {value!r}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"scales repeated: {value!r}")
    return scales


def scaled_side(side: int, scale: float, multiple: int = 1) -> int:
    """``side * scale`` rounded to a multiple of ``multiple`` (at least one ``multiple``)."""
    step = max(1, int(multiple))
    return max(step, int(round(side * scale / step)) * step)


__all__: Sequence[str] = [
    "D4", "D4_MODES", "FLIP_MODES", "DEFAULT_FLIPS", "PUZZLE_CAM_SCALES", "check_tta", "apply_tta", "invert_tta",
    "swaps_axes", "tta_modes", "parse_scales", "scaled_side",
]
