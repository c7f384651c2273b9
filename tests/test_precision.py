"""precision: auto per machine (capability checks monkeypatched), explicit values, warnings, channels_last."""

from __future__ import annotations

import logging

import pytest
import torch

from wsss import precision as prec
from wsss.precision import CpuCapability, PrecisionError, describe, resolve_channels_last, resolve_precision

AMX = CpuCapability("AVX512", amx=True, avx512_bf16=True)
AVX512_BF16 = CpuCapability("AVX512", amx=False, avx512_bf16=True)
AVX2 = CpuCapability("AVX2", amx=False, avx512_bf16=False)


@pytest.mark.parametrize("cpu, dtype", [(AMX, torch.bfloat16), (AVX512_BF16, torch.bfloat16), (AVX2, None)])
def test_auto_on_cpu_follows_native_bf16(cpu: CpuCapability, dtype: torch.dtype | None) -> None:
    s = resolve_precision("auto", "cpu", cpu=cpu)
    assert s.dtype == dtype and not s.use_scaler and s.requested == "auto"
    assert s.canonical == ("bf16" if dtype else "32")


def test_auto_probes_torch_capability_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert prec.cpu_capability() == CpuCapability("AVX512", True, False)
    assert resolve_precision("auto", "cpu").dtype == torch.bfloat16
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    s = resolve_precision("auto", "cpu")
    assert s.dtype is None
    assert describe(s) == "precision: fp32 (auto; CPU AVX2, no native bf16)"


@pytest.mark.parametrize("bf16_gpu", [True, False])
def test_auto_on_cuda_is_fp16_with_scaler(monkeypatch: pytest.MonkeyPatch, bf16_gpu: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    s = resolve_precision("auto", "cuda")
    assert s.dtype == torch.float16 and s.use_scaler, "auto never picks bf16 on a GPU unless asked"
    assert ("bf16 supported" in describe(s)) == bf16_gpu
    if bf16_gpu:
        b = resolve_precision("bf16", "cuda")
        assert b.dtype == torch.bfloat16 and not b.use_scaler
    else:
        with pytest.raises(PrecisionError, match="bfloat16"):
            resolve_precision("bf16", "cuda")
    assert resolve_precision("16", "cuda").use_scaler


@pytest.mark.parametrize("value", ["16", "bf16", "fp16", 16])
def test_explicit_bf16_on_a_cpu_without_it_is_honoured_with_one_warning(value, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="wsss.precision"):
        s = resolve_precision(value, "cpu", cpu=AVX2)
    assert s.dtype == torch.bfloat16
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "order of magnitude slower" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wsss.precision"):
        assert resolve_precision(value, "cpu", cpu=AMX).dtype == torch.bfloat16
        assert resolve_precision("32", "cpu", cpu=AVX2).dtype is None
    assert not caplog.records


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(PrecisionError, match="auto, 16, bf16 or 32"):
        resolve_precision("fp8", "cpu", cpu=AVX2)


def test_channels_last_auto_and_explicit() -> None:
    fp32_cpu = resolve_precision("auto", "cpu", cpu=AVX2)
    bf16_cpu = resolve_precision("auto", "cpu", cpu=AMX)
    assert resolve_channels_last("auto", fp32_cpu) is False
    assert resolve_channels_last(None, bf16_cpu) is True
    assert resolve_channels_last(True, fp32_cpu) is True and resolve_channels_last("false", bf16_cpu) is False
    with pytest.raises(PrecisionError, match="channels_last"):
        resolve_channels_last("sometimes", fp32_cpu)
