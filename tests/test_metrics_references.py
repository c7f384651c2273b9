"""The references of wsss-eval (truth-broadcast, oracle), the heterogeneous subset and mAP over classes 0-17."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_metrics_cell import make_truth, perfect_table
from wsss.cli.eval import main as eval_main
from wsss.metrics.cell import evaluate_cells, match_predictions, preds_from_cell_table, truth_from_label_dir
from wsss.metrics.references import heterogeneous_ids, image_truth_labels, oracle, summary_scores, truth_broadcast


@pytest.fixture()
def synth(tmp_path: Path):
    truth = make_truth(tmp_path / "synth")  # A: cells 0 | 0,3 | 3 | 18; B: 3 | 0 (image labels 0|3 both)
    table = perfect_table(tmp_path, truth)
    return table, truth_from_label_dir(tmp_path / "synth"), tmp_path


def test_truth_broadcast_by_hand(synth):
    table, gt, _ = synth
    assert np.flatnonzero(image_truth_labels(gt["A"])).tolist() == [0, 3]  # Negative cells do not add 18
    ref = truth_broadcast(preds_from_cell_table(table), gt)
    assert sorted(set(ref["A"].pred_class.tolist())) == [0, 3] and ref["A"].pred_cell.size == 8
    matches = match_predictions(ref, gt)
    for protocol in ("official", "strict"):
        result = matches.result(protocol)
        # classes 0 and 3: 3 true cells among 6 tied predictions -> AP 1/2; Negative (1 true cell) never predicted
        assert result.ap[[0, 3, 18]] == pytest.approx([0.5, 0.5, 0.0])
        assert result.map == pytest.approx(1 / 3) and result.map_over(range(18)) == pytest.approx(0.5)
    assert matches.tie_range("official") == pytest.approx((1 / 3, 2 / 3))


def test_oracle_is_the_segmentation_bound(synth):
    table, gt, _ = synth
    assert evaluate_cells(oracle(preds_from_cell_table(table), gt), gt).map == pytest.approx(1.0)
    # a segmentation that lost cell A4 (the only Negative cell) and merged B's two cells into one
    lost = table[~((table.image_id == "A") & (table.cell_id == 4))]
    ref = oracle(preds_from_cell_table(lost), gt)
    for protocol in ("official", "strict"):
        result = evaluate_cells(ref, gt, protocol=protocol)
        assert result.ap[[0, 3, 18]] == pytest.approx([1.0, 1.0, 0.0])
    # a predicted cell overlapping no true cell at IoU >= 0.6 gets no prediction at all
    merged = lost.copy()
    merged.loc[merged.image_id == "B", "cell_id"] = 1  # rows point at label 1 only: cell B2's mask is not it
    merged = merged.drop_duplicates(["image_id", "cell_id"])
    shifted = oracle(preds_from_cell_table(merged), gt)
    assert shifted["B"].pred_cell.size == 1 and shifted["B"].pred_class.tolist() == [3]


def test_heterogeneous_subset_and_summary(synth):
    table, gt, _ = synth
    assert heterogeneous_ids(gt) == ["A", "B"]
    gt["B"].labels[:] = gt["B"].labels[0]
    assert heterogeneous_ids(gt) == ["A"]
    scores = summary_scores(preds_from_cell_table(table), gt, ["A"])
    assert set(scores) == {f"{p} {s}{c}" for p in ("official", "strict") for s in ("all", "heterogeneous")
                           for c in ("", " 0-17")}
    assert scores["official heterogeneous"] == pytest.approx(evaluate_cells(preds_from_cell_table(table),
                                                                            {"A": gt["A"]}).map)


def test_eval_cli_references_and_summary(synth, capsys):
    table, _, tmp = synth
    table.to_parquet(tmp / "stage1.parquet")
    out = tmp / "ap.csv"
    assert eval_main([str(tmp / "stage1.parquet"), "--truth", str(tmp / "synth"), "--references", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "truth-broadcast" in printed and "oracle" in printed and "2 heterogeneous" in printed
    summary = pd.read_csv(tmp / "ap_summary.csv").set_index("method")
    assert summary.loc["truth-broadcast", "strict all"] == pytest.approx(1 / 3)
    assert summary.loc["truth-broadcast", "official all 0-17"] == pytest.approx(0.5)
    assert summary.loc["oracle", "official heterogeneous"] == pytest.approx(1.0)
    assert summary.loc["stage1", "strict all"] == pytest.approx(1.0)
    cells = pd.read_csv(out).set_index("name")
    assert cells.loc["mAP@0.6 official classes 0-17", "truth-broadcast"] == pytest.approx(0.5)
    assert eval_main([str(tmp / "stage1.parquet"), "--truth", str(tmp / "synth"), "--references",
                      "--reference-masks", "nope"]) == 2
    assert "--reference-masks nope" in capsys.readouterr().err
