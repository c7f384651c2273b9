"""Per-cell mAP at IoU 0.6 against hand-computed cases, and end to end from files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from wsss.cli.eval import main as eval_main
from wsss.metrics.cell import (
    ImageCells,
    MetricError,
    average_precision,
    cell_map,
    evaluate_cells,
    match_image_class,
    preds_from_cell_table,
    preds_from_submission,
    truth_from_label_dir,
    truth_from_submission,
)
from wsss.schema import PROB_COLUMNS
from wsss.submission import build_submission, read_submission, write_submission


def image(iou, gt_classes, preds, image_id="img"):
    """ImageCells from an IoU matrix, per-GT class lists and (pred_cell, class, score) triplets."""
    iou = np.asarray(iou, dtype=float).reshape(-1, len(gt_classes))
    gt = np.zeros((len(gt_classes), 19), bool)
    for i, classes in enumerate(gt_classes):
        gt[i, classes] = True
    cell, cls, score = (np.asarray(v) for v in zip(*preds)) if preds else (np.zeros(0, int),) * 3
    return ImageCells(image_id, iou, gt, cell.astype(int), cls.astype(int), score.astype(float))


def test_one_class():
    # GT A, B, C of class 0; pred 0 hits A (IoU 1), pred 1 overlaps B at 0.5 (FP), pred 2 hits C at 0.7
    img = image([[1, 0, 0], [0, 0.5, 0], [0, 0, 0.7]], [[0], [0], [0]], [(0, 0, 0.9), (1, 0, 0.8), (2, 0, 0.7)])
    res = cell_map([img])
    # precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3 -> envelope 1, 2/3, 2/3 -> AP = 1/3 + 1/3 * 2/3
    assert res.ap[0] == pytest.approx(5 / 9)
    assert res.map == pytest.approx(5 / 9)
    assert (res.n_gt[0], res.n_pred[0], res.n_tp[0]) == (3, 3, 2)


def test_several_classes_across_images():
    img1 = image([[1, 0, 0], [0, 0.5, 0], [0, 0, 0.7]], [[0], [0], [0]], [(0, 0, 0.9), (1, 0, 0.8), (2, 0, 0.7)], "i1")
    # image 2: one GT cell of class 1; pred cell 0 covers it (IoU 0.65), pred cell 1 covers nothing
    img2 = image([[0.65], [0.0]], [[1]], [(0, 1, 0.5), (1, 1, 0.6), (0, 0, 0.75)], "i2")
    res = cell_map([img1, img2], protocol="strict")
    # class 0: TP .9, FP .8, FP .75 (no class-0 GT in image 2), TP .7 -> P 1, .5, 1/3, .5; R 1/3,1/3,1/3,2/3
    assert res.ap[0] == pytest.approx(1 / 3 + 1 / 3 * 0.5)
    # class 1: FP .6 then TP .5 -> P 0, .5 at R 0, 1 -> AP .5
    assert res.ap[1] == pytest.approx(0.5)
    assert res.map == pytest.approx(0.5)
    assert np.isnan(res.ap[2:]).all()
    # official: class 0 is not evaluatable in image 2, its .75 prediction is dropped -> TP, FP, TP
    official = cell_map([img1, img2])
    assert official.ap[0] == pytest.approx(5 / 9) and official.n_pred[0] == 3
    assert official.ap[1] == pytest.approx(0.5)


def test_duplicates_are_false_positives():
    # GT A, B of class 3; a second prediction on A (another pred cell, IoU 0.8) scores between them
    img = image([[1, 0], [0.8, 0], [0, 0.9]], [[3], [3]], [(0, 3, 0.9), (1, 3, 0.8), (2, 3, 0.7)])
    assert cell_map([img]).ap[3] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # the same pred cell listed twice for the class behaves the same
    img = image([[1, 0], [0, 0.9]], [[3], [3]], [(0, 3, 0.9), (0, 3, 0.8), (1, 3, 0.7)])
    assert cell_map([img]).ap[3] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_a_miss_and_an_unpredicted_image():
    img = image([[1, 0]], [[4], [4]], [(0, 4, 0.9)])
    assert cell_map([img]).ap[4] == pytest.approx(0.5)
    unseen = image(np.zeros((0, 2)), [[4], [4]], [], "unseen")
    assert cell_map([img, unseen]).ap[4] == pytest.approx(0.25)


def test_class_without_gt_is_excluded_and_class_without_preds_scores_zero():
    img = image([[1, 0], [0, 1]], [[0], [2]], [(0, 0, 0.9), (1, 5, 0.99), (0, 5, 0.98)])
    assert cell_map([img]).n_pred[5] == 0                   # official: class 5 is not evaluatable, dropped
    res = cell_map([img], protocol="strict")
    assert np.isnan(res.ap[5]) and res.n_pred[5] == 2       # class 5 has no GT: ignored
    assert res.ap[0] == 1.0 and res.ap[2] == 0.0             # class 2 has GT but no prediction
    assert res.map == pytest.approx(0.5)


def test_iou_threshold_is_inclusive():
    assert cell_map([image([[0.6]], [[0]], [(0, 0, 0.5)])]).ap[0] == 1.0
    assert cell_map([image([[0.5999]], [[0]], [(0, 0, 0.5)])]).ap[0] == 0.0
    assert cell_map([image([[0.5]], [[0]], [(0, 0, 0.5)])], iou_threshold=0.5).ap[0] == 1.0


def test_highest_iou_not_yet_matched_gt():
    # overlapping GTs G0, G1 of class 0; the higher-scoring pred 1 takes G0, pred 0 then takes G1 (IoU 0.7)
    iou = [[0.9, 0.7], [0.95, 0.0]]
    tp = match_image_class(np.asarray(iou), np.array([0, 1]), np.array([0, 1]), np.array([0.8, 0.9]))
    assert tp.tolist() == [True, True]
    # when the only remaining GT is below the threshold the prediction is a false positive
    iou = [[0.9, 0.3], [0.95, 0.0]]
    tp = match_image_class(np.asarray(iou), np.array([0, 1]), np.array([0, 1]), np.array([0.8, 0.9]))
    assert tp.tolist() == [False, True]
    # official (Open Images): pred 0's best cell G0 is taken, so it is a false positive, no fall-back to G1
    iou = [[0.9, 0.7], [0.95, 0.0]]
    tp = match_image_class(np.asarray(iou), np.array([0, 1]), np.array([0, 1]), np.array([0.8, 0.9]), fall_back=False)
    assert tp.tolist() == [False, True]


def test_ties():
    # one GT; a TP and an FP with the same confidence
    tp_first = image([[1.0], [0.0]], [[0]], [(0, 0, 0.5), (1, 0, 0.5)])
    fp_first = image([[0.0], [1.0]], [[0]], [(0, 0, 0.5), (1, 0, 0.5)])
    assert cell_map([tp_first]).ap[0] == pytest.approx(0.5)          # group: one point P=.5, R=1
    assert cell_map([fp_first]).ap[0] == pytest.approx(0.5)
    assert cell_map([tp_first], ties="stable").ap[0] == pytest.approx(1.0)
    assert cell_map([fp_first], ties="stable").ap[0] == pytest.approx(0.5)
    with pytest.raises(MetricError):
        average_precision(np.ones(1), np.ones(1, bool), 1, ties="random")


# --------------------------------------------------------------------------- from files


def make_truth(root: Path) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Two synthetic-format images: 64x64 uint16 cell PNGs and cell_labels.csv."""
    (root / "masks").mkdir(parents=True)
    truth = {}
    a = np.zeros((64, 64), np.uint16)
    a[0:32, 0:32], a[0:32, 32:64], a[32:64, 0:32], a[40:60, 40:60] = 1, 2, 3, 4
    truth["A"] = (a, ["0", "0|3", "3", "18"])
    b = np.zeros((64, 64), np.uint16)
    b[8:40, 8:40], b[44:60, 4:60] = 1, 2
    truth["B"] = (b, ["3", "0"])
    rows = []
    for image_id, (labels, cell_labels) in truth.items():
        cv2.imwrite(str(root / "masks" / f"{image_id}_cells.png"), labels)
        rows += [(image_id, i + 1, lab) for i, lab in enumerate(cell_labels)]
    pd.DataFrame(rows, columns=["ID", "cell_id", "Label"]).to_csv(root / "cell_labels.csv", index=False)
    pd.DataFrame({"ID": ["A", "B"], "Label": ["0|3|18", "0|3"]}).to_csv(root / "train.csv", index=False)
    return truth


