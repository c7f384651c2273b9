"""Stage-1 scoring and CAM normalisation on hand-made arrays (hand-computed expectations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss.data.classes import NEGATIVE
from wsss.infer.cams import forward_cams, normalize_cams, resize_cams
from wsss.infer.scoring import (
    ScoreParams,
    ScoringError,
    bilinear_matrix,
    cell_footprints,
    cell_measures,
    cell_probabilities,
    score_cells,
)
from wsss.masks import MaskError, index_cells

LABELS = np.array([
    [1, 1, 2, 2],
    [1, 1, 2, 2],
    [0, 0, 3, 3],
    [0, 0, 3, 3],
], dtype=np.uint16)


def hand_cams() -> torch.Tensor:
    """Raw CAMs at the label map's own size (so the bilinear resize is the identity)."""
    cams = torch.zeros(19, 4, 4)
    cams[0] = torch.tensor([[4.0, 2, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    cams[1] = torch.tensor([[-1.0, -1, 2, 2], [-1, -1, -1, 2], [-1, -1, -1, -1], [-1, -1, -1, -1]])
    cams[2, 0, 0] = float("nan")  # a broken map: must become zeros, not NaN scores
    cams[2, 1, 1] = 5.0
    cams[3] = -3.0  # no positive evidence anywhere
    return cams


def hand_probs() -> np.ndarray:
    probs = np.full(19, 0.02)
    probs[0], probs[1], probs[2], probs[NEGATIVE] = 0.8, 0.6, 0.9, 0.05
    return probs


def test_normalize_cams_guards_and_peak():
    norm = normalize_cams(hand_cams())
    assert torch.all(norm[2] == 0) and torch.all(norm[3] == 0) and torch.all(norm[5] == 0)
    assert norm[0].max() == 1.0 and norm[1].max() == 1.0
    assert norm[0, 0, 1] == pytest.approx(0.5)
    assert norm[1, 0, 0] == 0.0  # ReLU
    assert torch.isfinite(norm).all() and norm.min() >= 0


def test_hand_computed_scores_geometric():
    cells = index_cells(LABELS)
    assert cells.ids.tolist() == [1, 2, 3]
    params = ScoreParams(threshold=0.3, negative_floor=0.1, cam_weight=1.0)
    probs = score_cells(cells, normalize_cams(hand_cams()), hand_probs(), params)
    # cell 1, class 0: normalised values 1, .5, .5, 0 -> magnitude .5, overlap (>= .3) 3/4
    assert probs[0, 0] == pytest.approx(0.8 * math.sqrt(0.75 * 0.5))
    # cell 2, class 1: values 1, 1, 0, 1 -> magnitude .75, overlap .75
    assert probs[1, 1] == pytest.approx(0.6 * 0.75)
    # class 0 does not reach cell 2, class 1 not cell 1, the NaN map scores nothing
    assert probs[1, 0] == 0 and probs[0, 1] == 0 and np.all(probs[:, 2] == 0)
    # Negative: cells with a class keep the image-level P_18; cell 3 (no activation) gets 1 - 0
    assert probs[0, NEGATIVE] == pytest.approx(0.05) and probs[1, NEGATIVE] == pytest.approx(0.05)
    assert probs[2, NEGATIVE] == pytest.approx(1.0)
    assert np.all(probs[2, :NEGATIVE] == 0)


def test_hand_computed_scores_arithmetic_and_weight():
    cells = index_cells(LABELS)
    params = ScoreParams(threshold=0.3, negative_floor=0.1, combine="arithmetic", overlap_weight=0.25, cam_weight=1.0)
    probs = score_cells(cells, normalize_cams(hand_cams()), hand_probs(), params)
    assert probs[0, 0] == pytest.approx(0.8 * (0.25 * 0.75 + 0.75 * 0.5))
    assert probs[1, 1] == pytest.approx(0.6 * 0.75)


def test_cam_weight_blends_image_probability():
    cells = index_cells(LABELS)
    cams = normalize_cams(hand_cams())
    half = score_cells(cells, cams, hand_probs(), ScoreParams(threshold=0.3, negative_floor=0.1, cam_weight=0.5))
    assert half[0, 0] == pytest.approx(0.8 * (0.5 + 0.5 * math.sqrt(0.75 * 0.5)))
    assert half[1, 0] == pytest.approx(0.8 * 0.5)  # outside class 0's activation: half the image's probability
    assert half[2, NEGATIVE] == pytest.approx(0.05)  # cell 3 keeps classes (best >= floor): not Negative
    image_only = score_cells(cells, cams, hand_probs(), ScoreParams(cam_weight=0.0))
    np.testing.assert_allclose(image_only[:, :NEGATIVE], np.tile(hand_probs()[:NEGATIVE], (3, 1)))


def test_negative_floor_uses_one_minus_best():
    overlap = np.zeros((3, 19))
    magnitude = np.zeros((3, 19))
    overlap[0, 4], magnitude[0, 4] = 0.25, 0.25  # S = .25, p = .2 * .25 = .05 < floor .1
    overlap[1, 4], magnitude[1, 4] = 1.0, 1.0  # p = .2 >= floor
    probs = np.full(19, 0.2)
    probs[NEGATIVE] = 0.3
    out = cell_probabilities(overlap, magnitude, probs, ScoreParams(negative_floor=0.1, cam_weight=1.0))
    assert out[0, 4] == pytest.approx(0.05)
    assert out[0, NEGATIVE] == pytest.approx(0.95)
    assert out[1, NEGATIVE] == pytest.approx(0.3)
    assert out[2, NEGATIVE] == pytest.approx(1.0)
    no_image_neg = cell_probabilities(overlap, magnitude, probs, ScoreParams(image_negative=False, negative_floor=0.1,
                                                                               cam_weight=1.0))
    assert no_image_neg[1, NEGATIVE] == 0.0 and no_image_neg[0, NEGATIVE] == pytest.approx(0.95)


def test_footprints_equal_explicit_resize_and_mean():
    rng = np.random.default_rng(3)
    labels = np.kron(rng.integers(0, 9, (6, 7)), np.ones((11, 9), dtype=np.int64))[:61, :60]
    cams = normalize_cams(torch.randn(19, 5, 6))
    cells = index_cells(labels)
    overlap, magnitude = cell_measures(cell_footprints(cells, (5, 6)), cams, 0.4)
    up = resize_cams(cams, labels.shape).numpy()
    up_act = resize_cams((cams >= 0.4).float(), labels.shape).numpy()
    for k, cid in enumerate(cells.ids):
        inside = labels == cid
        np.testing.assert_allclose(magnitude[k], up[:, inside].mean(axis=1), atol=1e-5)
        np.testing.assert_allclose(overlap[k], up_act[:, inside].mean(axis=1), atol=1e-5)


def test_bilinear_matrix_matches_interpolate():
    x = torch.randn(7, generator=torch.Generator().manual_seed(0))
    ref = torch.nn.functional.interpolate(x[None, None], size=45, mode="linear", align_corners=False)[0, 0]
    np.testing.assert_allclose(bilinear_matrix(45, 7) @ x.numpy(), ref.numpy(), atol=1e-5)


def test_index_cells_boxes_border_and_sparse_ids():
    labels = np.zeros((6, 8), dtype=np.uint16)
    labels[1:3, 2:5] = 7
    labels[3:6, 6:8] = 42
    cells = index_cells(labels)
    assert cells.ids.tolist() == [7, 42]
    assert cells.area.tolist() == [6, 6]
    assert cells.boxes.tolist() == [[2, 1, 5, 3], [6, 3, 8, 6]]
    assert cells.border.tolist() == [False, True]
    empty = index_cells(np.zeros((4, 4), dtype=np.uint8))
    assert empty.num_cells == 0
    assert score_cells(empty, torch.zeros(19, 2, 2), np.zeros(19), ScoreParams()).shape == (0, 19)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(MaskError, match="2-D"):
        index_cells(np.zeros((2, 2, 2), dtype=np.int32))
    with pytest.raises(ScoringError, match="combine"):
        ScoreParams(combine="max")
    with pytest.raises(ScoringError, match="19"):
        cell_probabilities(np.zeros((1, 19)), np.zeros((1, 19)), np.zeros(3), ScoreParams())


class _FlipEquivariant(torch.nn.Module):
    """1x1 conv then 2x2 pooling: flipping the input flips the CAM (even sizes)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 19, 1)

    def forward(self, x):
        cams = torch.nn.functional.avg_pool2d(self.conv(x), 2)
        return cams.mean((2, 3)), cams


def test_flip_tta_flips_cams_back():
    model = _FlipEquivariant().eval()
    x = torch.randn(2, 4, 16, 16)
    p0, c0 = forward_cams(model, x)
    p1, c1 = forward_cams(model, x, tta=("hflip", "vflip", "hvflip"))
    torch.testing.assert_close(c0, c1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p0, p1, atol=1e-6, rtol=1e-6)
    assert c0.shape == (2, 19, 8, 8) and p0.shape == (2, 19)
    with pytest.raises(ValueError, match="TTA"):
        forward_cams(model, x, tta=("rot45",))
