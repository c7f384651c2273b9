"""D4 test-time augmentation and multi-scale CAMs (wsss.infer.tta, wsss.infer.cams)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss.infer.cams import forward_cams, forward_probs, normalize_cams, resize_cams
from wsss.infer.tta import D4_MODES, apply_tta, invert_tta, parse_scales, scaled_side, tta_modes


def _asymmetric(shape=(2, 3, 5, 7)) -> torch.Tensor:
    """Distinct values everywhere: no D4 element other than the identity maps it to itself."""
    return torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape) ** 1.5


@pytest.mark.parametrize("mode", D4_MODES)
def test_inverse_composed_with_transform_is_identity(mode):
    x = _asymmetric()
    y = apply_tta(x, mode)
    assert not torch.equal(y.reshape(-1), x.reshape(-1)) or y.shape != x.shape  # really transformed
    torch.testing.assert_close(invert_tta(y, mode), x, rtol=0, atol=0)
    torch.testing.assert_close(apply_tta(invert_tta(x, mode), mode), x, rtol=0, atol=0)
    a = x.numpy()
    np.testing.assert_array_equal(invert_tta(apply_tta(a, mode), mode), a)
    np.testing.assert_array_equal(apply_tta(a, mode), y.numpy())  # numpy and torch agree


def test_d4_elements_are_the_eight_distinct_symmetries():
    x = _asymmetric((1, 1, 4, 4))
    views = [apply_tta(x, "identity")] + [apply_tta(x, m) for m in D4_MODES]
    flat = {tuple(v.reshape(-1).tolist()) for v in views}
    assert len(flat) == 8
    torch.testing.assert_close(apply_tta(x, "rot90"), torch.rot90(x, 1, dims=(-2, -1)))
    torch.testing.assert_close(apply_tta(x, "rot270"), torch.rot90(x, 3, dims=(-2, -1)))
    torch.testing.assert_close(apply_tta(x, "hvflip"), torch.rot90(x, 2, dims=(-2, -1)))
    torch.testing.assert_close(apply_tta(x, "antitranspose"), torch.rot90(x, 2, dims=(-2, -1)).transpose(-2, -1))


def test_tta_setting_names():
    assert tta_modes(False) == () and tta_modes("none") == () and tta_modes(None) == ()
    assert tta_modes(True) == ("hflip", "vflip") and tta_modes("flip", ["hvflip"]) == ("hvflip",)
    assert tta_modes("d4") == D4_MODES and len(D4_MODES) == 7
    assert tta_modes("rot90,transpose") == ("rot90", "transpose")
    with pytest.raises(ValueError, match="unknown TTA mode"):
        tta_modes("rot45")
    assert parse_scales("0.5,1,1.5,2") == (0.5, 1.0, 1.5, 2.0) and parse_scales(None) == (1.0,)
    for bad in ("0,1", "a,b", "1,1"):
        with pytest.raises(ValueError):
            parse_scales(bad)
    assert scaled_side(64, 0.5, 16) == 32 and scaled_side(64, 1.5, 16) == 96 and scaled_side(40, 0.1, 16) == 16


class _Pointwise(torch.nn.Module):
    """1x1 conv, then 2x2 average pooling: equivariant under every D4 element on even square inputs."""

    stride = 2

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 19, 1)

    def forward(self, x):
        cams = F.avg_pool2d(self.conv(x), 2)
        return cams.mean((2, 3)), cams


class _Oriented(_Pointwise):
    """A 1x3 horizontal kernel: not equivariant under transposes or rotations (it is under flips)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 19, (1, 3), padding=(0, 1))
        with torch.no_grad():
            self.conv.weight[..., 0] += 1.0  # left-right asymmetric too


# The exact comparisons below run the CAM passes in fp32: with precision auto an AMX CPU runs them in bf16.


