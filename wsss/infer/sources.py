"""Where inference reads its inputs: images (prepared cache or Kaggle layout) and cell label maps.

Images (``--images DIR``):

* a prepared cache (``DIR/manifest.csv`` exists): ``DIR/{ID}.png`` read with
  :func:`wsss.data.io.read_rgby_png`; the original size comes from the manifest;
* otherwise the Kaggle layout ``DIR/{ID}_{red,green,blue,yellow}.{png,jpg,tif}`` read with
  :func:`wsss.data.io.read_rgby` at full resolution (the original size is the image's size).

Label maps (``--masks DIR``), looked up per id in this order:

1. ``DIR/{ID}.npz`` written by ``wsss-segment`` (arrays ``cells``, ``nuclei``, ``orig_height``,
   ``orig_width``, ``border``); used as it is, and it is the ``mask_path`` of the tables;
2. ``DIR/{ID}_cells.png`` (+ optional ``DIR/{ID}_nuclei.png``): uint16 truth masks of
   ``wsss-synth``, at the image's original size;
3. ``DIR/{ID}_predictedmask.png``: precomputed full-resolution label maps (uint8/uint16, like
   ``hpa_sample/masks``).

PNG label maps whose longer side exceeds ``working_size`` are shrunk by nearest neighbour (sampled
at pixel centres) to that working scale, and every PNG source is converted once to
``OUT/label_maps/{ID}.npz`` in the ``wsss-segment`` format, which becomes the table's
``mask_path``. A converted map is reused only when it is newer than its PNG and its size is the
working size of the PNG's size under the current ``working_size`` (else it is rebuilt); so ``mask_path`` always names an ``.npz`` whose ``cells`` array holds the cell ids
and boxes of the table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpa_seg.io import LabelMapError, load_label_maps, save_label_maps
from wsss.data.io import ImageReadError, list_image_ids, read_label_png, read_rgby, read_rgby_png
from wsss.data.prepare import MANIFEST_NAME, cache_path, read_manifest

logger = logging.getLogger(__name__)

MASK_SUFFIXES: tuple[str, ...] = (".npz", "_cells.png", "_predictedmask.png")


class InputError(RuntimeError):
    """One id's image or label map cannot be used (the run reports it and goes on)."""


@dataclass
class LabelMapData:
    """A cell label map at its working scale, with the source image's original size."""

    cells: np.ndarray  # H x W uint16/int, 0 = background
    orig_height: int
    orig_width: int
    path: Path  # the .npz the cell ids refer to (the tables' mask_path)


class ImageSource:
    """Images of a prepared cache or of a Kaggle-layout folder (see the module doc)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: images folder not found")
        self.kind = "cache" if (self.root / MANIFEST_NAME).is_file() else "kaggle"
        self.sizes: dict[str, tuple[int, int]] = {}
        if self.kind == "cache":
            manifest = read_manifest(self.root)
            self.sizes = {str(r.ID): (int(r.height), int(r.width)) for r in manifest.itertuples(index=False)}

    def list_ids(self) -> list[str]:
        """Every id the folder holds (manifest order for a cache, sorted for the Kaggle layout)."""
        if self.kind == "cache":
            return list(self.sizes)
        return list_image_ids(self.root)

    def read(self, image_id: str) -> tuple[np.ndarray, int, int]:
        """``(rgby uint8 H x W x 4, orig_height, orig_width)``; raises :class:`InputError`."""
        try:
            if self.kind == "cache":
                rgby = read_rgby_png(cache_path(self.root, image_id))
                height, width = self.sizes.get(image_id, rgby.shape[:2])
            else:
                rgby = read_rgby(self.root, image_id)
                height, width = rgby.shape[:2]
        except ImageReadError as exc:
            raise InputError(f"image: {exc}") from None
        return rgby, int(height), int(width)


def find_mask_file(root: Path, image_id: str) -> Path:
    """The first label-map file of ``image_id`` under ``root`` (order: see the module doc)."""
    for suffix in MASK_SUFFIXES:
        path = root / f"{image_id}{suffix}"
        if path.is_file():
            return path
    raise InputError(f"mask: no label map for {image_id} in {root} "
                     f"(looked for {', '.join(image_id + s for s in MASK_SUFFIXES)})")


def nearest_resize(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize sampling the source at the output pixel centres (exact for labels)."""
    if labels.shape == (height, width):
        return labels
    ys = np.minimum(((np.arange(height) + 0.5) * labels.shape[0] / height).astype(np.int64), labels.shape[0] - 1)
    xs = np.minimum(((np.arange(width) + 0.5) * labels.shape[1] / width).astype(np.int64), labels.shape[1] - 1)
    return labels[np.ix_(ys, xs)]


