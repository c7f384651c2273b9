"""Mixed precision chosen per machine: ``torch.amp`` autocast + GradScaler, no apex.

``precision`` is one of ``auto`` (the default everywhere), ``16`` / ``fp16``, ``bf16``, ``32`` / ``fp32``:

* ``auto``:
  * CUDA: float16 autocast with a :class:`torch.amp.GradScaler` (bf16 only when asked for explicitly);
  * CPU: bfloat16 autocast only where the CPU runs bf16 natively (AMX tiles or AVX512-BF16, read
    from torch's own capability checks), float32 otherwise: on a CPU without them bf16 is
    emulated and was measured about 25x slower than float32 (resnet10t, AVX2);
  * any other device: float32.
* ``16`` on CUDA: float16 autocast and a GradScaler (dynamic loss scaling, what apex's O1 became);
  ``16`` on the CPU: bfloat16 autocast (float16 on the CPU is slow and needs scaling), no scaler;
* ``bf16``: bfloat16 autocast, no scaler (bf16 has float32's exponent range); on CUDA the GPU
  must support bfloat16 (:class:`PrecisionError` otherwise);
* ``32``: autocast off, float32 throughout.

An explicit ``16`` or ``bf16`` on a CPU without native bf16 is honoured, with one warning that it
will be about an order of magnitude slower. :func:`describe` gives the line printed at start,
e.g. ``precision: fp32 (auto; CPU AVX2, no native bf16)``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

AUTO = "auto"
PRECISION_CHOICES: tuple[str, ...] = (AUTO, "16", "bf16", "32")
_ALIASES: dict[str, str] = {
    "auto": AUTO,
    "16": "16", "fp16": "16", "float16": "16", "half": "16", "16-mixed": "16",
    "bf16": "bf16", "bfloat16": "bf16", "bf16-mixed": "bf16",
    "32": "32", "fp32": "32", "float32": "32", "full": "32",
}
# the saved form of a resolved precision, the value that reproduces it on another machine
_CANONICAL: dict[str, str] = {"fp32": "32", "fp16": "16", "bf16": "bf16"}


class PrecisionError(ValueError):
    """An unknown precision setting, or one the device cannot run (bf16 on a GPU without bfloat16)."""


@dataclass(frozen=True)
class CpuCapability:
    """What torch reports about this CPU: its kernel level and whether bf16 runs natively."""

    level: str  # torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", "DEFAULT", ...
    amx: bool
    avx512_bf16: bool

    @property
    def native_bf16(self) -> bool:
        return self.amx or self.avx512_bf16

    def describe(self) -> str:
        """E.g. ``CPU AVX2, no native bf16`` or ``CPU AVX512, AMX``."""
        native = [name for name, ok in (("AMX", self.amx), ("AVX512-BF16", self.avx512_bf16)) if ok]
        return f"CPU {self.level}, " + ("+".join(native) if native else "no native bf16")


def _probe(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if callable(fn) else False
    except (RuntimeError, AttributeError):
        return False


def cpu_capability() -> CpuCapability:
    """This CPU as torch sees it (``get_cpu_capability``, ``_is_amx_tile_supported``, ``_is_avx512_bf16_supported``)."""
    try:
        level = str(torch.backends.cpu.get_cpu_capability())
    except (RuntimeError, AttributeError):
        level = "unknown"
    return CpuCapability(level, _probe("_is_amx_tile_supported"), _probe("_is_avx512_bf16_supported"))


def cuda_bf16_supported() -> bool:
    """Whether the current CUDA GPU supports bfloat16 (False without CUDA)."""
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@dataclass(frozen=True)
class AmpSettings:
    """Resolved mixed-precision settings for one device, with the reason they were chosen."""

    device_type: str
    dtype: torch.dtype | None  # None = autocast off
    use_scaler: bool
    requested: str = "32"
    reason: str = ""

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]

    @property
    def canonical(self) -> str:
        """The explicit ``precision`` value that reproduces this choice (``32``, ``16`` or ``bf16``)."""
        return _CANONICAL[self.name]


def canonical_precision(precision: str | int) -> str:
    """``precision`` in its canonical spelling (``auto``, ``16``, ``bf16``, ``32``); :class:`PrecisionError` if unknown."""
    key = _ALIASES.get(str(precision).strip().lower())
    if key is None:
        raise PrecisionError(f"precision must be auto, 16, bf16 or 32, got {precision!r}")
    return key


def _device_reason(device_type: str, cpu: CpuCapability | None) -> str:
    if device_type == "cpu":
        return (cpu or cpu_capability()).describe()
    if device_type == "cuda":
        return "CUDA" + (", bf16 supported" if cuda_bf16_supported() else ", no bf16")
    return device_type


def resolve_precision(precision: str | int, device: torch.device | str, cpu: CpuCapability | None = None,
                      warn: bool = True) -> AmpSettings:
    """Map a ``precision`` value and a device to :class:`AmpSettings` (see the module doc).

    ``cpu`` overrides the probed CPU capability (tests); ``warn`` logs the slow-bf16 warning.
    """
    key = canonical_precision(precision)
    device_type = torch.device(device).type
    if device_type == "cpu" and cpu is None:
        cpu = cpu_capability()
    reason = _device_reason(device_type, cpu)
    if key == AUTO:
        if device_type == "cuda":
            return AmpSettings(device_type, torch.float16, True, AUTO, reason)
        if device_type == "cpu" and cpu is not None and cpu.native_bf16:
            return AmpSettings(device_type, torch.bfloat16, False, AUTO, reason)
        return AmpSettings(device_type, None, False, AUTO, reason)
    if key == "32":
        return AmpSettings(device_type, None, False, key, reason)
    if device_type == "cuda":
        if key == "bf16":
            if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
                raise PrecisionError("precision bf16: this GPU does not support bfloat16 (use 16, 32 or auto)")
            return AmpSettings(device_type, torch.bfloat16, False, key, reason)
        return AmpSettings(device_type, torch.float16, True, key, reason)
    if warn and device_type == "cpu" and cpu is not None and not cpu.native_bf16:
        logger.warning("precision %s on a CPU without native bf16 (%s): bf16 is emulated here, about an order of "
                       "magnitude slower than fp32; use --precision auto or 32", key, cpu.describe())
    return AmpSettings(device_type, torch.bfloat16, False, key, reason)


def describe(settings: AmpSettings) -> str:
    """The one line printed at start, e.g. ``precision: fp32 (auto; CPU AVX2, no native bf16)``."""
    scaler = ", GradScaler" if settings.use_scaler else ""
    return f"precision: {settings.name}{scaler} ({settings.requested}; {settings.reason})"


def resolve_channels_last(value: bool | str | None, amp: AmpSettings) -> bool:
    """``channels_last``: ``true``/``false`` as given, ``auto`` (or null) by what was measured to help.

    ``auto`` is on for CUDA (NHWC is what fp16 tensor-core convolutions want) and for bf16 autocast
    on a CPU with native bf16 (oneDNN's AMX kernels are NHWC), off for float32 on the CPU, where
    ``scripts/bench_train.py`` measured it slower on an AVX2 CPU (see README, "Measured here").
    """
    if value is None or str(value).strip().lower() == AUTO:
        return amp.device_type == "cuda" or (amp.device_type == "cpu" and amp.dtype == torch.bfloat16)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise PrecisionError(f"channels_last must be true, false or auto, got {value!r}")


def autocast(settings: AmpSettings) -> contextlib.AbstractContextManager:
    """The autocast context for ``settings`` (a null context when autocast is off)."""
    if not settings.enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=settings.device_type, dtype=settings.dtype)


def make_scaler(settings: AmpSettings) -> torch.amp.GradScaler:
    """A GradScaler that is active only for float16 on CUDA (a no-op otherwise)."""
    return torch.amp.GradScaler(settings.device_type if settings.use_scaler else "cpu", enabled=settings.use_scaler)
