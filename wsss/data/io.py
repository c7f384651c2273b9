"""Reading HPA images: one reader for every source format, one RGBY contract.

The RGBY contract: a ``uint8`` array of shape ``H x W x 4`` whose channels are, in this order,
``0 red`` (microtubules), ``1 green`` (protein of interest), ``2 blue`` (nucleus) and
``3 yellow`` (endoplasmic reticulum). :data:`CHANNELS` holds that order.

Sources:

* the Kaggle layout ``{root}/{ID}_{red,green,blue,yellow}.{png,jpg,jpeg,tif,tiff}``, each file a
  single-channel 8-bit or 16-bit image of any size (1728, 2048 and 3072 px are common);
  16-bit data is mapped to 8 bits by ``value * 255 / 65535`` (rounded), so the full 16-bit
  range maps onto the full 8-bit range; a file saved as colour (3 or 4 channels, as some
  external HPA downloads are) is reduced to one plane by taking the per-pixel maximum over its
  colour channels, which recovers a stain that was colourised into a single plane;
* a prepared cache file: one 4-channel PNG per id whose R, G, B, A planes hold red, green,
  blue and yellow (see :mod:`wsss.data.prepare`).

Label maps (cell masks) are not images: their reading and their one resize rule live in
:mod:`wsss.masks`.

Every problem (missing channel, unreadable file, mismatched channel sizes) raises
:class:`ImageReadError`, whose message names the id and the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from wsss.fileio import atomic_write_bytes, decode_image_file, image_file_shape

logger = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")
EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

cv2.setNumThreads(1)


class ImageReadError(RuntimeError):
    """An image (or one of its channels) that cannot be read as the RGBY contract requires."""


def find_channel_file(root: Path, image_id: str, channel: str) -> Path:
    """Return the file holding ``channel`` of ``image_id`` under ``root``, trying every extension."""
    for ext in EXTENSIONS:
        for candidate in (root / f"{image_id}_{channel}{ext}", root / f"{image_id}_{channel}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    raise ImageReadError(
        f"{image_id}: missing {channel} channel (no {root / (image_id + '_' + channel)}"
        f"{{{','.join(EXTENSIONS)}}})"
    )


def _decode_file(path: Path) -> np.ndarray:
    """Decode an image file (:func:`wsss.fileio.decode_image_file`); :class:`ImageReadError` when unreadable."""
    image = decode_image_file(path)
    if image is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt or empty file)")
    return image


def to_uint8(image: np.ndarray, source: Path | str = "<array>") -> np.ndarray:
    """Map an 8-bit, 16-bit or float array to ``uint8`` (16-bit: ``round(v * 255 / 65535)``)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        finite = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(finite.max()) if finite.size else 0.0
        scale = 255.0 if peak <= 1.0 else 255.0 / peak
        return np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)
    raise ImageReadError(f"{source}: unsupported pixel type {image.dtype}")


def read_channel(path: Path | str) -> np.ndarray:
    """Read one stain as a 2-D ``uint8`` array (see the module doc for 16-bit and colour files)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    image = _decode_file(path)
    if image.ndim == 3:
        if image.shape[2] == 1:
            image = image[:, :, 0]
        else:
            image = image[:, :, :3].max(axis=2)
    if image.ndim != 2 or min(image.shape) == 0:
        raise ImageReadError(f"{path}: expected a 2-D single-channel image, got shape {image.shape}")
    return to_uint8(image, path)


def read_rgby(root: Path | str, image_id: str) -> np.ndarray:
    """Read ``image_id`` from the Kaggle layout under ``root`` as an ``H x W x 4`` RGBY ``uint8`` array."""
    root = Path(root)
    planes: list[np.ndarray] = []
    for channel in CHANNELS:
        path = find_channel_file(root, image_id, channel)
        try:
            plane = read_channel(path)
        except ImageReadError as exc:
            raise ImageReadError(f"{image_id}: {exc}") from None
        if planes and plane.shape != planes[0].shape:
            raise ImageReadError(
                f"{image_id}: {path.name} is {plane.shape[1]}x{plane.shape[0]} but the red channel is "
                f"{planes[0].shape[1]}x{planes[0].shape[0]} (channels must have the same size)"
            )
        planes.append(plane)
    return np.ascontiguousarray(np.stack(planes, axis=-1))


def kaggle_shape(root: Path | str, image_id: str) -> tuple[int, int] | None:
    """``(height, width)`` of a Kaggle-layout id from its red channel's file header (``None``: unknown)."""
    try:
        return image_file_shape(find_channel_file(Path(root), image_id, CHANNELS[0]))
    except ImageReadError:
        return None


