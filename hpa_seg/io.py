"""Label-map files: one compressed ``.npz`` per image id.

Arrays in ``{OUT}/{ID}.npz``:

* ``cells``, ``nuclei``: ``uint16`` label maps at the working scale (0 = background, nucleus
  ``i`` inside cell ``i``);
* ``orig_height``, ``orig_width``: the source image's size in px (0-d int arrays), so the maps
  can be upscaled by nearest neighbour for submission;
* ``border``: ``bool`` array indexed by cell id, True when the cell touches the image border
  (length ``max_id + 1``).

Files are written atomically (temporary file + rename), so a killed run never leaves a
truncated file under the final name and a resumed run can trust every file it finds.
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpa_seg.postprocess import border_flags
from wsss.data.io import atomic_write_bytes

logger = logging.getLogger(__name__)

REQUIRED_KEYS: tuple[str, ...] = ("cells", "nuclei", "orig_height", "orig_width", "border")


class LabelMapError(RuntimeError):
    """A label-map file that cannot be read or does not follow the format (message names the file)."""


@dataclass
class LabelMaps:
    """The content of one label-map file."""

    cells: np.ndarray
    nuclei: np.ndarray
    orig_height: int
    orig_width: int
    border: np.ndarray

    @property
    def num_cells(self) -> int:
        """Number of distinct non-zero cell ids present in ``cells``."""
        return int(np.count_nonzero(np.bincount(self.cells.reshape(-1))[1:])) if self.cells.size else 0


def _as_uint16(labels: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D label map, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.uint16).max):
        raise ValueError(f"{name} ids must lie in 0..65535")
    return arr.astype(np.uint16, copy=False)


def encode_label_maps(cells: np.ndarray, nuclei: np.ndarray, orig_hw: tuple[int, int]) -> bytes:
    """The bytes of a compressed ``.npz`` label-map file (see the module docstring)."""
    cells16 = _as_uint16(cells, "cells")
    nuclei16 = _as_uint16(nuclei, "nuclei")
    if cells16.shape != nuclei16.shape:
        raise ValueError(f"cells {cells16.shape} and nuclei {nuclei16.shape} differ in shape")
    buf = io.BytesIO()
    np.savez_compressed(
        buf, cells=cells16, nuclei=nuclei16,
        orig_height=np.int64(orig_hw[0]), orig_width=np.int64(orig_hw[1]),
        border=border_flags(cells16),
    )
    return buf.getvalue()


def save_label_maps(path: Path | str, cells: np.ndarray, nuclei: np.ndarray, orig_hw: tuple[int, int]) -> Path:
    """Write ``cells``/``nuclei`` and the original ``(height, width)`` to ``path`` atomically."""
    path = Path(path)
    atomic_write_bytes(path, encode_label_maps(cells, nuclei, orig_hw))
    return path


def load_label_maps(path: Path | str) -> LabelMaps:
    """Read a label-map file; raises :class:`LabelMapError` naming the file when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise LabelMapError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in REQUIRED_KEYS if k not in data.files]
            if missing:
                raise LabelMapError(f"{path}: not a label-map file (missing {', '.join(missing)})")
            maps = LabelMaps(
                cells=data["cells"], nuclei=data["nuclei"],
                orig_height=int(data["orig_height"]), orig_width=int(data["orig_width"]),
                border=data["border"].astype(bool),
            )
    except LabelMapError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise LabelMapError(f"{path}: unreadable label-map file ({exc})") from None
    if maps.cells.shape != maps.nuclei.shape or maps.cells.ndim != 2:
        raise LabelMapError(f"{path}: cells {maps.cells.shape} and nuclei {maps.nuclei.shape} must be equal 2-D shapes")
    return maps


def upscale_to_original(labels: np.ndarray, orig_height: int, orig_width: int) -> np.ndarray:
    """Resize a working-scale label map to the original image size by nearest neighbour."""
    from hpa_seg.evaluate import resize_labels

    return resize_labels(labels, (int(orig_height), int(orig_width)))
