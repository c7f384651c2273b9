"""wsss-pseudo: soft per-cell and per-image targets from an OOF table, and Puzzle-CAM training from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_train_helpers import make_cache, tiny_config

from wsss.data.classes import label_to_multihot
from wsss.pseudo import PseudoError, aggregate, cell_targets, image_targets
from wsss.schema import CELL_COLUMNS, IMAGE_COLUMNS, PROB_COLUMNS
from wsss.tables import read_cell_table, read_image_table

pytestmark = [pytest.mark.timeout(120)]


def _table(rows: list[tuple[str, int, dict[int, float]]], base: float = 0.3) -> pd.DataFrame:
    """A per-cell table: ``(image_id, cell_id, {class: prob})`` rows, other classes at ``base``."""
    data = []
    for image_id, cell_id, probs in rows:
        p = np.full(19, base)
        for c, v in probs.items():
            p[c] = v
        data.append({"image_id": image_id, "cell_id": cell_id, "source": "s", "fold": 0, "x0": 0, "y0": 0,
                     "x1": 1, "y1": 1, "area": 1, "is_border": False, "orig_width": 8, "orig_height": 8,
                     "mask_path": "m.npz", **dict(zip(PROB_COLUMNS, p))})
    return pd.DataFrame(data, columns=CELL_COLUMNS)


LABELS = {"a": label_to_multihot("0|5"), "b": label_to_multihot("18")}
CELLS = _table([("a", 1, {0: 0.9, 5: 0.2, 18: 0.1}), ("a", 2, {0: 0.4, 5: 0.7, 18: 0.6}),
                ("b", 1, {18: 0.8}), ("b", 2, {18: 0.95, 3: 0.9})])


def test_cell_targets_mask_the_classes_the_image_lacks_but_never_negative() -> None:
    out = cell_targets(CELLS, LABELS)
    p = out[PROB_COLUMNS].to_numpy()
    assert ((p >= 0) & (p <= 1)).all() and list(out.columns) == CELL_COLUMNS and (out["source"] == "pseudo").all()
    assert p[0, 0] == pytest.approx(0.9) and p[1, 5] == pytest.approx(0.7)  # the image's classes: kept
    assert p[0, 3] == 0 and p[3, 3] == 0  # classes the image lacks: 0
    assert p[1, 18] == pytest.approx(0.6)  # Negative cells of a positive image: kept
    assert np.allclose(cell_targets(CELLS, None)[PROB_COLUMNS].to_numpy(), CELLS[PROB_COLUMNS].to_numpy())
    with pytest.raises(PseudoError, match="no labels"):
        cell_targets(CELLS, {"a": LABELS["a"]})


def test_image_targets_max_over_cells_min_for_negative_masked_by_labels() -> None:
    images = image_targets(cell_targets(CELLS, LABELS), LABELS)
    assert list(images.columns) == IMAGE_COLUMNS and list(images["image_id"]) == ["a", "b"]
    p = images.set_index("image_id")[PROB_COLUMNS]
    assert p.loc["a", "p_0"] == pytest.approx(0.9) and p.loc["a", "p_5"] == pytest.approx(0.7)  # max over cells
    assert p.loc["a", "p_18"] == 0 and p.loc["a", "p_3"] == 0  # not an image label: 0
    assert p.loc["b", "p_18"] == pytest.approx(0.8)  # Negative image: the least negative cell
    assert ((p.to_numpy() >= 0) & (p.to_numpy() <= 1)).all()
    probs = np.array([[0.5, 0.2], [0.5, 0.9]])
    full = np.zeros((2, 19))
    full[:, :2] = probs
    assert aggregate(full, "noisy_or")[0] == pytest.approx(0.75) and aggregate(full, "mean")[1] == pytest.approx(0.55)
    with pytest.raises(PseudoError, match="aggregation"):
        aggregate(full, "median")


def test_cli_writes_both_tables_and_refuses_bad_probabilities(tmp_path: Path, capsys) -> None:
    from wsss.cli.pseudo import main

    CELLS.to_parquet(tmp_path / "oof.parquet")
    pd.DataFrame({"ID": ["a", "b"], "Label": ["0|5", "18"], "fold": [0, 1]}).to_csv(tmp_path / "folds.csv", index=False)
    assert main([str(tmp_path / "oof.parquet"), "--folds", str(tmp_path / "folds.csv"), "--out", str(tmp_path / "r1")]) == 0
    cells = read_cell_table(tmp_path / "r1" / "cell_targets.parquet")
    images = read_image_table(tmp_path / "r1" / "image_targets.parquet")
    assert len(cells) == 4 and len(images) == 2
    assert (tmp_path / "r1" / "pseudo_report.json").is_file()
    bad = CELLS.copy()
    bad.loc[0, "p_2"] = 1.5
    bad.to_parquet(tmp_path / "bad.parquet")
    capsys.readouterr()
    assert main([str(tmp_path / "bad.parquet"), "--folds", str(tmp_path / "folds.csv"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wsss-pseudo: error:") and "outside [0, 1]" in err[0]


@pytest.mark.slow
def test_puzzlecam_trains_from_soft_image_targets(tmp_path: Path) -> None:
    from wsss.data.folds import read_folds
    from wsss.train.data import build_loaders
    from wsss.train.ddp import DistInfo
    from wsss.train.loop import TrainError, fit

    cache, folds = make_cache(tmp_path / "data", n=12)
    frame = read_folds(folds)
    train_ids = frame.loc[frame["fold"] != 0, "ID"].astype(str).tolist()
    soft = pd.DataFrame({"image_id": train_ids[:4], "source": "pseudo", "fold": 1})
    rng = np.random.default_rng(0)
    for col in PROB_COLUMNS:
        soft[col] = rng.random(4).astype(np.float32)
    soft.to_parquet(tmp_path / "image_targets.parquet")
    cfg = tiny_config(tmp_path, cache, folds, epochs=1)
    cfg["data"]["soft_labels"] = str(tmp_path / "image_targets.parquet")
    train_loader, _, sampler, val_y = build_loaders(cfg, 0, DistInfo(), torch.device("cpu"))
    ds = train_loader.dataset
    assert np.allclose(ds.targets[:4], soft[PROB_COLUMNS].to_numpy())  # the soft rows replace the labels
    hard = frame.loc[frame["fold"] != 0, "Label"].map(label_to_multihot)
    assert np.array_equal(ds.targets[4:], np.stack(hard.to_list()[4:]).astype(np.float32))  # the rest keep theirs
    assert set(np.unique(val_y)) <= {0.0, 1.0}  # validation keeps the image labels
    summary = fit(cfg, 0)
    assert np.isfinite(summary["history"][0]["train_loss"])
    soft.assign(image_id=[f"nobody{i}" for i in range(4)]).to_parquet(tmp_path / "none.parquet")
    cfg = tiny_config(tmp_path / "b", cache, folds, epochs=1)
    cfg["data"]["soft_labels"] = str(tmp_path / "none.parquet")
    with pytest.raises(TrainError, match="none of the"):
        fit(cfg, 0)
