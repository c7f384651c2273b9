"""Puzzle-CAM model: GAP/CAM identity, tile/merge round trip, 4-channel stem adaptation, backbones."""

from __future__ import annotations

import pytest
import torch

from wsss.models import (ALIASES, WRITEUP_BACKBONES, ModelError, PretrainedError, PuzzleError,
                         adapt_first_conv_weight, build_model, merge, tile)

TINY = ["resnet18", "test_resnet", "test_efficientnet", "resnet10t"]


@pytest.mark.parametrize("name", TINY)
def test_logits_equal_spatial_mean_of_cams(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=19).eval()
    x = torch.randn(2, 4, 128, 128)
    with torch.no_grad():
        logits, cams = model(x)
    assert logits.shape == (2, 19)
    assert cams.shape == (2, 19, 128 // model.stride, 128 // model.stride)
    torch.testing.assert_close(logits, cams.mean(dim=(2, 3)), rtol=0, atol=1e-6)


def test_cams_are_classifier_over_features() -> None:
    model = build_model("test_resnet", num_classes=5).eval()
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        feats = model.features(x)
        cams = model(x)[1]
    expected = torch.einsum("bfhw,cf->bchw", feats, model.classifier.weight[:, :, 0, 0])
    torch.testing.assert_close(cams, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grid", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(3, 5, 12, 24), (1, 1, 12, 12), (2, 19, 36, 48)])
def test_tile_merge_exact_inverses(grid: int, shape: tuple[int, int, int, int]) -> None:
    x = torch.randn(*shape)
    tiles = tile(x, grid)
    b, c, h, w = shape
    assert tiles.shape == (grid * grid * b, c, h // grid, w // grid)
    assert torch.equal(merge(tiles, grid), x)
    assert torch.equal(tile(merge(tiles, grid), grid), tiles)


def test_tile_layout_is_tile_major_row_major() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    tiles = tile(x, 2)
    # tile k of image b at index k * B + b; k = row * 2 + col
    assert torch.equal(tiles[0], x[0, :, :2, :2])
    assert torch.equal(tiles[1], x[1, :, :2, :2])
    assert torch.equal(tiles[2], x[0, :, :2, 2:])
    assert torch.equal(tiles[5], x[1, :, 2:, :2])
    assert torch.equal(tiles[7], x[1, :, 2:, 2:])


def test_tile_refuses_odd_sizes_with_clear_error() -> None:
    with pytest.raises(PuzzleError, match="7x8 map"):
        tile(torch.zeros(1, 1, 7, 8), 2)
    with pytest.raises(PuzzleError, match="not a multiple"):
        merge(torch.zeros(3, 1, 4, 4), 2)


def test_puzzle_forward_shapes_and_odd_input_refused() -> None:
    model = build_model("test_resnet", num_classes=19).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 4, 128, 128), puzzle=True)
    assert out.puzzle_cams.shape == out.cams.shape
    torch.testing.assert_close(out.puzzle_logits, out.puzzle_cams.mean((2, 3)))
    # 96 = 3 x 32: the full CAM is 3x3, which 2x2 tiles cannot reproduce
    with pytest.raises(PuzzleError, match="multiples of 64"):
        model(torch.randn(1, 4, 96, 96), puzzle=True)


def test_puzzle_branch_equals_running_tiles_separately() -> None:
    torch.manual_seed(0)
    model = build_model("test_resnet", num_classes=3).eval()
    x = torch.randn(1, 4, 128, 128)
    with torch.no_grad():
        out = model.forward_puzzle(x)
        top_right = model(x[:, :, :64, 64:])[1]
    h = out.cams.shape[-1] // 2
    torch.testing.assert_close(out.puzzle_cams[:, :, :h, h:], top_right, rtol=1e-5, atol=1e-5)


def test_output_stride_16_doubles_cam_resolution() -> None:
    m32 = build_model("resnet10t")
    m16 = build_model("resnet10t", output_stride=16)
    assert (m32.stride, m16.stride) == (32, 16)
    with torch.no_grad():
        assert m16.eval()(torch.zeros(1, 4, 128, 128))[1].shape[-1] == 8
    with pytest.raises(ModelError):
        build_model("resnet10t", output_stride=12)


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(ModelError, match="unknown backbone"):
        build_model("no_such_net_42")


@pytest.mark.parametrize("rule", ["mean", "red", "zero", "timm"])
def test_adapt_first_conv_weight_rules(rule: str) -> None:
    w = torch.randn(8, 3, 3, 3)
    a = adapt_first_conv_weight(w, 4, rule)
    assert a.shape == (8, 4, 3, 3)
    expected4 = {"mean": w.mean(1), "red": w[:, 0], "zero": torch.zeros_like(w[:, 0]), "timm": w[:, 0] * 0.75}[rule]
    torch.testing.assert_close(a[:, 3], expected4)
    if rule != "timm":
        assert torch.equal(a[:, :3], w)
    assert torch.equal(adapt_first_conv_weight(w, 3, rule), w)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_rgb_file_is_adapted_to_rgby(tmp_path, suffix: str) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    rgb = timm.create_model("resnet18", pretrained=False, in_chans=3, num_classes=1000)
    sd = rgb.state_dict()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({"state_dict": sd}, path)
    model = build_model("resnet18", pretrained_file=str(path))
    got = model.backbone.state_dict()
    w = sd["conv1.weight"]
    assert torch.equal(got["conv1.weight"][:, :3], w)
    torch.testing.assert_close(got["conv1.weight"][:, 3], w.mean(1))
    for key in ("layer1.0.conv1.weight", "layer4.1.bn2.running_var", "bn1.bias"):
        assert torch.equal(got[key], sd[key])
    assert "fc.weight" not in got


def test_pretrained_file_of_another_architecture_is_refused(tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    other = timm.create_model("test_resnet", pretrained=False, in_chans=3).state_dict()
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(path))
    with pytest.raises(PretrainedError, match="does not fit"):
        build_model("resnet18", pretrained_file=str(path))
    with pytest.raises(PretrainedError, match="not found"):
        build_model("resnet18", pretrained_file=str(tmp_path / "missing.pth"))


@pytest.mark.slow
@pytest.mark.parametrize("name", WRITEUP_BACKBONES)
def test_writeup_backbones_build(name: str) -> None:
    model = build_model(name, output_stride=16 if name == "seresnext50_32x4d" else None).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 64, 64), puzzle=True)
    assert out.cams.shape[:2] == (1, 19)
    assert (name in ALIASES) == (name == "gluon_seresnext101_32x4d")


def test_registered_custom_backbone_builds() -> None:
    from torch import nn

    from wsss.models import register_backbone

    @register_backbone("toy_stride8")
    def _toy(in_chans: int, output_stride: int | None) -> tuple[nn.Module, int, int]:
        return nn.Sequential(nn.Conv2d(in_chans, 6, 3, stride=8, padding=1), nn.ReLU()), 6, 8

    model = build_model("toy_stride8", num_classes=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 32, 32), puzzle=True)
    assert model.stride == 8 and out.cams.shape == (1, 2, 4, 4)


def test_timm_name_with_pretrained_tag_builds() -> None:
    model = build_model("resnet10t.c3_in1k")
    assert model.stride == 32
