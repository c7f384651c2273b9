"""Segmentation-level fusion: agreed cells kept, the rest from the primary, nuclei kept in the contract (wsss-fuse)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsss.cli.fuse import main as fuse_main
from wsss.ensemble import fuse_label_maps
from wsss.masks import load_label_maps, save_label_maps


def _maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Primary: cells 1 (left), 2 (right, with a nucleus); other: 1 agrees with primary 1 but is wider,
    2 is a new cell over the primary's right cell only in part."""
    primary = np.zeros((20, 40), np.uint16)
    primary[2:18, 2:15] = 1
    primary[2:18, 22:38] = 2
    nuclei = np.zeros_like(primary)
    nuclei[8:12, 6:10] = 1
    nuclei[8:12, 28:32] = 2
    other = np.zeros_like(primary)
    other[2:18, 2:16] = 1           # IoU with primary 1: 13/14 -> agreed
    other[2:10, 22:38] = 7          # half of primary 2 -> not agreed
    return primary, nuclei, other


def test_agreed_cells_take_the_chosen_mask_and_the_rest_come_from_the_primary() -> None:
    primary, nuclei, other = _maps()
    cells, nuc, n_agreed = fuse_label_maps(primary, nuclei, other, 0.6, agreed="other")
    assert n_agreed == 1
    assert int(cells.max()) == 2
    first = cells[5, 5]
    assert (cells == first).sum() == (other == 1).sum()          # the agreed cell has the other's mask
    assert (cells == cells[5, 30]).sum() == (primary == 2).sum()  # the disagreement keeps the primary's cell
    # every nuclear pixel carries its cell's id, every cell holds a nucleus
    assert np.array_equal(nuc > 0, nuclei > 0)
    assert np.all(nuc[nuc > 0] == cells[nuc > 0])
    assert set(np.unique(nuc[nuc > 0])) == set(np.unique(cells[cells > 0]))


def test_fused_cells_without_a_nucleus_are_dropped() -> None:
    primary, nuclei, other = _maps()
    nuclei[nuclei == 2] = 0
    cells, nuc, n_agreed = fuse_label_maps(primary, nuclei, other, 0.6, agreed="primary")
    assert int(cells.max()) == 1 and n_agreed == 1
    assert (cells > 0).sum() == (primary == 1).sum()


def test_agreed_primary_gives_the_primary_back() -> None:
    primary, nuclei, other = _maps()
    cells, nuc, _ = fuse_label_maps(primary, nuclei, other, 0.6, agreed="primary")
    assert np.array_equal(cells, primary) and np.array_equal(nuc, nuclei)


@pytest.mark.timeout(60)
def test_fuse_cli_writes_resumes_and_refuses_other_settings(tmp_path: Path, capsys) -> None:
    primary, nuclei, other = _maps()
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "fused"
    for name in ("x", "y"):
        save_label_maps(a / f"{name}.npz", primary, nuclei, (80, 160))
    save_label_maps(b / "x.npz", other, np.where(other > 0, other, 0), (80, 160))
    save_label_maps(b / "y.npz", other, np.zeros_like(other), (80, 160))
    save_label_maps(b / "z.npz", other, np.zeros_like(other), (80, 160))
    assert fuse_main([str(a), str(b), str(out)]) == 1  # z is only in one folder: listed, skipped
    assert "z" in capsys.readouterr().err
    fused = load_label_maps(out / "x.npz")
    assert (fused.orig_height, fused.orig_width) == (80, 160)
    assert fused.num_cells == 2 and fused.border.shape[0] == 3
    stamp = (out / "x.npz").stat().st_mtime_ns
    assert fuse_main([str(a), str(b), str(out)]) == 1
    assert (out / "x.npz").stat().st_mtime_ns == stamp  # resumed: finished ids are not redone
    capsys.readouterr()
    assert fuse_main([str(a), str(b), str(out), "--agreed", "union"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "agreed" in err[0] and "--overwrite" in err[0]


def test_fuse_cli_refuses_bad_input_in_one_line(tmp_path: Path, capsys) -> None:
    primary, nuclei, other = _maps()
    a, b = tmp_path / "a", tmp_path / "b"
    save_label_maps(a / "x.npz", primary, nuclei, (20, 40))
    assert fuse_main([str(a), str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    save_label_maps(b / "x.npz", other[:10], other[:10], (10, 40))
    assert fuse_main([str(a), str(b), str(tmp_path / "o")]) == 1  # sizes differ: that id fails, named
    err = capsys.readouterr().err
    assert "x: maps differ in size" in err
    assert fuse_main([str(a), str(b), str(tmp_path / "o2"), "--iou", "1.5"]) == 2
