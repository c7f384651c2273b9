"""Stage-2 crops: the crops are the cells' (squared) boxes, blanking, batching across sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.infer.crops import CropError, CropParams, extract_crops, square_boxes
from wsss.masks import index_cells

RAW_ZERO = [-1.0, -2.0, -3.0, -4.0]


def coordinate_image(height: int, width: int) -> torch.Tensor:
    """Channel 0 = x (column) index, channel 1 = y (row) index, 2 and 3 = constants."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xs, ys, torch.full_like(xs, 5.0), torch.full_like(xs, 7.0)])


def test_square_cell_crop_is_exactly_its_box():
    image = torch.randn(4, 20, 24)
    labels = np.zeros((20, 24), dtype=np.uint16)
    labels[3:9, 5:11] = 1  # a 6x6 square cell
    labels[12:16, 14:18] = 2  # a 4x4 square cell
    cells = index_cells(labels)
    for k, (x0, y0, x1, y1) in enumerate(cells.boxes.tolist()):
        params = CropParams(size=x1 - x0, margin=0.0, min_side=1, blank="none")
        one = index_cells(np.where(labels == cells.ids[k], labels, 0))
        crops, boxes = extract_crops(image, labels, one, params, RAW_ZERO)
        assert boxes.tolist() == [[x0, y0, x1, y1]]
        torch.testing.assert_close(crops[0], image[:, y0:y1, x0:x1], atol=1e-5, rtol=1e-5)


def test_crops_follow_boxes_with_margin_and_scale():
    """Label map at half the image's resolution; non-square cells; the crop samples the square box."""
    image = coordinate_image(64, 80)
    labels = np.zeros((32, 40), dtype=np.uint16)
    labels[4:10, 6:18] = 3  # 12 wide, 6 high -> image box x 12..36, y 8..20
    labels[20:30, 25:29] = 9  # 4 wide, 10 high -> image box x 50..58, y 40..60
    cells = index_cells(labels)
    params = CropParams(size=16, margin=0.25, min_side=1, blank="none", antialias=False)
    crops, boxes = extract_crops(image, labels, cells, params, RAW_ZERO)
    expected = square_boxes(cells.boxes, (32, 40), (64, 80), margin=0.25, min_side=1)
    np.testing.assert_allclose(boxes, expected)
    np.testing.assert_allclose(boxes[0], [24 - 18, 14 - 18, 24 + 18, 14 + 18])  # side 24 * 1.5
    np.testing.assert_allclose(boxes[1], [54 - 15, 50 - 15, 54 + 15, 50 + 15])  # side 20 * 1.5
    assert crops.shape == (2, 4, 16, 16)
    for k, (bx0, by0, bx1, by1) in enumerate(boxes):
        centres = (np.arange(16) + 0.5) / 16
        xs = bx0 + centres * (bx1 - bx0) - 0.5  # pixel-index coordinate of each crop column
        ys = by0 + centres * (by1 - by0) - 0.5
        inside_x = (xs >= 0) & (xs <= 79)
        inside_y = (ys >= 0) & (ys <= 63)
        got_x = crops[k, 0].numpy()
        got_y = crops[k, 1].numpy()
        np.testing.assert_allclose(got_x[np.ix_(inside_y, inside_x)], np.tile(xs[inside_x], (inside_y.sum(), 1)),
                                   atol=1e-3)
        np.testing.assert_allclose(got_y[np.ix_(inside_y, inside_x)].T, np.tile(ys[inside_y], (inside_x.sum(), 1)),
                                   atol=1e-3)


def test_blanking_modes():
    image = torch.ones(4, 16, 16)
    labels = np.zeros((16, 16), dtype=np.uint16)
    labels[4:12, 4:12] = 1
    labels[4:12, 12:16] = 2  # a neighbour inside cell 1's margin
    cells = index_cells(np.where(labels == 1, 1, 0).astype(np.uint16))
    raw, _ = extract_crops(image, labels, cells, CropParams(size=16, margin=0.5, blank="raw"), RAW_ZERO)
    # box side 8 * 2 = 16 -> the crop is the whole image; cell 1 = rows/cols 4..11
    assert torch.all(raw[0, :, 4:12, 4:12] == 1)
    for c in range(4):
        assert torch.all(raw[0, c, :4] == RAW_ZERO[c])
        assert torch.all(raw[0, c, 4:12, 12:] == RAW_ZERO[c])
    norm, _ = extract_crops(image, labels, cells, CropParams(size=16, margin=0.5, blank="normalized"), RAW_ZERO)
    assert torch.all(norm[0, :, :4] == 0) and torch.all(norm[0, :, 4:12, 4:12] == 1)
    keep, _ = extract_crops(image, labels, cells, CropParams(size=16, margin=0.5, blank="none"), RAW_ZERO)
    assert torch.all(keep == 1)


def test_outside_image_gets_raw_zero_and_empty_maps():
    image = torch.ones(4, 10, 10)
    labels = np.zeros((10, 10), dtype=np.uint16)
    labels[0:4, 0:4] = 1  # corner cell: the square with margin reaches past the edge
    crops, boxes = extract_crops(image, labels, index_cells(labels), CropParams(size=8, margin=0.5, blank="none"),
                                 RAW_ZERO)
    assert boxes[0, 0] < 0 and torch.all(crops[0, 2, 0, 0] == RAW_ZERO[2]) and crops[0, 0, -1, -1] == 1
    empty, _ = extract_crops(image, np.zeros((10, 10), np.uint16), index_cells(np.zeros((10, 10), np.uint16)),
                             CropParams(), RAW_ZERO)
    assert empty.shape == (0, 4, 128, 128)
    with pytest.raises(CropError, match="blank"):
        CropParams(blank="grey")


def test_antialiased_crops_match_direct_sampling_on_smooth_images():
    image = coordinate_image(256, 256) / 256.0
    labels = np.zeros((64, 64), dtype=np.uint16)
    labels[10:30, 12:28] = 1
    labels[36:60, 30:50] = 2
    cells = index_cells(labels)
    sharp, boxes = extract_crops(image, labels, cells, CropParams(size=16, blank="none", antialias=False), RAW_ZERO)
    soft, boxes2 = extract_crops(image, labels, cells, CropParams(size=16, blank="none", antialias=True), RAW_ZERO)
    np.testing.assert_allclose(boxes, boxes2)
    assert (boxes[:, 2] - boxes[:, 0]).min() > 16 / 0.75  # the shrink path is taken
    torch.testing.assert_close(soft[:, :2, 2:-2, 2:-2], sharp[:, :2, 2:-2, 2:-2], atol=0.01, rtol=0)