def working_shape(height: int, width: int, working_size: int | None) -> tuple[int, int]:
    """Shape with the longer side shrunk to ``working_size`` (never enlarged; ``None`` keeps it)."""
    longest = max(height, width)
    if not working_size or longest <= working_size:
        return height, width
    scale = working_size / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def _read_label_png(path: Path) -> np.ndarray:
    try:
        labels = read_label_png(path)
    except ImageReadError as exc:
        raise InputError(f"mask: {exc}") from None
    if labels.dtype not in (np.uint8, np.uint16):
        raise InputError(f"mask: {path}: expected uint8 or uint16 labels, got {labels.dtype}")
    return labels


def _png_shape(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` from a PNG's IHDR header, ``None`` when the file is not a readable PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


def _load_npz(path: Path) -> LabelMapData:
    try:
        maps = load_label_maps(path)
    except LabelMapError as exc:
        raise InputError(f"mask: {exc}") from None
    return LabelMapData(cells=_check_cells(np.asarray(maps.cells), path), orig_height=int(maps.orig_height),
                        orig_width=int(maps.orig_width), path=path)


def _check_cells(cells: np.ndarray, path: Path) -> np.ndarray:
    if cells.ndim != 2 or min(cells.shape) == 0 or not np.issubdtype(cells.dtype, np.integer):
        raise InputError(f"mask: {path}: cells must be a non-empty 2-D integer array, got {cells.shape} {cells.dtype}")
    return cells


class MaskSource:
    """Label maps of a masks folder (see the module doc); PNG sources are converted under ``out_dir``."""

    def __init__(self, root: Path | str, out_dir: Path | str, working_size: int | None = 512) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: masks folder not found")
        self.converted = Path(out_dir) / "label_maps"
        self.working_size = int(working_size) if working_size else None

    def load(self, image_id: str, orig_hw: tuple[int, int]) -> LabelMapData:
        """The label map of ``image_id`` (``orig_hw`` = the image's original size, for PNG sources)."""
        path = find_mask_file(self.root, image_id)
        if path.suffix == ".npz":
            return _load_npz(path)
        target = self.converted / f"{image_id}.npz"
        if target.is_file() and target.stat().st_mtime >= path.stat().st_mtime:
            png_shape = _png_shape(path)
            if png_shape is not None:
                stored = _load_npz(target)
                if stored.cells.shape == working_shape(*png_shape, self.working_size):
                    return stored
                logger.debug("%s: size %s does not match working_size %s; rebuilding",
                             target, stored.cells.shape, self.working_size)
        cells = _check_cells(_read_label_png(path), path)
        nuclei = None
        if path.name.endswith("_cells.png"):
            nuclei_path = path.with_name(f"{image_id}_nuclei.png")
            if nuclei_path.is_file():
                nuclei = _read_label_png(nuclei_path)
                if nuclei.shape != cells.shape:
                    nuclei = None
        height, width = working_shape(*cells.shape, self.working_size)
        cells = nearest_resize(cells, height, width)
        if nuclei is not None:
            nuclei = nearest_resize(nuclei, height, width)
        save_label_maps(target, cells, np.zeros_like(cells) if nuclei is None else nuclei, orig_hw)
        return LabelMapData(cells=cells, orig_height=int(orig_hw[0]), orig_width=int(orig_hw[1]), path=target)
