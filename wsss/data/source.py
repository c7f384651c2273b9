"""A folder of input images: a prepared cache or the Kaggle layout (one reader for every stage).

* a prepared cache (``DIR/manifest.csv`` exists): ``DIR/{ID}.png`` read with
  :func:`wsss.data.io.read_rgby_png`; the original size comes from the manifest
  (:func:`wsss.data.prepare.read_manifest`);
* otherwise the Kaggle layout ``DIR/{ID}_{red,green,blue,yellow}.{png,jpg,tif}`` read with
  :func:`wsss.data.io.read_rgby` at full resolution (the original size is the image's size).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from wsss.data.io import ImageReadError, kaggle_shape, list_image_ids, pixel_costs, read_rgby, read_rgby_png
from wsss.data.prepare import MANIFEST_NAME, cache_path, read_manifest
from wsss.fileio import image_file_shape

logger = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("cache", "kaggle")


def layout_of(root: Path | str) -> str:
    """``"cache"`` when ``root`` holds a ``manifest.csv``, else ``"kaggle"``."""
    return "cache" if (Path(root) / MANIFEST_NAME).is_file() else "kaggle"


def read_image(kind: str, root: Path | str, image_id: str) -> np.ndarray:
    """Read one RGBY image from either layout; :class:`ImageReadError` names the id."""
    if kind == "cache":
        try:
            return read_rgby_png(cache_path(root, image_id))
        except ImageReadError as exc:
            raise ImageReadError(f"{image_id}: {exc}") from None
    return read_rgby(Path(root), image_id)


def pixel_counts(kind: str, root: Path | str, ids: list[str]) -> list[float]:
    """Pixels each id's stored image holds, from file headers only (the cost of its work when sharding).

    A cache id counts its cached PNG, a Kaggle-layout id its red channel file. An id whose size
    cannot be read costs the median of the others (1 when none is known).
    """
    root = Path(root)
    return pixel_costs([image_file_shape(cache_path(root, i)) if kind == "cache" else kaggle_shape(root, i)
                        for i in ids])


class ImageSource:
    """Images of a prepared cache or of a Kaggle-layout folder (see the module doc).

    ``kind`` is ``"cache"`` or ``"kaggle"``; ``sizes`` maps a cache's ids to their original
    ``(height, width)`` (empty for the Kaggle layout). A missing folder raises ``FileNotFoundError``.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: images folder not found")
        self.kind = layout_of(self.root)
        self.sizes: dict[str, tuple[int, int]] = {}
        if self.kind == "cache":
            manifest = read_manifest(self.root)
            self.sizes = {str(r.ID): (int(r.height), int(r.width)) for r in manifest.itertuples(index=False)}

    def list_ids(self) -> list[str]:
        """Every id the folder holds (manifest order for a cache, sorted for the Kaggle layout)."""
        if self.kind == "cache":
            return list(self.sizes)
        return list_image_ids(self.root)

    def orig_size(self, image_id: str) -> tuple[int, int] | None:
        """The original ``(height, width)`` the manifest records for an id (``None``: the image's own size)."""
        return self.sizes.get(image_id)

    def pixel_counts(self, ids: list[str]) -> list[float]:
        """Pixels of each id's stored image, from file headers (:func:`pixel_counts`)."""
        return pixel_counts(self.kind, self.root, ids)

    def read(self, image_id: str) -> tuple[np.ndarray, int, int]:
        """``(rgby uint8 H x W x 4, orig_height, orig_width)``; raises :class:`ImageReadError`."""
        rgby = read_image(self.kind, self.root, image_id)
        height, width = self.sizes.get(image_id, rgby.shape[:2])
        return rgby, int(height), int(width)
