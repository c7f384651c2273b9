"""Weight-free segmentation: nuclei splitting, id contract, border policy, empty and 16-bit input."""

from __future__ import annotations

import numpy as np
import pytest

from hpa_seg import SegParams, SegmentationError, segment
from hpa_seg.evaluate import agreement
from wsss.masks import resize_labels
from hpa_seg.nuclei import segment_nuclei
from hpa_seg.params import scale_factor
from hpa_seg.postprocess import apply_border_policy, border_flags, fill_label_holes, make_consistent
from hpa_seg.toy import ToyCell, toy_field


def _disks(size: int, centres: list[tuple[float, float]], radius: float, value: float = 150.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size), np.float32)
    for cx, cy in centres:
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] = value
    return img


FIELD = [
    ToyCell(60, 60, 40, 12), ToyCell(120, 70, 40, 12, brightness=50),
    ToyCell(190, 190, 45, 14, brightness=150), ToyCell(245, 128, 35, 11), ToyCell(70, 190, 30, 10, brightness=30),
]


def _assert_contract(cells: np.ndarray, nuclei: np.ndarray) -> None:
    assert cells.dtype == np.uint16 and nuclei.dtype == np.uint16
    assert cells.shape == nuclei.shape
    cell_ids = set(np.unique(cells)) - {0}
    nuc_ids = set(np.unique(nuclei)) - {0}
    assert cell_ids == nuc_ids, "every cell holds a nucleus with its id and vice versa"
    assert cell_ids == set(range(1, len(cell_ids) + 1)), "ids are 1..n"
    inside = nuclei > 0
    assert np.array_equal(cells[inside], nuclei[inside]), "nucleus i lies inside cell i"


@pytest.mark.parametrize("distance", [22.0, 24.0])
def test_touching_nuclei_are_split(distance: float) -> None:
    blue = _disks(256, [(100, 128), (100 + distance, 128)], 12)
    labels = segment_nuclei(blue, SegParams(), scale_factor(blue.shape))
    assert labels.max() == 2
    left, right = labels[128, 95], labels[128, int(100 + distance + 5)]
    assert left > 0 and right > 0 and left != right


def test_lobed_nucleus_stays_whole() -> None:
    blue = _disks(256, [(100, 128), (108, 128)], 12)
    assert segment_nuclei(blue).max() == 1


def test_toy_field_matches_truth_and_id_contract() -> None:
    rgby, true_cells, true_nuclei = toy_field(256, FIELD)
    cells, nuclei = segment(rgby, None)
    _assert_contract(cells, nuclei)
    assert agreement(cells, true_cells).ap == 1.0
    assert agreement(nuclei, true_nuclei).ap == 1.0


def test_touching_cells_each_keep_their_nucleus() -> None:
    rgby, true_cells, _ = toy_field(256, FIELD[:2])
    cells, nuclei = segment(rgby, None)
    assert cells.max() == 2
    for i in (1, 2):
        ys, xs = np.nonzero(nuclei == i)
        assert np.all(cells[ys, xs] == i)
    assert agreement(cells, true_cells).tp == 2


def test_no_cell_without_nucleus() -> None:
    rgby, _, _ = toy_field(256, FIELD[:1] + [ToyCell(180, 180, 40, 12)])
    rgby[..., 2][rgby[..., 2] > 60] = 3  # erase both nuclei ...
    rgby[..., 2][true_nuc_mask(256, 60, 60, 12)] = 150  # ... and put back the first one only
    cells, nuclei = segment(rgby, None)
    assert cells.max() == 1
    assert cells[180, 180] == 0, "cytoplasm without a nucleus is not a cell"
    _assert_contract(cells, nuclei)


def true_nuc_mask(size: int, x: float, y: float, r: float) -> np.ndarray:
    return _disks(size, [(x, y)], r) > 0