def perfect_table(tmp_path: Path, truth: dict) -> pd.DataFrame:
    """Per-cell table whose label maps are the truth at half scale and whose probabilities are the labels."""
    rows = []
    for image_id, (labels, cell_labels) in truth.items():
        small = cv2.resize(labels, (32, 32), interpolation=cv2.INTER_NEAREST)
        npz = tmp_path / f"{image_id}.npz"
        np.savez_compressed(npz, cells=small, nuclei=small, orig_height=64, orig_width=64, border=np.zeros(5, bool))
        for cid, lab in enumerate(cell_labels, start=1):
            probs = np.full(19, 0.05)
            probs[[int(c) for c in lab.split("|")]] = 0.9
            rows.append({"image_id": image_id, "cell_id": cid, "source": "t", "fold": 0, "orig_width": 64,
                         "orig_height": 64, "mask_path": str(npz), **dict(zip(PROB_COLUMNS, probs))})
    return pd.DataFrame(rows)


def test_end_to_end_table_submission_and_gt_csv(tmp_path: Path):
    truth_dir = tmp_path / "synth"
    truth = make_truth(truth_dir)
    table = perfect_table(tmp_path, truth)
    gt = truth_from_label_dir(truth_dir)
    assert evaluate_cells(preds_from_cell_table(table), gt).map == pytest.approx(1.0)
    # swap the probabilities of cells 1 and 3 of image A: class-0 and class-3 rankings get errors
    bad = table.copy()
    i1 = bad.index[(bad.image_id == "A") & (bad.cell_id == 1)][0]
    i3 = bad.index[(bad.image_id == "A") & (bad.cell_id == 3)][0]
    bad.loc[[i1, i3], PROB_COLUMNS] = bad.loc[[i3, i1], PROB_COLUMNS].to_numpy()
    res_table = evaluate_cells(preds_from_cell_table(bad), gt)
    assert res_table.map < 1.0
    sub_path = write_submission(build_submission(bad), tmp_path / "sub.csv")
    res_sub = evaluate_cells(preds_from_submission(read_submission(sub_path)), gt)
    assert np.allclose(res_sub.ap, res_table.ap, equal_nan=True)
    # ground truth written in submission format gives the same scores
    gt_rows = table.copy()
    gt_rows[PROB_COLUMNS] = 0.0
    for row in gt_rows.itertuples():
        for c in truth[row.image_id][1][row.cell_id - 1].split("|"):
            gt_rows.loc[row.Index, f"p_{c}"] = 1.0
    gt_path = write_submission(build_submission(gt_rows, min_confidence=0.5), tmp_path / "gt.csv")
    res_gtcsv = evaluate_cells(preds_from_cell_table(bad), truth_from_submission(read_submission(gt_path)))
    assert np.allclose(res_gtcsv.ap, res_table.ap, equal_nan=True)