def test_d4_tta_of_an_equivariant_model_equals_the_plain_cam():
    model = _Pointwise().eval()
    x = torch.randn(2, 4, 16, 16)
    p0, c0 = forward_cams(model, x, precision="32")
    p1, c1 = forward_cams(model, x, tta=D4_MODES, precision="32")
    torch.testing.assert_close(c1, c0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p1, p0, atol=1e-6, rtol=1e-6)
    for mode in D4_MODES:  # each view alone, brought back, is the plain CAM (a wrong inverse would differ)
        _, cm = forward_cams(model, x, tta=(mode,), precision="32")
        torch.testing.assert_close(cm, c0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(forward_probs(model, x, D4_MODES, precision="32"), p0, atol=1e-6, rtol=1e-6)


def test_d4_tta_of_a_non_equivariant_model_averages_the_inverted_views():
    model = _Oriented().eval()
    x = torch.randn(1, 4, 16, 16)
    raw = []
    for mode in ("identity", *D4_MODES):
        _, cams = model(apply_tta(x, mode))
        raw.append(invert_tta(cams, mode).clamp_min(0))
    expected = normalize_cams(torch.stack(raw).mean(0))
    _, got = forward_cams(model, x, tta=D4_MODES, precision="32")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    _, plain = forward_cams(model, x, precision="32")
    assert not torch.allclose(got, plain, atol=1e-3)  # the transposed views do change this model's CAM
    # a D4-symmetric input: its transposed view is itself, so the view's CAM brought back is the transposed CAM
    sym = x + x.transpose(-2, -1)
    _, c_t = forward_cams(model, sym, tta=("transpose",), precision="32")
    _, c_plain = model(sym)
    expected_t = normalize_cams((c_plain.clamp_min(0) + c_plain.clamp_min(0).transpose(-2, -1)) / 2)
    torch.testing.assert_close(c_t, expected_t, atol=1e-5, rtol=1e-5)


def test_non_square_input_with_transposes_runs_in_separate_batches():
    model = _Pointwise().eval()
    x = torch.randn(2, 4, 8, 12)
    p0, c0 = forward_cams(model, x, precision="32")
    p1, c1 = forward_cams(model, x, tta=D4_MODES, precision="32")
    assert c1.shape == c0.shape == (2, 19, 4, 6)
    torch.testing.assert_close(c1, c0, atol=1e-5, rtol=1e-5)


def test_multi_scale_cams_are_merged_at_the_base_size_before_normalisation():
    model = _Pointwise().eval()
    x = torch.randn(2, 4, 16, 16)
    scales = (0.5, 1.0, 1.5, 2.0)
    probs, cams = forward_cams(model, x, scales=scales, precision="32")
    assert cams.shape == (2, 19, 8, 8) and probs.shape == (2, 19)
    raw, logit = [], []
    for s in scales:
        side = scaled_side(16, s, 2)
        xs = x if s == 1 else F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        lg, cm = model(xs)
        raw.append(resize_cams(cm.clamp_min(0), (8, 8)))
        logit.append(torch.sigmoid(lg))
    torch.testing.assert_close(cams, normalize_cams(torch.stack(raw).mean(0)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, torch.stack(logit).mean(0), atol=1e-6, rtol=1e-6)
    # normalising each scale first would give another map (merged BEFORE normalisation)
    per_scale = normalize_cams(torch.stack([normalize_cams(r) for r in raw]).mean(0))
    assert not torch.allclose(cams, per_scale, atol=1e-4)
    # a constant image gives the same CAM at every scale: multi-scale equals the plain pass
    flat = torch.full((1, 4, 16, 16), 0.3)
    torch.testing.assert_close(forward_cams(model, flat, scales=scales, precision="32")[1],
                               forward_cams(model, flat, precision="32")[1])
    # without scale 1 the base size is still the unscaled input's CAM size
    assert forward_cams(model, x, scales=(0.5, 2.0), precision="32")[1].shape == (2, 19, 8, 8)
    # D4 and scales together: the equivariant model's views agree at each scale
    torch.testing.assert_close(forward_cams(model, x, D4_MODES, scales=scales, precision="32")[1], cams,
                               atol=1e-5, rtol=1e-5)


def test_cli_tta_flag_keeps_the_old_form_and_takes_d4_and_scales():
    from wsss.cli.infer import build_parser, resolve_config
    from wsss.config import ConfigError
    from wsss.infer.settings import build_settings

    common = ["--stage", "1", "--ckpt", "x", "--images", "i", "--masks", "m", "--out", "o"]
    model_cfg = {"name": "m", "input_size": 64}
    old = resolve_config(build_parser().parse_args([*common, "--tta"]))
    assert old["tta"] is True and build_settings(old, "o", 1, model_cfg).tta == ("hflip", "vflip")
    new = resolve_config(build_parser().parse_args([*common, "--tta", "d4", "--scales", "0.5,1,1.5,2"]))
    assert new["tta"] == "d4" and new["scales"] == [0.5, 1.0, 1.5, 2.0]
    settings = build_settings(new, "o", 1, model_cfg)
    assert settings.tta == D4_MODES and settings.scales == (0.5, 1.0, 1.5, 2.0)
    off = resolve_config(build_parser().parse_args(common))
    assert build_settings(off, "o", 1, model_cfg).tta == () and off["scales"] == [1.0]
    with pytest.raises(ConfigError, match="--scales"):
        resolve_config(build_parser().parse_args([*common, "--scales", "0.5,x"]))
