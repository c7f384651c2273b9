"""File utilities shared by every stage: atomic writes, image-file decoding and the resume guard.

* :func:`atomic_write_bytes` writes through a temporary sibling and an atomic rename, so a killed
  process never leaves a truncated file under the final name (a resumed run can trust every file
  it finds).
* :func:`decode_image_file` decodes a PNG/JPEG/TIFF file as stored (OpenCV, tifffile fallback);
  :func:`image_file_shape` reads only its header (the size, for balancing work over processes).
* The resume guard: a run records its settings in a JSON file of its output folder
  (:func:`write_json`); a later run into the same folder reads that record (:func:`read_record`)
  and compares the settings that must not change (:func:`changed_settings`). Callers turn the
  differing keys into their own one-line error.
* :func:`check_output_dir` / :func:`check_output_file`: refuse, before any work, an output path
  that cannot be created or written (e.g. a path under a regular file), with one line.

This module imports nothing from the project (bottom layer).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

logger = logging.getLogger(__name__)


class ResumeError(ValueError):
    """A run record that cannot be read (the message names the file)."""


class OutputPathError(ValueError):
    """An output path that cannot be created or written (the message names it)."""


def _why_not_creatable(folder: Path) -> str | None:
    """Why folder ``folder`` cannot be created or written (``None`` when it can)."""
    node = folder
    while not node.exists() and node.parent != node:
        node = node.parent
    if node.exists() and not node.is_dir():
        return f"{node} is a file, not a folder"
    if node.is_dir() and not os.access(node, os.W_OK | os.X_OK):
        return f"{node} is not writable"
    return None


def check_output_dir(path: Path | str) -> Path:
    """Check that output folder ``path`` exists or can be created, and is writable; returns it.

    Creates nothing: callers check every output before the work starts and create it later.
    Raises :class:`OutputPathError` naming the path and the reason.
    """
    path = Path(path)
    why = _why_not_creatable(path)
    if why:
        raise OutputPathError(f"{path}: cannot create the output folder ({why})")
    return path


def check_output_file(path: Path | str) -> Path:
    """Check that output file ``path`` can be written (its folder creatable, not a folder itself); returns it."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path}: cannot write the output file (it is a folder)")
    why = "it is not writable" if path.exists() and not os.access(path, os.W_OK) else _why_not_creatable(path.parent)
    if why:
        raise OutputPathError(f"{path}: cannot write the output file ({why})")
    return path


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path | str, obj: Any, indent: int = 2, sort_keys: bool = False) -> None:
    """Write ``obj`` as JSON (plus a newline) atomically; values JSON cannot hold are written as ``str``."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str) + "\n"
    atomic_write_bytes(Path(path), text.encode())


def decode_image_file(path: Path | str) -> np.ndarray | None:
    """Decode an image file as stored (any depth and channel count); ``None`` when it is not readable.

    OpenCV first; TIFFs OpenCV rejects are tried with tifffile.
    """
    path = Path(path)
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None and path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile  # noqa: PLC0415

            image = tifffile.imread(str(path))
        except Exception:  # noqa: BLE001 - any decoder failure means "not readable"
            image = None
    return image


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_shape(path: Path | str) -> tuple[int, int] | None:
    """``(height, width)`` from a PNG's IHDR header, ``None`` when the file is not a readable PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


def image_file_shape(path: Path | str) -> tuple[int, int] | None:
    """``(height, width)`` of an image file from its header only; ``None`` when it is not readable.

    PNG: the IHDR chunk (:func:`png_shape`); other formats: Pillow's lazy open, which reads the header only.
    """
    shape = png_shape(path)
    if shape is not None or str(path).lower().endswith(".png"):
        return shape
    try:
        from PIL import Image  # noqa: PLC0415 - optional: a transitive dependency (matplotlib, torchvision)

        with Image.open(path) as image:
            width, height = image.size
        return int(height), int(width)
    except Exception:  # noqa: BLE001 - any header failure means "size unknown"
        return None


def read_record(path: Path | str) -> dict[str, Any] | None:
    """The JSON object a run recorded at ``path``; ``None`` when there is none.

    Raises :class:`ResumeError` naming the file when it exists but is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict):
        raise ResumeError(f"{path}: unreadable (not a JSON object)")
    return record


def changed_settings(old: Mapping[str, Any] | None, new: Mapping[str, Any], keys: Iterable[str],
                     only_shared: bool = False) -> list[str]:
    """The ``keys`` whose values differ between a recorded run (``old``) and this run (``new``).

    ``old=None`` (no record) differs in nothing. A key missing on one side counts as ``None``,
    or is not compared at all when ``only_shared``. Keeps the order of ``keys``.
    """
    if old is None:
        return []
    out: list[str] = []
    for key in keys:
        if only_shared and (key not in old or key not in new):
            continue
        if old.get(key) != new.get(key):
            out.append(key)
    return out


def guard_settings(path: Path | str, config: Mapping[str, Any], keys: Iterable[str], overwrite: bool = False) -> list[str]:
    """The resume guard of an output folder's settings record at ``path``.

    Returns the ``keys`` whose recorded values differ from ``config`` (nothing is written then: the
    caller refuses the run). With no difference, an unreadable or missing record, or ``overwrite``,
    ``config`` is (re)written as the record and ``[]`` returned.
    """
    if not overwrite:
        try:
            old = read_record(path)
        except ResumeError:
            old = None
        changed = sorted(changed_settings(old, config, keys))
        if changed:
            return changed
    write_json(path, config, indent=2, sort_keys=True)
    return []