def test_size_mismatch_raises(tmp_path: Path):
    truth_dir = tmp_path / "synth"
    truth = make_truth(truth_dir)
    table = perfect_table(tmp_path, truth)
    table["orig_width"] = 128
    ones = np.ones((32, 32), np.uint16)
    np.savez_compressed(tmp_path / "A.npz", cells=ones, nuclei=ones, orig_height=64, orig_width=128,
                        border=np.zeros(2, bool))
    with pytest.raises(MetricError, match="64x128"):
        evaluate_cells(preds_from_cell_table(table), truth_from_label_dir(truth_dir))


def test_unknown_cell_in_label_table_raises(tmp_path: Path):
    truth_dir = tmp_path / "synth"
    make_truth(truth_dir)
    with open(truth_dir / "cell_labels.csv", "a") as handle:
        handle.write("A,9,0\n")
    with pytest.raises(MetricError, match=r"cell id\(s\) \[9\]"):
        truth_from_label_dir(truth_dir)


def test_eval_cli(tmp_path: Path, capsys):
    truth_dir = tmp_path / "synth"
    truth = make_truth(truth_dir)
    table = perfect_table(tmp_path, truth)
    table.to_parquet(tmp_path / "stage1.parquet")
    write_submission(build_submission(table), tmp_path / "sub.csv")
    images = table.groupby("image_id")[PROB_COLUMNS].max().reset_index()
    images.to_parquet(tmp_path / "images.parquet")
    out = tmp_path / "report" / "ap.csv"
    code = eval_main([str(tmp_path / "stage1.parquet"), str(tmp_path / "sub.csv"), str(tmp_path / "images.parquet"),
                      "--truth", str(truth_dir), "--out", str(out), "--plot", str(tmp_path / "ap.png")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mAP@0.6" in printed and "image-level" in printed
    cells = pd.read_csv(out).set_index("name")
    for row in ("mAP@0.6 official", "official best tie order", "official worst tie order", "mAP@0.6 strict"):
        assert cells.loc[row, "stage1"] == pytest.approx(1.0) and cells.loc[row, "sub"] == pytest.approx(1.0)
    image_table = pd.read_csv(tmp_path / "report" / "ap_image.csv")
    assert image_table["images AP"].iloc[-1] == pytest.approx(1.0)
    assert (tmp_path / "ap.png").stat().st_size > 0


def test_eval_cli_bad_input_one_line(tmp_path: Path, capsys):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    assert eval_main([str(tmp_path / "x.csv"), "--truth", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.csv" in err[0]
