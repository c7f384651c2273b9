"""YAML experiment configs with dotted CLI overrides; the resolved config is saved beside outputs.

:func:`check_config` checks a resolved config against its defaults before any work: an unknown
key is refused with the nearest known key, a value of the wrong type with the key and the
expected type. Each command's defaults module holds a type table for the keys whose type the
default does not tell (``None`` defaults, ``auto``-or-value keys, free-form mappings).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from wsss.fileio import atomic_write_bytes

_P = TypeVar("_P", bound="Overridable")

logger = logging.getLogger(__name__)


_SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


#: Allowed values of one key: Python types (``int``, ``float`` (ints accepted), ``bool``, ``str``,
#: ``list``, ``dict`` = a free-form mapping), literal strings (``"auto"``) and ``None`` (null allowed).
TypeSpec = tuple[Any, ...]

_TYPE_WORDS: dict[Any, str] = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                               list: "a list", dict: "a mapping", None: "null"}


def _spec_of(default: Any) -> TypeSpec | None:
    """The allowed types inferred from a default value (``None``: anything goes)."""
    if default is None:
        return None
    for kind in (bool, int, float, str, list):
        if isinstance(default, kind):
            return (kind,)
    return (type(default),)


def _matches(value: Any, spec: TypeSpec) -> bool:
    """True when ``value`` is allowed by ``spec`` (bools are never numbers, ints are floats)."""
    for entry in spec:
        if entry is None:
            if value is None:
                return True
        elif isinstance(entry, str):
            if value == entry:
                return True
        elif entry in (int, float):
            if isinstance(value, bool):
                continue
            if isinstance(value, int) or (entry is float and isinstance(value, float)):
                return True
        elif isinstance(value, entry):
            return True
    return False


def _describe(spec: TypeSpec) -> str:
    return " or ".join(repr(e) if isinstance(e, str) else _TYPE_WORDS.get(e, getattr(e, "__name__", str(e)))
                       for e in spec)


def _known_keys(defaults: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every dotted key of ``defaults``, sections included."""
    out: list[str] = []
    for key, value in defaults.items():
        out.append(prefix + key)
        if isinstance(value, Mapping):
            out.extend(_known_keys(value, f"{prefix}{key}."))
    return out


def check_config(cfg: Mapping[str, Any], defaults: Mapping[str, Any],
                 types: Mapping[str, TypeSpec] | None = None) -> None:
    """Refuse unknown keys and values whose type does not match the defaults (:class:`ConfigError`).

    A key's allowed types come from ``types`` (dotted key -> :data:`TypeSpec`) when listed there,
    else from its default (a ``None`` default accepts anything; a mapping default is a section
    whose keys are checked in turn). Keys listed in ``types`` are known even without a default.
    The error names the dotted key; an unknown key gets the nearest known key as a suggestion.
    """
    types = dict(types or {})
    known = sorted(set(_known_keys(defaults)) | set(types))
    _check_section(cfg, defaults, types, known, "")


def _check_section(cfg: Mapping[str, Any], defaults: Mapping[str, Any], types: Mapping[str, TypeSpec],
                   known: list[str], prefix: str) -> None:
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if dotted in types:
            spec: TypeSpec | None = types[dotted]
        elif key in defaults:
            default = defaults[key]
            if isinstance(default, Mapping):
                if not isinstance(value, Mapping):
                    raise ConfigError(f"config key {dotted}: expected a section (mapping), got {value!r}")
                _check_section(value, default, types, known, dotted + ".")
                continue
            spec = _spec_of(default)
        else:
            close = difflib.get_close_matches(dotted, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown config key {dotted}{hint}")
        if spec is not None and not _matches(value, spec):
            raise ConfigError(f"config key {dotted}: expected {_describe(spec)}, got {value!r}")


def load_config(path: Path | str) -> dict[str, Any]:
    """Load a YAML config file into a plain dict (an empty file gives ``{}``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        detail = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"{path}: invalid YAML ({where}{detail})") from None
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


class Overridable:
    """Mixin of frozen dataclasses of numeric parameters: :meth:`with_overrides` by field name.

    A subclass names its kind in ``OVERRIDE_KIND`` (used in the error message).
    """

    OVERRIDE_KIND: ClassVar[str] = "parameter"

    def with_overrides(self: _P, **kwargs: float) -> _P:
        """A copy with some fields replaced by floats (unknown names raise ``TypeError``)."""
        unknown = set(kwargs) - {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        if unknown:
            raise TypeError(f"unknown {self.OVERRIDE_KIND}(s): {sorted(unknown)}")
        return dataclasses.replace(self, **{k: float(v) for k, v in kwargs.items()})  # type: ignore[type-var]