def pixel_costs(shapes: list[tuple[int, int] | None]) -> list[float]:
    """Pixel counts of ``(height, width)`` shapes; an unknown shape costs the median of the known ones (else 1)."""
    known = sorted(float(s[0] * s[1]) for s in shapes if s)
    fallback = known[len(known) // 2] if known else 1.0
    return [float(s[0] * s[1]) if s else fallback for s in shapes]


def write_rgby_png(path: Path | str, rgby: np.ndarray) -> None:
    """Write an RGBY array as a 4-channel PNG (R, G, B, A = red, green, blue, yellow), atomically.

    The bytes go to a temporary file in the same folder that is then renamed over ``path``, so a
    killed process never leaves a half-written file under the final name.
    """
    check_rgby(rgby, str(path))
    ok, buf = cv2.imencode(".png", rgby[:, :, [2, 1, 0, 3]], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ImageReadError(f"{path}: PNG encoding failed")
    atomic_write_bytes(Path(path), buf.tobytes())


def read_rgby_png(path: Path | str) -> np.ndarray:
    """Read a 4-channel cache PNG written by :func:`write_rgby_png` back into RGBY order."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    image = _decode_file(path)
    if image.ndim != 3 or image.shape[2] != 4:
        raise ImageReadError(f"{path}: expected a 4-channel RGBY PNG, got shape {image.shape}")
    return np.ascontiguousarray(to_uint8(image, path)[:, :, [2, 1, 0, 3]])


def read_label_png(path: Path | str) -> np.ndarray:
    """Read a single-channel label image (8- or 16-bit PNG/TIFF) as stored; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: label image not found")
    labels = _decode_file(path)
    if labels.ndim != 2:
        raise ImageReadError(f"{path}: not a single-channel label image (shape {labels.shape})")
    return labels


def check_rgby(rgby: np.ndarray, name: str = "<array>") -> None:
    """Raise :class:`ImageReadError` unless ``rgby`` is an ``H x W x 4`` ``uint8`` array."""
    if not isinstance(rgby, np.ndarray) or rgby.ndim != 3 or rgby.shape[2] != 4 or rgby.dtype != np.uint8:
        shape = getattr(rgby, "shape", None)
        dtype = getattr(rgby, "dtype", None)
        raise ImageReadError(f"{name}: expected an HxWx4 uint8 RGBY array, got shape {shape} dtype {dtype}")


def list_image_ids(root: Path | str) -> list[str]:
    """Ids of the Kaggle layout under ``root``: every ``{ID}_{channel}.{ext}`` stem, sorted, unique."""
    root = Path(root)
    if not root.is_dir():
        raise ImageReadError(f"{root}: not a folder")
    ids: set[str] = set()
    for entry in root.iterdir():
        if entry.suffix.lower() not in EXTENSIONS:
            continue
        stem = entry.stem
        for channel in CHANNELS:
            if stem.endswith("_" + channel):
                ids.add(stem[: -len(channel) - 1])
                break
    return sorted(ids)


def resize_rgby(rgby: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size x size`` (area interpolation when shrinking, linear when growing)."""
    if rgby.shape[0] == size and rgby.shape[1] == size:
        return rgby
    shrink = rgby.shape[0] > size or rgby.shape[1] > size
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(rgby, (size, size), interpolation=interp)
