"""ComboLoss terms against hand computations; image-level macro F1 / mAP against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss.losses import ComboLoss, bce_term, combo_loss, reconstruction_l1, rec_weight
from wsss.metrics.image import average_precision, chance_map, macro_f1, macro_map, per_class_f1


def _bce(z: float, y: float) -> float:
    p = 1.0 / (1.0 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_bce_term_by_hand() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = (_bce(2, 1) + _bce(-1, 0) + _bce(0.5, 0) + _bce(0, 1)) / 4
    assert float(bce_term(logits, y)) == pytest.approx(expected, rel=1e-6)


def test_reconstruction_l1_by_hand_plain_and_masked() -> None:
    cams = torch.zeros(1, 2, 1, 2)
    merged = torch.tensor([[[[1.0, -3.0]], [[0.5, 0.5]]]])
    # |diffs| = 1, 3 (class 0), 0.5, 0.5 (class 1): mean over 4 elements
    assert float(reconstruction_l1(cams, merged)) == pytest.approx((1 + 3 + 0.5 + 0.5) / 4)
    y = torch.tensor([[0.0, 1.0]])
    # masked: class 0 absent -> its terms are zero, still averaged over all 4 elements
    assert float(reconstruction_l1(cams, merged, y, mask_by_labels=True)) == pytest.approx((0.5 + 0.5) / 4)
    with pytest.raises(ValueError, match="shapes differ"):
        reconstruction_l1(cams, merged[..., :1])


def test_combo_loss_weights_and_terms_by_hand() -> None:
    logits = torch.tensor([[1.0, -2.0]])
    puzzle_logits = torch.tensor([[0.0, 3.0]])
    cams = torch.tensor([[[[1.0, 1.0]], [[-2.0, -2.0]]]])
    merged = torch.tensor([[[[0.0, 0.0]], [[3.0, 3.0]]]])
    y = torch.tensor([[1.0, 0.0]])
    full = (_bce(1, 1) + _bce(-2, 0)) / 2
    puzzle = (_bce(0, 1) + _bce(3, 0)) / 2
    rec = (1 + 1 + 5 + 5) / 4
    terms = combo_loss(logits, cams, puzzle_logits, merged, y, w_full=0.5, w_puzzle=2.0, w_rec=0.25)
    assert float(terms.full) == pytest.approx(full, rel=1e-6)
    assert float(terms.puzzle) == pytest.approx(puzzle, rel=1e-6)
    assert float(terms.rec) == pytest.approx(rec, rel=1e-6)
    assert float(terms.total) == pytest.approx(0.5 * full + 2.0 * puzzle + 0.25 * rec, rel=1e-6)
    module = ComboLoss(0.5, 2.0, 0.25)
    out = module((logits, cams, puzzle_logits, merged), y)
    assert float(out.total) == pytest.approx(float(terms.total))
    assert float(module((logits, cams, puzzle_logits, merged), y, w_rec=0.0).total) == pytest.approx(0.5 * full + 2 * puzzle)


def test_combo_loss_is_float32_under_bf16_and_backpropagates() -> None:
    cams = torch.randn(2, 3, 2, 2, requires_grad=True)
    merged = torch.randn(2, 3, 2, 2)
    y = torch.tensor([[1.0, 0, 0], [0, 1.0, 1.0]])
    terms = combo_loss(cams.bfloat16().mean((2, 3)), cams.bfloat16(), merged.mean((2, 3)), merged, y)
    assert terms.total.dtype == torch.float32
    terms.total.backward()
    assert cams.grad is not None and torch.isfinite(cams.grad).all()


def test_rec_weight_linear_warmup() -> None:
    assert rec_weight(0.4, 0, 10) == 0.0
    assert rec_weight(0.4, 5, 10) == pytest.approx(0.2)
    assert rec_weight(0.4, 25, 10) == pytest.approx(0.4)
    assert rec_weight(0.4, 0, 0) == pytest.approx(0.4)


def test_macro_f1_by_hand() -> None:
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    p = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.1, 0.7, 0.0]])
    # class 0: TP1 FP1 FN1 -> 0.5; class 1: TP1 FP1 FN1 -> 0.5; class 2: undefined (left out)
    f1 = per_class_f1(y, p, 0.5)
    assert f1[:2] == pytest.approx([0.5, 0.5]) and np.isnan(f1[2])
    assert macro_f1(y, p, 0.5) == pytest.approx(0.5)
    # a class with no positives but a false positive counts as 0
    p2 = p.copy()
    p2[0, 2] = 0.9
    assert macro_f1(y, p2, 0.5) == pytest.approx(1.0 / 3.0)


def test_average_precision_by_hand_with_ties() -> None:
    # scores 0.9(+) 0.8(-) 0.7(+) 0.1(-): AP = 0.5*1 + 0.5*(2/3)
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 + 1 / 3)
    # a tie between a positive and a negative forms one step: precision 1/2 at recall 1
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_macro_map_perfect_chance_and_skips_absent_classes() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((400, 4)) < [0.5, 0.2, 0.05, 0.0]).astype(int)
    assert macro_map(y, y + 0.01 * rng.random(y.shape)) == pytest.approx(1.0)
    random_map = macro_map(y, rng.random(y.shape))
    assert abs(random_map - chance_map(y)) < 0.08
    assert chance_map(y) == pytest.approx(y[:, :3].mean(0).mean())


def test_macro_map_matches_sklearn_when_available() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y = (rng.random((60, 5)) < 0.3).astype(int)
    p = np.round(rng.random((60, 5)), 1)  # many ties
    expected = np.mean([metrics.average_precision_score(y[:, c], p[:, c]) for c in range(5)])
    assert macro_map(y, p) == pytest.approx(expected)
