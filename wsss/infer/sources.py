"""Where inference reads its inputs: images (prepared cache or Kaggle layout) and cell label maps.

Images (``--images DIR``): a prepared cache or the Kaggle layout, read by
:class:`wsss.data.source.ImageSource`.

Label maps (``--masks DIR``): the files of an id are found by :func:`wsss.masks.find_mask_files`
(the one set of accepted names, shared with ``wsss-segment --masks``):

* a ``wsss-segment`` label-map file ``DIR/{ID}.npz`` (arrays ``cells``, ``nuclei``,
  ``orig_height``, ``orig_width``, ``border``) is used as it is, and it is the ``mask_path`` of
  the tables;
* any other precomputed mask (``{ID}_cells.png`` + ``{ID}_nuclei.png`` truth of ``wsss-synth``,
  ``{ID}_predictedmask.png`` like ``hpa_sample/masks``, NPY, TIFF, colour-coded maps, ...) is
  brought to the working scale (longer side ``working_size``, never enlarged) by
  :func:`wsss.masks.fit_label_maps`, exactly as ``wsss-segment --masks`` does it, and converted
  once to ``OUT/label_maps/{ID}.npz`` in the ``wsss-segment`` format, which becomes the table's
  ``mask_path``. A converted PNG map is reused only when it is newer than its PNG and its size is
  the working size of the PNG's size under the current ``working_size`` (else it is rebuilt); so
  ``mask_path`` always names an ``.npz`` whose ``cells`` array holds the cell ids and boxes of
  the table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss.data.io import ImageReadError
from wsss.data.source import ImageSource as DataImageSource
from wsss.fileio import png_shape
from wsss.masks import (
    MaskError,
    find_mask_files,
    fit_label_maps,
    is_label_map_file,
    load_label_maps,
    read_precomputed,
    save_label_maps,
    working_shape,
)

logger = logging.getLogger(__name__)


class InputError(RuntimeError):
    """One id's image or label map cannot be used (the run reports it and goes on)."""


@dataclass
class LabelMapData:
    """A cell label map at its working scale, with the source image's original size."""

    cells: np.ndarray  # H x W uint16/int, 0 = background
    orig_height: int
    orig_width: int
    path: Path  # the .npz the cell ids refer to (the tables' mask_path)


class ImageSource(DataImageSource):
    """:class:`wsss.data.source.ImageSource` whose read errors are :class:`InputError` (the run goes on)."""

    def read(self, image_id: str) -> tuple[np.ndarray, int, int]:
        """``(rgby uint8 H x W x 4, orig_height, orig_width)``; raises :class:`InputError`."""
        try:
            return super().read(image_id)
        except ImageReadError as exc:
            raise InputError(f"image: {exc}") from None


def _load_npz(path: Path) -> LabelMapData:
    try:
        maps = load_label_maps(path)
    except MaskError as exc:
        raise InputError(f"mask: {exc}") from None
    cells = np.asarray(maps.cells)
    if min(cells.shape) == 0 or not np.issubdtype(cells.dtype, np.integer):
        raise InputError(f"mask: {path}: cells must be a non-empty 2-D integer array, got {cells.shape} {cells.dtype}")
    return LabelMapData(cells=cells, orig_height=int(maps.orig_height), orig_width=int(maps.orig_width), path=path)


class MaskSource:
    """Label maps of a masks folder (see the module doc); PNG sources are converted under ``out_dir``."""

    def __init__(self, root: Path | str, out_dir: Path | str, working_size: int | None = 512) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: masks folder not found")
        self.converted = Path(out_dir) / "label_maps"
        self.working_size = int(working_size) if working_size else None

    def load(self, image_id: str, orig_hw: tuple[int, int]) -> LabelMapData:
        """The label map of ``image_id`` (``orig_hw`` = the image's original size, for converted sources)."""
        try:
            (path, _), _ = find_mask_files(self.root, image_id)
        except MaskError as exc:
            raise InputError(f"mask: {exc}") from None
        if is_label_map_file(path):
            return _load_npz(path)
        target = self.converted / f"{image_id}.npz"
        if target.is_file() and target.stat().st_mtime >= path.stat().st_mtime:
            shape = png_shape(path)
            if shape is not None:
                stored = _load_npz(target)
                if stored.cells.shape == working_shape(*shape, self.working_size):
                    return stored
                logger.debug("%s: size %s does not match working_size %s; rebuilding",
                             target, stored.cells.shape, self.working_size)
        try:
            cells, nuclei, cell_path = read_precomputed(self.root, image_id)
            cells, nuclei = fit_label_maps(cells, nuclei, working_shape(*cells.shape, self.working_size),
                                           image_hw=orig_hw, name=str(cell_path))
        except MaskError as exc:
            raise InputError(f"mask: {exc}") from None
        save_label_maps(target, cells, np.zeros_like(cells) if nuclei is None else nuclei, orig_hw)
        return LabelMapData(cells=cells, orig_height=int(orig_hw[0]), orig_width=int(orig_hw[1]), path=target)
