"""The 19 classes of the HPA Single Cell Classification task and label string <-> multi-hot."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Intermediate filaments",
    "Actin filaments",
    "Microtubules",
    "Mitotic spindle",
    "Centrosome",
    "Plasma membrane",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Vesicles and punctate cytosolic patterns",
    "Negative",
)
NUM_CLASSES: int = len(CLASS_NAMES)
NEGATIVE: int = 18
#: Class whose inverse-frequency weight caps every sample weight in the balanced sampler.
INTERMEDIATE_FILAMENTS: int = 8


class LabelError(ValueError):
    """A label string or class index that is not a valid HPA label."""


def parse_label(label: str) -> list[int]:
    """Parse a Kaggle label string such as ``"0|16"`` into a sorted list of unique class ids.

    Raises :class:`LabelError` for an empty string, a non-integer token or an id outside 0..18.
    """
    if not isinstance(label, str):
        raise LabelError(f"label must be a string like '0|16', got {type(label).__name__} {label!r}")
    text = label.strip()
    if not text:
        raise LabelError("empty label string (an image needs at least one class, 18 = Negative)")
    ids: set[int] = set()
    for token in text.split("|"):
        token = token.strip()
        if not (token.isascii() and token.isdigit()):
            raise LabelError(f"malformed label {label!r}: {token!r} is not a class id")
        value = int(token)
        if value >= NUM_CLASSES:
            raise LabelError(f"label {label!r}: class {value} is out of range 0..{NUM_CLASSES - 1}")
        ids.add(value)
    return sorted(ids)


def format_label(ids: Iterable[int]) -> str:
    """Format class ids as a Kaggle label string (sorted, ``|``-separated)."""
    values = sorted({int(i) for i in ids})
    if not values:
        raise LabelError("cannot format an empty label")
    for value in values:
        if not 0 <= value < NUM_CLASSES:
            raise LabelError(f"class {value} is out of range 0..{NUM_CLASSES - 1}")
    return "|".join(str(v) for v in values)


def label_to_multihot(label: str | Sequence[int]) -> np.ndarray:
    """Return the 19-dim float32 multi-hot vector of a label string or a list of class ids."""
    ids = parse_label(label) if isinstance(label, str) else [int(i) for i in label]
    vec = np.zeros(NUM_CLASSES, dtype=np.float32)
    for value in ids:
        if not 0 <= value < NUM_CLASSES:
            raise LabelError(f"class {value} is out of range 0..{NUM_CLASSES - 1}")
        vec[value] = 1.0
    return vec


def multihot_to_label(vec: np.ndarray, threshold: float = 0.5) -> str:
    """Inverse of :func:`label_to_multihot`: the classes whose value is >= ``threshold``."""
    arr = np.asarray(vec).reshape(-1)
    if arr.shape[0] != NUM_CLASSES:
        raise LabelError(f"multi-hot vector must have {NUM_CLASSES} entries, got {arr.shape[0]}")
    return format_label(np.flatnonzero(arr >= threshold))


def labels_to_matrix(labels: Iterable[str]) -> np.ndarray:
    """Stack label strings into an N x 19 uint8 multi-hot matrix."""
    rows = [label_to_multihot(lab) for lab in labels]
    if not rows:
        return np.zeros((0, NUM_CLASSES), dtype=np.uint8)
    return np.stack(rows).astype(np.uint8)
