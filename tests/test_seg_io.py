"""Label-map files, precomputed masks at other resolutions, instance matching."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from hpa_seg import segment
from hpa_seg.evaluate import agreement, match_instances
from wsss.masks import load_label_maps, save_label_maps
from hpa_seg.masks import load_precomputed, prepare_precomputed
from wsss.masks import MaskError, find_mask_files, read_label_file, resize_labels
from hpa_seg.pipeline import segment_with_masks
from hpa_seg.toy import ToyCell, toy_field

FIELD = [ToyCell(60, 60, 40, 12), ToyCell(120, 70, 40, 12, brightness=50), ToyCell(245, 128, 35, 11)]


def _small_maps() -> tuple[np.ndarray, np.ndarray]:
    cells = np.zeros((64, 64), np.uint16)
    nuclei = np.zeros_like(cells)
    cells[0:20, 0:20], nuclei[5:10, 5:10] = 1, 1
    cells[30:50, 30:50], nuclei[35:40, 35:40] = 2, 2
    return cells, nuclei


def test_label_map_roundtrip(tmp_path: Path) -> None:
    cells, nuclei = _small_maps()
    path = save_label_maps(tmp_path / "x.npz", cells, nuclei, (2048, 1536))
    maps = load_label_maps(path)
    assert maps.cells.dtype == np.uint16 and np.array_equal(maps.cells, cells)
    assert np.array_equal(maps.nuclei, nuclei)
    assert (maps.orig_height, maps.orig_width) == (2048, 1536)
    assert maps.border.tolist() == [False, True, False]
    assert maps.num_cells == 2
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"
    up = resize_labels(maps.cells, maps.orig_height, maps.orig_width)
    assert up.shape == (2048, 1536) and up.dtype == np.uint16 and set(np.unique(up)) == {0, 1, 2}


def test_load_label_maps_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(MaskError, match="bad.npz"):
        load_label_maps(bad)
    other = tmp_path / "other.npz"
    np.savez(other, cells=np.zeros((4, 4), np.uint16))
    with pytest.raises(MaskError, match="missing"):
        load_label_maps(other)
    with pytest.raises(MaskError, match="not found"):
        load_label_maps(tmp_path / "absent.npz")


def test_save_rejects_mismatched_maps(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_label_maps(tmp_path / "x.npz", np.zeros((4, 4)), np.zeros((5, 5)), (4, 4))


def test_precomputed_png_at_higher_resolution_resized_by_nearest(tmp_path: Path) -> None:
    cells, nuclei = _small_maps()
    big_cells = np.repeat(np.repeat(cells, 4, 0), 4, 1) * 7  # ids 7, 14 at 256 px
    big_nuclei = np.repeat(np.repeat(nuclei, 4, 0), 4, 1)
    big_nuclei[big_nuclei == 1] = 9  # nucleus ids need not follow the cell ids
    big_nuclei[big_nuclei == 2] = 3
    cv2.imwrite(str(tmp_path / "img1_cells.png"), big_cells.astype(np.uint16))
    cv2.imwrite(str(tmp_path / "img1_nuclei.png"), big_nuclei.astype(np.uint8))
    c, n = load_precomputed(tmp_path, "img1", (64, 64))
    assert c.dtype == np.uint16 and np.array_equal(c, cells), "nearest-neighbour resize, ids renumbered 1..n"
    assert np.array_equal(n, nuclei), "each nucleus takes its cell's id"


def test_precomputed_without_nuclei_takes_them_from_blue(tmp_path: Path) -> None:
    rgby, true_cells, true_nuclei = toy_field(256, FIELD)
    big = cv2.resize(true_cells, (512, 512), interpolation=cv2.INTER_NEAREST)
    np.save(tmp_path / "a.npy", big.astype(np.int32))
    cells, nuclei = segment_with_masks(rgby, tmp_path, "a", size=256)
    assert np.array_equal(cells, true_cells)
    assert agreement(nuclei, true_nuclei).ap == 1.0
    assert set(np.unique(nuclei)) <= set(np.unique(cells))
    dropped, _ = segment_with_masks(rgby, tmp_path, "a", size=256, border="drop")
    assert dropped.max() == 2


def test_precomputed_npz_and_colour_png(tmp_path: Path) -> None:
    cells, nuclei = _small_maps()
    np.savez_compressed(tmp_path / "b.npz", cells=cells * 3, nuclei=nuclei)
    (cp, ck), nuc = find_mask_files(tmp_path, "b")
    assert cp.name == "b.npz" and ck == "cells" and nuc == (tmp_path / "b.npz", "nuclei")
    c, n = load_precomputed(tmp_path, "b", (32, 32))
    assert c.shape == (32, 32) and c.max() == 2 and n.max() == 2
    colour = np.zeros((64, 64, 3), np.uint8)
    colour[cells == 1] = (200, 10, 10)
    colour[cells == 2] = (10, 200, 10)
    cv2.imwrite(str(tmp_path / "c_cells.png"), colour)
    lab = read_label_file(tmp_path / "c_cells.png")
    assert len(np.unique(lab)) == 3 and lab[0, 0] != lab[40, 40] and lab[60, 0] == 0


def test_missing_precomputed_mask_is_reported(tmp_path: Path) -> None:
    with pytest.raises(MaskError, match="nope"):
        load_precomputed(tmp_path, "nope", (32, 32))
    (tmp_path / "x_cells.png").write_bytes(b"garbage")
    with pytest.raises(MaskError, match="x_cells.png"):
        load_precomputed(tmp_path, "x", (32, 32))


def test_prepare_precomputed_handles_huge_sparse_ids() -> None:
    cells = np.zeros((40, 40), np.int64)
    cells[:10, :10] = 2**40
    cells[20:, 20:] = 5
    c, n = prepare_precomputed(cells, None, (20, 20))
    assert set(np.unique(c)) == {0, 1, 2} and n.max() == 0


def test_match_instances_and_agreement() -> None:
    ref = np.zeros((20, 20), np.int32)
    ref[0:10, 0:10] = 1
    ref[10:20, 10:20] = 2
    ref[0:5, 15:20] = 3
    pred = np.zeros_like(ref)
    pred[0:10, 0:9] = 5  # IoU 0.9 with 1
    pred[10:20, 10:14] = 6  # IoU 0.4 with 2: no match
    m = match_instances(pred, ref, 0.6)
    assert m.pred_ids.tolist() == [5] and m.ref_ids.tolist() == [1]
    a = agreement(pred, ref)
    assert (a.tp, a.fp, a.fn) == (1, 1, 2)
    assert a.ap == pytest.approx(1 / 4) and a.recall == pytest.approx(1 / 3) and a.precision == 0.5
    assert agreement(ref, ref).ap == 1.0
    empty = np.zeros_like(ref)
    assert agreement(empty, empty).ap == 1.0 and agreement(empty, ref).ap == 0.0
    low = match_instances(pred, ref, 0.3)
    assert sorted(low.ref_ids.tolist()) == [1, 2]
    with pytest.raises(ValueError):
        match_instances(pred, ref[:10])


def test_resize_labels_keeps_ids() -> None:
    lab = np.arange(16, dtype=np.uint16).reshape(4, 4) * 1000
    up = resize_labels(lab, 8, 8)
    assert up.dtype == np.uint16 and set(np.unique(up)) == set(np.unique(lab))
    assert np.array_equal(resize_labels(up, 4, 4), lab)


def test_segment_output_saves_and_reloads(tmp_path: Path) -> None:
    rgby, _, _ = toy_field(256, FIELD)
    cells, nuclei = segment(rgby, 128)
    maps = load_label_maps(save_label_maps(tmp_path / "t.npz", cells, nuclei, rgby.shape[:2]))
    assert np.array_equal(maps.cells, cells) and maps.border[maps.cells[64, 125]]
