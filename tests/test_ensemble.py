"""Cell-level ensembling: methods, joins, IoU matching across segmentations, submission inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsss.cli.ensemble import main as ensemble_main
from wsss.ensemble import (
    EnsembleError,
    Source,
    align,
    combine,
    ensemble,
    greedy_match,
    naive_cells_from_images,
    rank_scores,
    read_source,
)
from wsss.schema import PROB_COLUMNS
from wsss.submission import build_submission, read_submission, write_submission


def test_combine_methods_by_hand():
    p = np.array([[[0.2, 0.9]], [[0.8, 0.1]]])          # 2 sources, 1 cell, 2 classes
    assert np.allclose(combine(p, [1, 1], method="mean"), [[0.5, 0.5]])
    assert np.allclose(combine(p, [3, 1], method="mean"), [[0.35, 0.7]])
    assert np.allclose(combine(p, [1, 1], method="geom"), [[0.4, 0.3]])
    assert np.allclose(combine(p, [1, 3], method="geom"), [[0.2 ** 0.25 * 0.8 ** 0.75, 0.9 ** 0.25 * 0.1 ** 0.75]])
    # absent entries are left out and weights renormalised; a cell nobody covers is NaN
    p3 = np.array([[[0.2], [0.4]], [[0.8], [0.6]]])
    out = combine(p3, [1, 1], present=np.array([[True, False], [True, False]]))
    assert out[0, 0] == pytest.approx(0.5) and np.isnan(out[1, 0])
    out = combine(p3, [1, 1], present=np.array([[True, True], [False, True]]))
    assert out[:, 0] == pytest.approx([0.2, 0.5])
    with pytest.raises(EnsembleError):
        combine(p, [1, 1], method="median")


def test_rank_scores_average_ties():
    r = rank_scores(np.array([[0.1, 5.0], [0.3, 5.0], [0.2, 1.0], [0.3, 2.0]]))
    assert np.allclose(r[:, 0], [1 / 4, 3.5 / 4, 2 / 4, 3.5 / 4])
    assert np.allclose(r[:, 1], [3.5 / 4, 3.5 / 4, 1 / 4, 2 / 4])


def test_greedy_match_one_to_one_by_descending_iou():
    iou = np.array([[0.7, 0.65, 0.0],
                    [0.9, 0.0, 0.0],
                    [0.0, 0.5, 0.61]])
    # row 1 takes col 0 (0.9), row 0 then takes col 1 (0.65), row 2 takes col 2 (0.61)
    assert greedy_match(iou, 0.6).tolist() == [1, 0, 2]
    assert greedy_match(iou, 0.8).tolist() == [-1, 0, -1]
    assert greedy_match(np.zeros((2, 0))).tolist() == [-1, -1]


# --------------------------------------------------------------------------- two segmentations


def primary_map() -> np.ndarray:
    """32x32 working-scale map of a 64x64 image: four cells."""
    m = np.zeros((32, 32), np.uint16)
    m[0:16, 0:16], m[0:16, 16:32], m[16:32, 0:16], m[20:30, 20:30] = 1, 2, 3, 4
    return m


def other_map() -> np.ndarray:
    """A different segmentation of the same image at 16x16 working scale (ids in another order).

    id 7 = primary cell 1 minus its first working column (IoU 0.875 at full size); ids 5 and 6 split
    primary cell 2 in halves (IoU 0.5 each: unmatched); id 9 = primary cell 3 exactly; primary
    cell 4 is missing; id 8 is an extra cell matching nothing.
    """
    m = np.zeros((16, 16), np.uint16)
    m[0:8, 1:8] = 7
    m[0:8, 8:12], m[0:8, 12:16] = 5, 6
    m[8:16, 0:8] = 9
    m[13:16, 13:16] = 8
    return m


def table(image_id: str, npz: Path, ids: list[int], probs: np.ndarray, source: str) -> pd.DataFrame:
    df = pd.DataFrame({"image_id": image_id, "cell_id": ids, "source": source, "fold": 0,
                       "orig_width": 64, "orig_height": 64, "mask_path": str(npz)})
    df[PROB_COLUMNS] = probs
    return df


def save_npz(path: Path, cells: np.ndarray) -> Path:
    np.savez_compressed(path, cells=cells, nuclei=cells, orig_height=64, orig_width=64,
                        border=np.zeros(int(cells.max()) + 1, bool))
    return path


@pytest.fixture()
def two_segmentations(tmp_path: Path) -> tuple[Source, Source, Path]:
    pa = save_npz(tmp_path / "seg_a.npz", primary_map())
    pb = save_npz(tmp_path / "seg_b.npz", other_map())
    a = table("X", pa, [1, 2, 3, 4], np.full((4, 19), 0.2), "a")
    b = table("X", pb, [5, 6, 7, 8, 9], np.arange(5)[:, None] / 10 + np.zeros((5, 19)), "b")
    return Source("a", a), Source("b", b), tmp_path


def test_iou_matching_across_segmentations(two_segmentations):
    a, b, _ = two_segmentations
    rows = align(a, b, match="auto")          # different label-map files: IoU matching
    assert b.cells["cell_id"].to_numpy()[rows[rows >= 0]].tolist() == [7, 9]
    assert rows.tolist() == [2, -1, 4, -1]
    assert align(a, b, iou_threshold=0.45).tolist() == [2, 0, 4, -1]   # half cell now passes


def test_unmatched_policies(two_segmentations):
    a, b, _ = two_segmentations
    renorm = ensemble([a, b], method="mean")
    # cell 1 <- b row 2 (0.2): mean(0.2, 0.2); cell 3 <- b row 4 (0.4): mean(0.2, 0.4); cells 2, 4: a alone
    assert renorm["p_0"].tolist() == pytest.approx([0.2, 0.2, 0.3, 0.2])
    assert renorm["n_sources"].tolist() == [2, 1, 2, 1]
    fill = ensemble([a, b], unmatched="fill", fill_value=0.0)
    assert fill["p_0"].tolist() == pytest.approx([0.2, 0.1, 0.3, 0.1])
    drop = ensemble([a, b], unmatched="drop")
    assert drop["cell_id"].tolist() == [1, 3]
    assert set(drop["source"]) == {"ensemble"} and "mask_path" in drop.columns


def test_join_on_shared_segmentation(two_segmentations):
    a, _, tmp = two_segmentations
    shuffled = a.cells.iloc[[3, 1, 0, 2]].copy()
    shuffled[PROB_COLUMNS] = np.array([0.4, 0.2, 0.1, 0.3])[:, None] * np.ones((1, 19))
    b = Source("fold1", shuffled.reset_index(drop=True), weight=3.0)
    assert align(a, b, match="auto").tolist() == [2, 1, 3, 0]
    out = ensemble([a, b], method="mean")
    assert out["p_5"].tolist() == pytest.approx([(0.2 + 3 * 0.1) / 4, (0.2 + 3 * 0.2) / 4,
                                                 (0.2 + 3 * 0.3) / 4, (0.2 + 3 * 0.4) / 4])
    ranked = ensemble([a, b], method="rank")
    # a: all tied -> rank 2.5/4 each; b: cell 1 lowest (1/4) ... cell 4 highest (4/4), equal weights 1:3
    assert ranked["p_0"].tolist() == pytest.approx([(0.625 + 3 * k / 4) / 4 for k in (1, 2, 3, 4)])


def test_submission_csv_as_a_source(two_segmentations):
    a, b, tmp = two_segmentations
    sub_path = write_submission(build_submission(b.cells), tmp / "team.csv")
    team = read_source(sub_path, weight=1.0)
    assert team.kind == "submission" and len(team.cells) == 5
    rows = align(a, team)
    assert np.allclose(team.cells[PROB_COLUMNS].to_numpy()[rows[rows >= 0]],
                       b.cells[PROB_COLUMNS].to_numpy()[[2, 4]], atol=1e-6)
    # a submission as the primary: masks are kept as strings and written back unchanged
    out = ensemble([team, a], method="geom")
    assert len(out) == 5 and out["mask"].str.len().min() > 0
    back = read_submission(write_submission(build_submission(out), tmp / "ens.csv"))
    assert set(back.predictions["mask"]) == set(team.cells["mask"])


def test_naive_baseline_broadcasts_image_probs(two_segmentations):
    a, _, _ = two_segmentations
    images = pd.DataFrame({"image_id": ["X"], **{c: [i / 100] for i, c in enumerate(PROB_COLUMNS)}})
    naive = naive_cells_from_images(a.cells, images)
    assert np.allclose(naive[PROB_COLUMNS].to_numpy(), np.arange(19)[None, :] / 100)
    assert set(naive["source"]) == {"naive"}
    with pytest.raises(EnsembleError, match="no image-level row"):
        naive_cells_from_images(a.cells, images.assign(image_id="Y"))


def test_ensemble_cli(two_segmentations, capsys):
    a, b, tmp = two_segmentations
    a.cells.to_parquet(tmp / "a.parquet")
    b.cells.to_parquet(tmp / "b.parquet")
    write_submission(build_submission(b.cells), tmp / "team.csv")
    code = ensemble_main([str(tmp / "a.parquet"), str(tmp / "b.parquet"), str(tmp / "team.csv"),
                          "--weights", "2", "1", "1", "--method", "mean", "-o", str(tmp / "ens.parquet"),
                          "--submission", str(tmp / "ens.csv"), "--min-confidence", "0.25"])
    assert code == 0
    out = pd.read_parquet(tmp / "ens.parquet")
    assert out["n_sources"].tolist() == [3, 1, 3, 1]
    # cell 3: (2 * 0.2 + 0.4 + 0.4) / 4 = 0.3 >= 0.25 -> 19 triplets; other cells stay below the floor
    assert out["p_0"].tolist() == pytest.approx([0.2, 0.2, 0.3, 0.2])
    sub = read_submission(tmp / "ens.csv")
    assert len(sub.predictions) == 19
    assert ensemble_main([str(tmp / "a.parquet"), "--weights", "1", "2", "-o", str(tmp / "x.parquet")]) == 2
    assert "1 inputs but 2 weights" in capsys.readouterr().err
