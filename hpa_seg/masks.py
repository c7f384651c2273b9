"""Precomputed masks: bring label maps made elsewhere (HPA-Cell-Segmentation, cellpose, ...).

A mask folder holds, per image id, a cell label map and optionally a nucleus label map, at any
resolution. Files are looked up in this order (first match wins):

* cells: ``{ID}.npz`` (array ``cells``, ``cell_mask`` or ``masks``, else its first array),
  ``{ID}_cells.*``, ``{ID}_cell_mask.*``, ``{ID}_cell.*``, ``{ID}_predictedmask.*``,
  ``{ID}_mask.*``, ``{ID}.*``;
* nuclei: the ``.npz`` arrays ``nuclei`` or ``nuclei_mask``, ``{ID}_nuclei.*``,
  ``{ID}_nuclei_mask.*``, ``{ID}_nucleus.*``;

where ``*`` is ``png``, ``npy``, ``tif`` or ``tiff``. PNG/TIFF label maps may be 8 or 16 bit; a
colour-coded PNG (3 or 4 channels with distinct colours per instance) is converted to ids.

The maps are resized to the working scale by nearest neighbour and renumbered ``1..n`` (cells
lost by the resize disappear). Each nucleus takes the id of the cell holding most of it. Without
a nucleus map the nuclei are taken from the blue channel (the nucleus foreground of
:mod:`hpa_seg.nuclei` inside each cell). Cells without a nucleus are kept: the masks are the
user's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from hpa_seg.evaluate import resize_labels
from hpa_seg.nuclei import nucleus_foreground
from hpa_seg.params import SegParams, scale_factor
from hpa_seg.postprocess import align_nuclei_ids, assign_nuclei_to_cells, relabel_sequential

logger = logging.getLogger(__name__)

LABEL_EXTENSIONS: tuple[str, ...] = (".png", ".npy", ".tif", ".tiff")
CELL_SUFFIXES: tuple[str, ...] = ("_cells", "_cell_mask", "_cell", "_predictedmask", "_mask", "")
NUCLEI_SUFFIXES: tuple[str, ...] = ("_nuclei", "_nuclei_mask", "_nucleus")
NPZ_CELL_KEYS: tuple[str, ...] = ("cells", "cell_mask", "masks")
NPZ_NUCLEI_KEYS: tuple[str, ...] = ("nuclei", "nuclei_mask")


class MaskError(RuntimeError):
    """A precomputed mask that is missing or unreadable (message names the id or file)."""


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
            arr = _read_image_labels(path)
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


def _read_image_labels(path: Path) -> np.ndarray:
    """Decode a PNG/TIFF label image; colour-coded maps become ids (one per distinct colour)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None and path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        img = tifffile.imread(str(path))
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


def _find(folder: Path, image_id: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        for ext in LABEL_EXTENSIONS:
            candidate = folder / f"{image_id}{suffix}{ext}"
            if candidate.is_file():
                return candidate
    return None


def find_mask_files(mask_dir: Path | str, image_id: str) -> tuple[tuple[Path, str | None], tuple[Path, str | None] | None]:
    """Locate ``((cell file, npz key), (nucleus file, npz key) | None)`` for an id.

    Raises :class:`MaskError` when no cell mask exists.
    """
    folder = Path(mask_dir)
    npz = folder / f"{image_id}.npz"
    if npz.is_file():
        try:
            with np.load(npz, allow_pickle=False) as data:
                files = list(data.files)
        except (OSError, ValueError, EOFError) as exc:
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
        raise MaskError(f"{image_id}: no cell mask in {folder} (tried {image_id}{{{','.join(CELL_SUFFIXES)}}}"
                        f"{{{','.join(LABEL_EXTENSIONS)}}} and {image_id}.npz)")
    nuc_file = _find(folder, image_id, NUCLEI_SUFFIXES)
    return (cell_file, None), ((nuc_file, None) if nuc_file else None)


def prepare_precomputed(cells: np.ndarray, nuclei: np.ndarray | None, shape: tuple[int, int],
                        blue: np.ndarray | None = None, params: SegParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bring precomputed label maps to the working ``shape`` (numpy in, numpy out).

    Cells are resized by nearest neighbour and renumbered ``1..n``; nuclei likewise and then
    given the id of their cell; without nuclei, ``blue`` (the working-scale blue channel, if
    given) supplies them. Returns ``uint16`` ``(cells, nuclei)``.
    """
    cells = relabel_sequential(np.asarray(cells))  # compact ids first (resizing works on int32)
    cells = resize_labels(cells, shape)
    cells = relabel_sequential(cells)
    if cells.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{int(cells.max())} cells do not fit a uint16 label map")
    if nuclei is not None:
        nuc = relabel_sequential(np.asarray(nuclei))
        nuc = resize_labels(nuc, shape)
        nuc = align_nuclei_ids(cells, nuc)
    elif blue is not None:
        params = params or SegParams()
        mask = nucleus_foreground(blue, params, scale_factor(blue.shape))
        nuc = assign_nuclei_to_cells(cells, mask)
    else:
        nuc = np.zeros_like(cells)
    return cells.astype(np.uint16), np.asarray(nuc).astype(np.uint16)


def load_precomputed(mask_dir: Path | str, image_id: str, shape: tuple[int, int], blue: np.ndarray | None = None,
                     params: SegParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read the precomputed masks of ``image_id`` from ``mask_dir`` at the working ``shape``."""
    (cell_path, cell_key), nuc_entry = find_mask_files(mask_dir, image_id)
    cells = read_label_file(cell_path, cell_key)
    nuclei = read_label_file(*nuc_entry) if nuc_entry else None
    if nuclei is not None and nuclei.shape != cells.shape:
        logger.warning("%s: nucleus mask %s differs in size from cell mask %s; both are resized",
                       image_id, nuclei.shape, cells.shape)
    return prepare_precomputed(cells, nuclei, shape, blue, params)
