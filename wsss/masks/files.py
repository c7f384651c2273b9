"""Label-map files: the ``.npz`` format every stage shares, and precomputed masks made elsewhere.

The label-map file, ``{OUT}/{ID}.npz`` (written by ``wsss-segment``, read by inference, the
ensemble, submission and evaluation):

* ``cells``, ``nuclei``: ``uint16`` label maps at the working scale (0 = background, nucleus
  ``i`` inside cell ``i``);
* ``orig_height``, ``orig_width``: the source image's size in px (0-d int arrays), so the maps
  can be upscaled by :func:`wsss.masks.resize_labels` for submission;
* ``border``: ``bool`` array indexed by cell id, True when the cell touches the image border
  (length ``max_id + 1``).

Files are written atomically (:func:`wsss.fileio.atomic_write_bytes`).

Precomputed masks (HPA-Cell-Segmentation, cellpose, synthetic truth, ...): a mask folder holds,
per image id, a cell label map and optionally a nucleus label map, at any resolution. One set of
accepted names, looked up in this order (first match wins), serves ``wsss-segment --masks`` and
``wsss-infer --masks`` alike:

* cells: ``{ID}.npz`` (array ``cells``, ``cell_mask`` or ``masks``, else its first array),
  ``{ID}_cells.*``, ``{ID}_cell_mask.*``, ``{ID}_cell.*``, ``{ID}_predictedmask.*``,
  ``{ID}_mask.*``, ``{ID}.*``;
* nuclei: the ``.npz`` arrays ``nuclei`` or ``nuclei_mask``, ``{ID}_nuclei.*``,
  ``{ID}_nuclei_mask.*``, ``{ID}_nucleus.*``;

where ``*`` is ``png``, ``npy``, ``tif`` or ``tiff``. PNG/TIFF label maps may be 8 or 16 bit; a
colour-coded image (3 or 4 channels with distinct colours per instance) is converted to ids.
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss.fileio import atomic_write_bytes, decode_image_file
from wsss.masks.labels import MaskError, border_flags

logger = logging.getLogger(__name__)

REQUIRED_KEYS: tuple[str, ...] = ("cells", "nuclei", "orig_height", "orig_width", "border")
LABEL_EXTENSIONS: tuple[str, ...] = (".png", ".npy", ".tif", ".tiff")
CELL_SUFFIXES: tuple[str, ...] = ("_cells", "_cell_mask", "_cell", "_predictedmask", "_mask", "")
NUCLEI_SUFFIXES: tuple[str, ...] = ("_nuclei", "_nuclei_mask", "_nucleus")
NPZ_CELL_KEYS: tuple[str, ...] = ("cells", "cell_mask", "masks")
NPZ_NUCLEI_KEYS: tuple[str, ...] = ("nuclei", "nuclei_mask")

#: One entry of :func:`find_mask_files`: a file and, for ``.npz`` files, the array to read.
MaskEntry = tuple[Path, str | None]


# --------------------------------------------------------------------------- the .npz format


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
        raise MaskError(f"{name} must be a 2-D label map, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.uint16).max):
        raise MaskError(f"{name} ids must lie in 0..65535")
    return arr.astype(np.uint16, copy=False)


def encode_label_maps(cells: np.ndarray, nuclei: np.ndarray, orig_hw: tuple[int, int]) -> bytes:
    """The bytes of a compressed ``.npz`` label-map file (see the module docstring)."""
    cells16 = _as_uint16(cells, "cells")
    nuclei16 = _as_uint16(nuclei, "nuclei")
    if cells16.shape != nuclei16.shape:
        raise MaskError(f"cells {cells16.shape} and nuclei {nuclei16.shape} differ in shape")
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
    """Read a label-map file; raises :class:`MaskError` naming the file when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in REQUIRED_KEYS if k not in data.files]
            if missing:
                raise MaskError(f"{path}: not a label-map file (missing {', '.join(missing)})")
            maps = LabelMaps(
                cells=data["cells"], nuclei=data["nuclei"],
                orig_height=int(data["orig_height"]), orig_width=int(data["orig_width"]),
                border=data["border"].astype(bool),
            )
    except MaskError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise MaskError(f"{path}: unreadable label-map file ({exc})") from None
    if maps.cells.shape != maps.nuclei.shape or maps.cells.ndim != 2:
        raise MaskError(f"{path}: cells {maps.cells.shape} and nuclei {maps.nuclei.shape} must be equal 2-D shapes")
    return maps


