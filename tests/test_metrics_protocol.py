"""The official (HPA / Open Images challenge) protocol against the strict one, box against mask
overlap, and the tie range, each against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from wsss.cli.eval import main as eval_main
from wsss.masks.boxes import box_iou, cell_boxes, label_map_boxes, pairwise_box_iou
from wsss.metrics.cell import (
    ImageCells,
    MetricError,
    PredImage,
    TruthImage,
    cell_map,
    evaluate_cells,
    match_cells,
    match_predictions,
)
from wsss.schema import PROB_COLUMNS
from wsss.masks import CellMasks, cell_masks_from_label_map

N_CLASSES = 19


def image(gt_classes: list[list[int]], scores: np.ndarray, image_id: str = "img") -> ImageCells:
    """ImageCells with one predicted cell per true cell (IoU identity) and an ``n x 19`` score matrix."""
    n = len(gt_classes)
    gt = np.zeros((n, N_CLASSES), bool)
    for i, classes in enumerate(gt_classes):
        gt[i, classes] = True
    scores = np.asarray(scores, dtype=float).reshape(-1, N_CLASSES)
    cell, cls = np.nonzero(np.isfinite(scores))
    return ImageCells(image_id, np.eye(scores.shape[0], n), gt, cell, cls, scores[cell, cls])


def spray(gt_classes: list[list[int]], image_id: str) -> ImageCells:
    """Every cell gets its true classes at 0.5 and every other class at 0.9."""
    scores = np.full((len(gt_classes), N_CLASSES), 0.9)
    for i, classes in enumerate(gt_classes):
        scores[i, classes] = 0.5
    return image(gt_classes, scores, image_id)


def test_spray_submission_scores_one_officially_and_far_less_strictly():
    # four homogeneous images, two cells each, classes 0..3
    images = [spray([[c], [c]], f"i{c}") for c in range(4)]
    official = cell_map(images)
    assert official.map == pytest.approx(1.0)
    assert official.n_pred[:4].tolist() == [2, 2, 2, 2]          # the 0.9 sprays are not evaluatable
    strict = cell_map(images, protocol="strict")
    # class c: six 0.9 FPs (the other images' cells) before its two 0.5 TPs -> envelope 2/8 over recall 1
    assert strict.ap[:4] == pytest.approx([0.25] * 4)
    assert strict.map == pytest.approx(0.25)


def test_wrong_class_where_the_image_has_it_elsewhere_is_a_false_positive_under_both():
    # cell 0 is class 0, cell 1 class 1; class 0 is also predicted (higher) on cell 1
    scores = np.full((2, N_CLASSES), np.nan)
    scores[0, 0], scores[1, 0], scores[1, 1] = 0.5, 0.9, 0.8
    img = image([[0], [1]], scores)
    for protocol in ("official", "strict"):
        res = cell_map([img], protocol=protocol)
        assert res.ap[0] == pytest.approx(0.5), protocol     # FP .9, then TP .5: P 1/2 at R 1
        assert res.ap[1] == pytest.approx(1.0), protocol
        assert res.map == pytest.approx(0.75), protocol


def test_predictions_on_an_image_without_truth_are_ignored_officially():
    scores = np.full((1, N_CLASSES), np.nan)
    scores[0, 0] = 0.5
    with_truth = image([[0]], scores, "truth")
    no_truth = ImageCells("empty", np.zeros((1, 0)), np.zeros((0, N_CLASSES), bool), np.array([0]), np.array([0]),
                          np.array([0.9]))
    assert cell_map([with_truth, no_truth]).ap[0] == pytest.approx(1.0)
    assert cell_map([with_truth, no_truth]).n_pred[0] == 1
    assert cell_map([with_truth, no_truth], protocol="strict").ap[0] == pytest.approx(0.5)   # FP .9, TP .5


def test_one_matching_serves_both_protocols():
    images = [spray([[0], [0, 1]], "a"), spray([[1]], "b")]
    matches = match_cells(images)
    assert matches.result("official").map == pytest.approx(cell_map(images).map)
    assert matches.result("strict").map == pytest.approx(cell_map(images, protocol="strict").map)
    with pytest.raises(MetricError, match="protocol"):
        cell_map(images, protocol="kaggle")
    with pytest.raises(MetricError, match="protocol"):
        match_cells(images, protocols=("official",)).result("strict")


def test_tie_range_of_a_naive_submission():
    # naive: every cell of an image gets the image's probabilities; cells A, B are class 0, cell C class 1
    probs = np.full(N_CLASSES, np.nan)
    probs[0], probs[1] = 0.8, 0.6
    img = image([[0], [0], [1]], np.tile(probs, (3, 1)))
    matches = match_cells([img])
    # class 0: three tied predictions, two TPs -> group: P 2/3 at R 1; best order TP, TP, FP -> 1;
    # worst order FP, TP, TP -> P 1/2 and 2/3 at R 1/2 and 1, envelope 2/3 -> 2/3.
    # class 1: one TP among three ties -> group 1/3, best 1, worst 1/3.
    group = matches.result("official", "group")
    assert group.ap[:2] == pytest.approx([2 / 3, 1 / 3])
    assert matches.result("official", "best").ap[:2] == pytest.approx([1.0, 1.0])
    assert matches.result("official", "worst").ap[:2] == pytest.approx([2 / 3, 1 / 3])
    worst, best = matches.tie_range("official")
    assert (worst, best) == pytest.approx((0.5, 1.0))
    assert worst <= group.map <= best
    # any order of the ties lies inside the range
    stable = matches.result("official", "stable").map
    assert worst - 1e-12 <= stable <= best + 1e-12


# --------------------------------------------------------------------------- boxes


def test_box_convention_and_box_iou():
    labels = np.zeros((8, 8), np.uint16)
    labels[2, 3] = 1                      # one pixel -> rows 2..3, cols 3..4
    labels[1:4, 5:8] = 2
    boxes = label_map_boxes(labels, np.array([1, 2, 7]), 8, 8)
    assert boxes.tolist() == [[2, 3, 3, 4], [1, 5, 4, 8], [0, 0, 0, 0]]
    # half-scale map: every working pixel is a 2x2 block of the original
    assert label_map_boxes(labels, np.array([1]), 16, 16).tolist() == [[4, 6, 6, 8]]
    assert box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3], [0, 0, 2, 2], [0, 0, 0, 0]])[0] == pytest.approx([1 / 7, 1, 0])


def test_boxes_of_rles_equal_boxes_of_label_maps():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 5, (20, 30)).astype(np.uint16)
    as_map = cell_masks_from_label_map(small, 50, 70, ids=[1, 2, 3, 4])
    as_rles = CellMasks(ids=as_map.ids, height=50, width=70, rles=as_map.to_rles())
    full = cv2.resize(small, (70, 50), interpolation=cv2.INTER_NEAREST)
    expected = []
    for cell in (1, 2, 3, 4):
        r, c = np.nonzero(full == cell)
        expected.append([r.min(), c.min(), r.max() + 1, c.max() + 1])
    assert cell_boxes(as_map).tolist() == expected
    assert cell_boxes(as_rles).tolist() == expected
    assert pairwise_box_iou(as_map, as_rles) == pytest.approx(pairwise_box_iou(as_map, as_map))


def ragged_case() -> tuple[dict[str, PredImage], dict[str, TruthImage]]:
    """Two cells of class 0 where mask and box IoU disagree in opposite directions.

    Cell 1: the truth is an L (left and bottom strips of a 32 px square), the prediction the
    mirrored L (top and right strips): same box (box IoU 1), mask IoU 32 / 448.
    Cell 2: the truth is a 20 x 20 square, the prediction the square plus a one-pixel spur of
    34 px: mask IoU 400 / 434, box IoU 400 / (20 x 54).
    """
    gt = np.zeros((64, 64), np.uint16)
    gt[0:32, 0:4] = 1
    gt[28:32, 0:32] = 1
    gt[40:60, 10:30] = 2
    pred = np.zeros((64, 64), np.uint16)
    pred[0:4, 0:32] = 1
    pred[0:32, 28:32] = 1
    pred[40:60, 10:30] = 2
    pred[40, 30:64] = 2
    labels = np.zeros((2, N_CLASSES), bool)
    labels[:, 0] = True
    truth = {"r": TruthImage(cell_masks_from_label_map(gt, 64, 64, ids=[1, 2]), labels)}
    preds = {"r": PredImage(cell_masks_from_label_map(pred, 64, 64, ids=[1, 2]), np.array([0, 1]), np.array([0, 0]),
                            np.array([0.9, 0.8]))}
    return preds, truth


def test_box_against_mask_on_ragged_masks():
    preds, truth = ragged_case()
    from wsss.metrics.cell import pairwise_overlap

    mask_iou = pairwise_overlap(preds["r"].masks, truth["r"].masks, "mask")
    box = pairwise_overlap(preds["r"].masks, truth["r"].masks, "box")
    assert np.diag(mask_iou) == pytest.approx([32 / 448, 400 / 434])
    assert np.diag(box) == pytest.approx([1.0, 400 / 1080])
    # mask: FP .9 then TP .8 -> P 1/2 at R 1/2 -> AP 1/4; box: TP .9, FP .8 -> AP 1/2
    assert evaluate_cells(preds, truth, overlap="mask").ap[0] == pytest.approx(0.25)
    assert evaluate_cells(preds, truth, overlap="box").ap[0] == pytest.approx(0.5)
    with pytest.raises(MetricError, match="overlap"):
        match_predictions(preds, truth, overlap="polygon")


def test_box_and_mask_agree_on_clean_masks():
    gt = np.zeros((64, 64), np.uint16)
    gt[0:30, 0:30], gt[0:30, 32:64], gt[34:64, 0:64] = 1, 2, 3
    labels = np.zeros((3, N_CLASSES), bool)
    labels[[0, 1, 2], [0, 1, 0]] = True
    truth = {"c": TruthImage(cell_masks_from_label_map(gt, 64, 64), labels)}
    small = cv2.resize(gt, (32, 32), interpolation=cv2.INTER_NEAREST)
    preds = {"c": PredImage(cell_masks_from_label_map(small, 64, 64), np.array([0, 1, 2, 1]), np.array([0, 1, 0, 0]),
                            np.array([0.9, 0.8, 0.7, 0.95]))}
    for protocol in ("official", "strict"):
        by_mask = evaluate_cells(preds, truth, protocol=protocol, overlap="mask")
        by_box = evaluate_cells(preds, truth, protocol=protocol, overlap="box")
        assert np.allclose(by_mask.ap, by_box.ap, equal_nan=True)
        assert by_mask.overlap == "mask" and by_box.overlap == "box" and by_box.protocol == protocol


# --------------------------------------------------------------------------- command line


def test_eval_cli_protocols(tmp_path: Path, capsys):
    """Spray table on a synthetic-format truth: official 1.0, strict less; both printed and labelled."""
    root = tmp_path / "synth"
    (root / "masks").mkdir(parents=True)
    rows, cells = [], []
    for k in range(3):
        labels = np.zeros((32, 32), np.uint16)
        labels[2:14, 2:14], labels[18:30, 18:30] = 1, 2
        cv2.imwrite(str(root / "masks" / f"I{k}_cells.png"), labels)
        npz = tmp_path / f"I{k}.npz"
        np.savez_compressed(npz, cells=labels, nuclei=labels, orig_height=32, orig_width=32, border=np.zeros(3, bool))
        for cid in (1, 2):
            rows.append((f"I{k}", cid, str(k)))
            probs = np.full(N_CLASSES, 0.9)
            probs[k] = 0.5
            cells.append({"image_id": f"I{k}", "cell_id": cid, "source": "t", "fold": 0, "orig_width": 32,
                          "orig_height": 32, "mask_path": str(npz), **dict(zip(PROB_COLUMNS, probs))})
    pd.DataFrame(rows, columns=["ID", "cell_id", "Label"]).to_csv(root / "cell_labels.csv", index=False)
    pd.DataFrame(cells).to_parquet(tmp_path / "spray.parquet")
    out = tmp_path / "ap.csv"
    assert eval_main([str(tmp_path / "spray.parquet"), "--truth", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "official protocol, mask IoU >= 0.6" in printed and "strict" in printed
    table = pd.read_csv(out).set_index("name")
    assert table.loc["mAP@0.6 official", "spray"] == pytest.approx(1.0)
    # strict: class k has four 0.9 FPs before its two 0.5 TPs -> 2/6
    assert table.loc["mAP@0.6 strict", "spray"] == pytest.approx(1 / 3)
    assert eval_main([str(tmp_path / "spray.parquet"), "--truth", str(root), "--out", str(out),
                      "--protocol", "strict", "--overlap", "box"]) == 0
    printed = capsys.readouterr().out
    assert "strict protocol, box IoU >= 0.6" in printed
    table = pd.read_csv(out).set_index("name")
    assert table.loc["mAP@0.6 strict", "spray"] == pytest.approx(1 / 3)
    assert table.loc["mAP@0.6 official", "spray"] == pytest.approx(1.0)


def test_group_ties_equal_the_worst_order():
    from wsss.metrics.cell import average_precision

    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 30))
        scores = rng.integers(0, 4, n) / 4.0
        tp = rng.random(n) < 0.5
        n_gt = int(tp.sum() + rng.integers(0, 3)) or 1
        group = average_precision(scores, tp, n_gt, "group")
        assert group == pytest.approx(average_precision(scores, tp, n_gt, "worst"))
        assert group <= average_precision(scores, tp, n_gt, "stable") + 1e-12
        assert average_precision(scores, tp, n_gt, "stable") <= average_precision(scores, tp, n_gt, "best") + 1e-12


def test_eval_cli_image_without_truth_in_a_truth_submission(tmp_path: Path):
    """Truth as a submission CSV where image E has no cells: its predictions count only under strict."""
    from wsss.masks import encode_binary_mask
    from wsss.submission import format_prediction_string, write_submission

    mask = np.zeros((32, 32), bool)
    mask[4:20, 4:20] = True
    string = encode_binary_mask(mask)
    truth = pd.DataFrame({"ID": ["T", "E"], "ImageWidth": [32, 32], "ImageHeight": [32, 32],
                          "PredictionString": [format_prediction_string([(2, 1.0, string)]), ""]})
    pred = truth.copy()
    pred["PredictionString"] = [format_prediction_string([(2, 0.5, string)]),
                                format_prediction_string([(2, 0.9, string)])]
    write_submission(truth, tmp_path / "truth.csv")
    write_submission(pred, tmp_path / "pred.csv")
    out = tmp_path / "ap.csv"
    for overlap in ("mask", "box"):
        assert eval_main([str(tmp_path / "pred.csv"), "--truth", str(tmp_path / "truth.csv"), "--out", str(out),
                          "--overlap", overlap]) == 0
        table = pd.read_csv(out).set_index("name")
        assert table.loc["mAP@0.6 official", "pred"] == pytest.approx(1.0)
        assert table.loc["mAP@0.6 strict", "pred"] == pytest.approx(0.5)     # FP .9 on E, then TP .5
