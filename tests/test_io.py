from pathlib import Path

import cv2
import numpy as np
import pytest

from wsss.data.io import (
    CHANNELS, ImageReadError, list_image_ids, read_channel, read_rgby, read_rgby_png, resize_rgby, write_rgby_png,
)


def _write_channels(root: Path, image_id: str, planes: list[np.ndarray], ext: str = ".png") -> None:
    for channel, plane in zip(CHANNELS, planes):
        assert cv2.imwrite(str(root / f"{image_id}_{channel}{ext}"), plane)


def _planes(h: int, w: int, dtype=np.uint8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    high = 256 if dtype == np.uint8 else 65536
    return [rng.integers(0, high, (h, w), dtype=np.int64).astype(dtype) for _ in range(4)]


def test_read_8bit_channel_order(tmp_path):
    planes = _planes(40, 50)
    _write_channels(tmp_path, "a", planes)
    rgby = read_rgby(tmp_path, "a")
    assert rgby.shape == (40, 50, 4) and rgby.dtype == np.uint8
    for k in range(4):
        np.testing.assert_array_equal(rgby[:, :, k], planes[k])


def test_read_16bit_maps_full_range(tmp_path):
    planes = _planes(16, 16, np.uint16)
    planes[0][0, 0], planes[0][0, 1], planes[0][0, 2] = 0, 65535, 257 * 100
    _write_channels(tmp_path, "b", planes)
    rgby = read_rgby(tmp_path, "b")
    assert rgby.dtype == np.uint8
    assert rgby[0, 0, 0] == 0 and rgby[0, 1, 0] == 255 and rgby[0, 2, 0] == 100
    np.testing.assert_array_equal(rgby[..., 1], np.round(planes[1].astype(np.float64) * 255 / 65535).astype(np.uint8))


@pytest.mark.parametrize("ext", [".tif", ".jpg"])
def test_read_other_formats(tmp_path, ext):
    planes = [np.full((24, 24), v, np.uint8) for v in (10, 60, 120, 200)]
    _write_channels(tmp_path, "c", planes, ext)
    rgby = read_rgby(tmp_path, "c")
    assert rgby.shape == (24, 24, 4)
    assert np.abs(rgby.reshape(-1, 4).mean(0) - [10, 60, 120, 200]).max() < 2


def test_colour_file_reduced_to_one_plane(tmp_path):
    plane = np.zeros((8, 8, 3), np.uint8)
    plane[..., 2] = 77  # a red stain saved as a colour image (BGR: red is the last plane)
    cv2.imwrite(str(tmp_path / "x.png"), plane)
    assert (read_channel(tmp_path / "x.png") == 77).all()


def test_missing_channel_names_id_and_file(tmp_path):
    planes = _planes(8, 8)
    _write_channels(tmp_path, "d", planes)
    (tmp_path / "d_yellow.png").unlink()
    with pytest.raises(ImageReadError, match=r"d: missing yellow channel"):
        read_rgby(tmp_path, "d")


def test_corrupt_file(tmp_path):
    _write_channels(tmp_path, "e", _planes(8, 8))
    (tmp_path / "e_green.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match=r"^e: .*e_green\.png: not a readable image"):
        read_rgby(tmp_path, "e")


def test_empty_file(tmp_path):
    _write_channels(tmp_path, "f", _planes(8, 8))
    (tmp_path / "f_blue.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="f_blue.png"):
        read_rgby(tmp_path, "f")


def test_size_mismatch(tmp_path):
    planes = _planes(8, 8)
    planes[2] = np.zeros((8, 9), np.uint8)
    _write_channels(tmp_path, "g", planes)
    with pytest.raises(ImageReadError, match=r"g: g_blue.png is 9x8 but the red channel is 8x8"):
        read_rgby(tmp_path, "g")


def test_cache_png_round_trip_and_atomic(tmp_path):
    rgby = np.stack(_planes(10, 12), -1)
    path = tmp_path / "sub" / "h.png"
    write_rgby_png(path, rgby)
    np.testing.assert_array_equal(read_rgby_png(path), rgby)
    assert [p.name for p in path.parent.iterdir()] == ["h.png"]
    with pytest.raises(ImageReadError):
        write_rgby_png(path, rgby[..., :3])


def test_list_ids_and_resize(tmp_path):
    _write_channels(tmp_path, "id_1", _planes(8, 8))
    _write_channels(tmp_path, "id_2", _planes(8, 8))
    (tmp_path / "notes.txt").write_text("x")
    assert list_image_ids(tmp_path) == ["id_1", "id_2"]
    out = resize_rgby(np.zeros((64, 48, 4), np.uint8), 32)
    assert out.shape == (32, 32, 4) and out.dtype == np.uint8


def test_real_sample_reads(hpa_sample):
    ids = list_image_ids(hpa_sample / "images")
    assert len(ids) == 3
    sizes = {read_rgby(hpa_sample / "images", i).shape for i in ids}
    assert sizes == {(2048, 2048, 4), (3072, 3072, 4)}