def is_label_map_file(path: Path | str) -> bool:
    """True when ``path`` is an ``.npz`` holding every array of the label-map format."""
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return all(k in data.files for k in REQUIRED_KEYS)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return False


# --------------------------------------------------------------------------- any label file


def read_label_file(path: Path | str, key: str | None = None) -> np.ndarray:
    """Read a label map from PNG, TIFF, NPY or NPZ (``key`` selects the NPZ array) as ``int64``."""
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if key is None:
                    key = next((k for k in NPZ_CELL_KEYS if k in data.files), data.files[0] if data.files else None)
                if key is None or key not in data.files:
                    raise MaskError(f"{path}: no array {key!r} in the npz file")
                arr = data[key]
        else:
            arr = read_label_image(path)
    except MaskError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise MaskError(f"{path}: unreadable label map ({exc})") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2 or arr.size == 0:
        raise MaskError(f"{path}: expected a 2-D label map, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise MaskError(f"{path}: label values must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise MaskError(f"{path}: negative label values")
    return arr


def read_label_image(path: Path | str) -> np.ndarray:
    """Decode a PNG/TIFF label image; colour-coded maps become ids (one per distinct colour)."""
    path = Path(path)
    img = decode_image_file(path)
    if img is None:
        raise MaskError(f"{path}: not a readable image")
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = img[:, :, :3]
        if (img == img[:, :, :1]).all():
            return img[:, :, 0]
        code = (img[:, :, 0].astype(np.int64) << 32) | (img[:, :, 1].astype(np.int64) << 16) | img[:, :, 2]
        _, inverse = np.unique(code.reshape(-1), return_inverse=True)
        ids = inverse.reshape(code.shape).astype(np.int64) + 1
        ids[code == 0] = 0
        return ids
    return img


# --------------------------------------------------------------------------- precomputed masks


def _find(folder: Path, image_id: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        for ext in LABEL_EXTENSIONS:
            candidate = folder / f"{image_id}{suffix}{ext}"
            if candidate.is_file():
                return candidate
    return None


def find_mask_files(mask_dir: Path | str, image_id: str) -> tuple[MaskEntry, MaskEntry | None]:
    """Locate ``((cell file, npz key), (nucleus file, npz key) | None)`` for an id (names: module doc).

    Raises :class:`MaskError` when no cell mask exists.
    """
    folder = Path(mask_dir)
    npz = folder / f"{image_id}.npz"
    if npz.is_file():
        try:
            with np.load(npz, allow_pickle=False) as data:
                files = list(data.files)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise MaskError(f"{npz}: unreadable npz ({exc})") from None
        cell_key = next((k for k in NPZ_CELL_KEYS if k in files), files[0] if files else None)
        if cell_key is None:
            raise MaskError(f"{npz}: empty npz file")
        nuc_key = next((k for k in NPZ_NUCLEI_KEYS if k in files), None)
        nuclei = (npz, nuc_key) if nuc_key else None
        if nuclei is None:
            found = _find(folder, image_id, NUCLEI_SUFFIXES)
            nuclei = (found, None) if found else None
        return (npz, cell_key), nuclei
    cell_file = _find(folder, image_id, CELL_SUFFIXES)
    if cell_file is None:
        raise MaskError(f"{image_id}: no label map (cell mask) in {folder} (tried {image_id}{{{','.join(CELL_SUFFIXES)}}}"
                        f"{{{','.join(LABEL_EXTENSIONS)}}} and {image_id}.npz)")
    nuc_file = _find(folder, image_id, NUCLEI_SUFFIXES)
    return (cell_file, None), ((nuc_file, None) if nuc_file else None)


def read_precomputed(mask_dir: Path | str, image_id: str) -> tuple[np.ndarray, np.ndarray | None, Path]:
    """The precomputed ``(cells, nuclei or None, cell file)`` of ``image_id`` as stored (``int64``).

    A nucleus map whose size differs from the cell map's is resized with it (logged).
    """
    (cell_path, cell_key), nuc_entry = find_mask_files(mask_dir, image_id)
    cells = read_label_file(cell_path, cell_key)
    nuclei = read_label_file(*nuc_entry) if nuc_entry else None
    if nuclei is not None and nuclei.shape != cells.shape:
        logger.warning("%s: nucleus mask %s differs in size from cell mask %s; both are resized",
                       image_id, nuclei.shape, cells.shape)
    return cells, nuclei, cell_path
