"""YAML experiment configs with dotted CLI overrides; the resolved config is saved beside outputs."""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from wsss.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)


_SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


def load_config(path: Path | str) -> dict[str, Any]:
    """Load a YAML config file into a plain dict (an empty file gives ``{}``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc.__class__.__name__}: {exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``cfg['a']['b'] = value`` for ``dotted == 'a.b'``, creating missing levels."""
    keys = dotted.split(".")
    node = cfg
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def get_dotted(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """Read ``cfg['a']['b']`` for ``dotted == 'a.b'``, or ``default`` when a level is missing."""
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def apply_overrides(cfg: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML scalars (``3``, ``1e-3``, ``true``)."""
    out = copy.deepcopy(dict(cfg))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if not raw.strip().startswith(("'", '"')):  # quoted values stay as written
            value = _number_or_same(value)
        set_dotted(out, key.strip(), value)
    return out


def _number_or_same(value: Any) -> Any:
    """PyYAML reads ``1e-3`` as a string (YAML 1.1 wants ``1.0e-3``); turn such strings into floats.

    Only unquoted scientific notation is converted; ``'0001'`` or ``nan`` stay strings.
    """
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value):
        return float(value)
    return value


def save_config(cfg: Mapping[str, Any], path: Path | str) -> Path:
    """Write the resolved config as YAML next to the outputs it produced (atomically)."""
    path = Path(path)
    atomic_write_bytes(path, yaml.safe_dump(dict(cfg), sort_keys=False).encode())
    return path