def test_border_flags_and_drop_policy() -> None:
    rgby, _, _ = toy_field(256, FIELD)
    cells, nuclei = segment(rgby, None)
    flags = border_flags(cells)
    assert len(flags) == cells.max() + 1 and not flags[0]
    edge_cell = cells[128, 250]
    assert edge_cell > 0 and flags[edge_cell]
    assert flags.sum() == 1
    kept_cells, kept_nuclei = segment(rgby, None, border="drop")
    assert kept_cells.max() == cells.max() - 1
    assert not border_flags(kept_cells).any()
    _assert_contract(kept_cells, kept_nuclei)
    assert kept_cells[128, 250] == 0 and kept_nuclei[128, 245] == 0


def test_drop_policy_renumbers_consistently() -> None:
    cells = np.zeros((10, 10), np.uint16)
    nuclei = np.zeros_like(cells)
    cells[0:3, 0:3], nuclei[1, 1] = 1, 1
    cells[5:8, 5:8], nuclei[6, 6] = 2, 2
    c, n = apply_border_policy(cells, nuclei, "drop")
    assert c.max() == 1 and c[6, 6] == 1 and n[6, 6] == 1 and n[1, 1] == 0
    with pytest.raises(ValueError):
        apply_border_policy(cells, nuclei, "maybe")


@pytest.mark.parametrize("value", [0, 7])
def test_empty_image_gives_empty_maps(value: int) -> None:
    rgby = np.full((300, 300, 4), value, np.uint8)
    cells, nuclei = segment(rgby, 128)
    assert cells.shape == (128, 128) and cells.dtype == np.uint16
    assert cells.max() == 0 and nuclei.max() == 0


def test_noise_only_image_gives_no_cells() -> None:
    rng = np.random.default_rng(0)
    rgby = np.clip(3 + 2 * rng.standard_normal((256, 256, 4)), 0, 255).astype(np.uint8)
    cells, _ = segment(rgby, None)
    assert cells.max() == 0


def test_sixteen_bit_input_equals_eight_bit() -> None:
    rgby, _, _ = toy_field(256, FIELD)
    wide = rgby.astype(np.uint16) * 257
    c8, n8 = segment(rgby, None)
    c16, n16 = segment(wide, None)
    assert np.array_equal(c8, c16) and np.array_equal(n8, n16)


def test_sizes_scale_with_the_image() -> None:
    rgby, true_cells, _ = toy_field(256, FIELD)
    big = np.repeat(np.repeat(rgby, 2, axis=0), 2, axis=1)
    cells_small, _ = segment(big, 256)
    cells_big, _ = segment(big, None)
    assert cells_small.shape == (256, 256) and cells_big.shape == (512, 512)
    assert agreement(resize_labels(cells_small, 512, 512), cells_big).ap == 1.0
    assert agreement(cells_small, true_cells).ap == 1.0


def test_bad_input_raises_clear_error() -> None:
    with pytest.raises(SegmentationError, match="H x W x 4"):
        segment(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(SegmentationError, match="pixels"):
        segment(np.zeros((64, 64, 4), np.int8))


def test_make_consistent_drops_cells_without_nucleus_and_clips_nuclei() -> None:
    cells = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0]], np.int32)
    nuclei = np.array([[1, 0, 0, 0], [0, 0, 0, 2], [0, 0, 0, 2]], np.int32)
    c, n = make_consistent(cells, nuclei)
    assert c.max() == 2 and (c[2, :2] == 0).all(), "cell 3 had no nucleus"
    assert n[2, 3] == 0, "nucleus pixel outside its cell is cleared"
    assert n[1, 3] == 2 and c[1, 3] == 2


def test_fill_label_holes_only_fills_single_owner_holes() -> None:
    lab = np.zeros((9, 9), np.int32)
    lab[1:4, 1:4] = 1
    lab[2, 2] = 0  # hole in 1
    lab[5:8, 1:8] = 2
    lab[5:8, 4] = 3
    lab[6, 4] = 0  # hole touching 2 and 3: stays background
    out = fill_label_holes(lab)
    assert out[2, 2] == 1 and out[6, 4] == 0
