"""Watershed model pieces without training: targets, post-processing round trip, network shapes, losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpa_seg.evaluate import agreement
from wsss.watershed.losses import watershed_loss
from wsss.watershed.model import WatershedNet, pad_to_stride
from wsss.watershed.postprocess import PostParams, postprocess, targets_as_probabilities
from wsss.watershed.predict import FLIPS, predict_probs
from wsss.watershed.targets import INTERIOR, WALL, energy_edges, make_targets

pytestmark = [pytest.mark.timeout(60)]


def touching_cells() -> np.ndarray:
    """Three cells on a 96 x 96 map: a large and a small one sharing an edge, one apart; one on the border."""
    lab = np.zeros((96, 96), np.int32)
    lab[10:50, 10:50] = 1  # 1600 px
    lab[10:40, 50:75] = 2  # 750 px, touches cell 1 along x = 49 | 50
    yy, xx = np.mgrid[:96, :96]
    lab[(yy - 75) ** 2 + (xx - 30) ** 2 <= 15 ** 2] = 3
    lab[60:96, 70:90] = 4  # touches the bottom edge
    return lab


def test_touching_cells_are_split_by_a_one_pixel_wall_and_keep_their_size() -> None:
    lab = touching_cells()
    t = make_targets(lab, levels=8, radius=12.0)
    # the smaller cell keeps every pixel; the larger loses exactly the one-pixel wall column it shares
    assert ((t.instances == 2) == (lab == 2)).all()
    wall = t.semantic == WALL
    assert wall.sum() == 31 and wall[10:41, 49].all()  # the 3x3 ring also takes the diagonal corner
    assert ((t.instances == 1) | wall).sum() == (lab == 1).sum()
    for cid in (3, 4):
        assert ((t.instances == cid) == (lab == cid)).all()
    # interior, wall and background partition the image; the two touching cells are not 8-connected
    assert set(np.unique(t.semantic)) == {0, INTERIOR, WALL}
    from scipy import ndimage as ndi

    comp, _ = ndi.label(t.semantic == INTERIOR, structure=np.ones((3, 3)))
    assert comp[20, 20] != comp[20, 60]


def test_direction_is_unit_inside_cells_and_zero_outside_and_energy_levels() -> None:
    lab = touching_cells()
    t = make_targets(lab, levels=8, radius=12.0)
    norm = np.sqrt((t.direction ** 2).sum(axis=0))
    inside = t.instances > 0
    assert np.allclose(norm[t.direction_mask], 1.0, atol=1e-5)
    assert t.direction_mask.sum() >= 0.97 * inside.sum()  # only ridge pixels lack a direction
    assert (norm[~inside] == 0).all()
    # pointing away from the nearest boundary: on the left part of cell 1, +x
    assert t.direction[1, 30, 12] > 0.9
    # energy: 0 outside, 1 at the rim, the top level deep inside; weights favour small cells
    assert (t.energy[~inside] == 0).all() and t.energy[30, 10] == 1 and t.energy[30, 30] == 7
    assert t.energy.max() == 7 and len(energy_edges(8, 12.0)) == 6
    assert t.weight[20, 60] > t.weight[30, 30] and (t.weight[lab == 0] == 1).all()
    # symmetric padding: a cell cut by the image edge is not treated as bounded by it
    assert t.energy[95, 80] > 1


def test_postprocess_round_trip_from_perfect_targets_gives_the_instances_back() -> None:
    lab = touching_cells()
    t = make_targets(lab, levels=16, radius=12.0)
    sem, en = targets_as_probabilities(t.semantic, t.energy, 16)
    cells = postprocess(sem, en, PostParams(core_level=3.0, min_core_area=4.0, min_area=10.0))
    a = agreement(cells, lab, 0.6)
    assert a.ap == 1.0 and a.mean_iou > 0.97
    assert cells.dtype == np.uint16 and cells.max() == 4


@pytest.mark.timeout(120)
def test_postprocess_round_trip_on_synthetic_truth() -> None:
    from wsss.data.synth import SynthOptions, render_image

    img = render_image(SynthOptions(size=128, seed=3, cells_min=6, cells_max=10), 0)
    t = make_targets(img.cells.astype(np.int32), levels=16)
    sem, en = targets_as_probabilities(t.semantic, t.energy, 16)
    cells = postprocess(sem, en)
    assert agreement(cells, img.cells, 0.6).ap == 1.0


def test_postprocess_seeds_from_given_markers_and_fills_unseeded_components() -> None:
    lab = touching_cells()
    t = make_targets(lab, levels=16, radius=12.0)
    sem, en = targets_as_probabilities(t.semantic, t.energy, 16)
    markers = np.zeros_like(lab)
    markers[28:32, 28:32] = 1
    markers[23:27, 60:64] = 2
    cells = postprocess(sem, en, PostParams(min_area=10.0), markers=markers)
    assert agreement(cells, lab, 0.6).ap == 1.0  # cells 3 and 4 have no marker: their components seed themselves
    empty = postprocess(np.stack([np.ones((32, 32)), np.zeros((32, 32)), np.zeros((32, 32))]), np.zeros((16, 32, 32)))
    assert empty.max() == 0


def test_network_heads_odd_sizes_and_dropped_green() -> None:
    net = WatershedNet("resnet10t_w16", channels=(0, 2, 3), levels=8, decoder_channels=(24, 16, 16, 8), num_classes=19)
    out = net(torch.randn(2, 4, 70, 45))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "semantic": (2, 3, 70, 45), "energy": (2, 8, 70, 45), "direction": (2, 2, 70, 45), "classes": (2, 19, 70, 45)}
    assert net.encoder.conv1[0].in_channels == 3 if hasattr(net.encoder, "conv1") else True
    # the green channel is never seen
    x = torch.randn(1, 4, 64, 64)
    y = x.clone()
    y[:, 1] = 100.0
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x)["energy"], net(y)["energy"])


def test_symmetric_padding_matches_numpy() -> None:
    x = torch.arange(15.0).reshape(1, 1, 3, 5)
    y, hw = pad_to_stride(x, 8)
    assert hw == (3, 5) and y.shape[-2:] == (8, 8)
    assert np.array_equal(y[0, 0].numpy(), np.pad(x[0, 0].numpy(), ((0, 5), (0, 3)), mode="symmetric"))


def test_flip_tta_undoes_the_flips() -> None:
    torch.manual_seed(0)
    net = WatershedNet("resnet10t_w16", levels=4, decoder_channels=(16, 16, 8, 8)).eval()
    x = torch.randn(1, 4, 32, 32)
    probs = predict_probs(net, x, tta=True)
    flipped = predict_probs(net, x.flip(-1), tta=True)
    assert torch.allclose(probs["energy"], flipped["energy"].flip(-1), atol=1e-5)
    assert torch.allclose(probs["direction"][:, 1], -flipped["direction"][:, 1].flip(-1), atol=1e-5)
    assert len(FLIPS) == 4


def test_losses_are_finite_weighted_and_backpropagate() -> None:
    lab = touching_cells()[:64, :64]
    t = make_targets(lab, levels=8, radius=12.0)
    batch = {k: torch.from_numpy(np.ascontiguousarray(getattr(t, k)))[None] for k in
             ("semantic", "energy", "direction", "direction_mask", "weight")}
    batch["classes"] = torch.rand(1, 19, 64, 64)
    batch["class_mask"] = torch.from_numpy(lab > 0)[None]
    net = WatershedNet("resnet10t_w16", levels=8, decoder_channels=(16, 16, 8, 8), num_classes=19)
    out = net(torch.randn(1, 4, 64, 64))
    cfg = {"w_semantic": 1.0, "w_energy": 0.5, "w_direction": 0.0, "w_classes": 2.0}
    terms = watershed_loss(out, batch, cfg)
    assert set(terms) == {"semantic", "energy", "direction", "classes", "total"}
    expected = terms["semantic"] + 0.5 * terms["energy"] + 2.0 * terms["classes"]
    assert torch.allclose(terms["total"], expected)
    terms["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
