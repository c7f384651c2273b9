"""Albumentations pipelines declared in YAML.

A pipeline spec is a list of mappings; each has ``name`` (a transform class of albumentations)
and the transform's keyword arguments. Containers (``OneOf``, ``SomeOf``, ``Sequential``) take a
nested ``transforms`` list. Lists are turned into tuples (albumentations wants ranges as tuples).
The spec may also be given as the path of a YAML file holding such a list, e.g.
``configs/augment/writeup.yaml`` (a relative path not found from the working folder is looked up
in the project folder) (the writeup's augmentations, all of which keep 4 channels).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONTAINERS: frozenset[str] = frozenset({"OneOf", "SomeOf", "Sequential", "OneOrOther"})


class AugmentSpecError(ValueError):
    """An augmentation spec that does not describe an albumentations pipeline."""


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def build_one(spec: Mapping[str, Any]) -> A.BasicTransform | A.BaseCompose:
    """Build one transform (or container) from a mapping with a ``name`` key."""
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise AugmentSpecError(f"each augmentation needs a 'name', got {spec!r}")
    name = str(spec["name"])
    cls = getattr(A, name, None)
    if not isinstance(cls, type):
        raise AugmentSpecError(f"unknown albumentations transform {name!r}")
    kwargs = {k: _tuplify(v) for k, v in spec.items() if k not in ("name", "transforms")}
    if name in CONTAINERS:
        children = spec.get("transforms")
        if not children:
            raise AugmentSpecError(f"{name} needs a non-empty 'transforms' list")
        try:
            return cls([build_one(child) for child in children], **kwargs)
        except (TypeError, ValueError) as exc:
            raise AugmentSpecError(f"{name}({kwargs}): {exc}") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            transform = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise AugmentSpecError(f"{name}({kwargs}): {exc}") from None
    for warning in caught:
        if "not valid for transform" in str(warning.message):
            raise AugmentSpecError(f"{name}: {warning.message}")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return transform


def _find_spec_file(path: Path) -> Path:
    """``path`` as given, else (when relative) inside the project folder, e.g. ``configs/augment/...``."""
    if path.is_file():
        return path
    in_project = PROJECT_ROOT / path
    if not path.is_absolute() and in_project.is_file():
        return in_project
    raise AugmentSpecError(f"{path}: augmentation file not found")


def load_spec(spec: Sequence[Mapping[str, Any]] | str | Path | None) -> list[Mapping[str, Any]]:
    """Return the list form of a spec given inline or as a YAML file path (``None`` -> ``[]``)."""
    if spec is None:
        return []
    if isinstance(spec, (str, Path)):
        path = _find_spec_file(Path(spec))
        try:
            loaded = yaml.safe_load(path.read_text()) or []
        except yaml.YAMLError as exc:
            raise AugmentSpecError(f"{path}: invalid YAML ({exc.__class__.__name__})") from None
        if not isinstance(loaded, list):
            raise AugmentSpecError(f"{path}: expected a list of transforms")
        return loaded
    return list(spec)


def build_transform(spec: Sequence[Mapping[str, Any]] | str | Path | None) -> A.Compose | None:
    """Build an ``A.Compose`` from a spec (list or YAML path); ``None`` or empty gives ``None``."""
    items = load_spec(spec)
    if not items:
        return None
    return A.Compose([build_one(item) for item in items])
