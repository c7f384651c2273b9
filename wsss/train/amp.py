"""Mixed precision with ``torch.amp``: autocast + GradScaler, no apex.

``precision`` is one of ``"16"`` / ``"fp16"``, ``"bf16"``, ``"32"`` / ``"fp32"``:

* ``16`` on CUDA: float16 autocast and a :class:`torch.amp.GradScaler` (dynamic loss scaling);
* ``16`` on the CPU: bfloat16 autocast (float16 on the CPU is slow and needs scaling), no scaler;
* ``bf16``: bfloat16 autocast, no scaler (bf16 has float32's exponent range); on CUDA the GPU
  must support bfloat16 (:class:`PrecisionError` otherwise);
* ``32``: autocast off, float32 throughout.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

_ALIASES: dict[str, str] = {
    "16": "16", "fp16": "16", "float16": "16", "half": "16", "16-mixed": "16",
    "bf16": "bf16", "bfloat16": "bf16", "bf16-mixed": "bf16",
    "32": "32", "fp32": "32", "float32": "32", "full": "32",
}


class PrecisionError(ValueError):
    """An unknown precision setting, or one the device cannot run (bf16 on a GPU without bfloat16)."""


@dataclass(frozen=True)
class AmpSettings:
    """Resolved mixed-precision settings for one device."""

    device_type: str
    dtype: torch.dtype | None  # None = autocast off
    use_scaler: bool

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]


def resolve_precision(precision: str | int, device: torch.device | str) -> AmpSettings:
    """Map a ``--precision`` value and a device to :class:`AmpSettings` (see the module doc)."""
    key = _ALIASES.get(str(precision).strip().lower())
    if key is None:
        raise PrecisionError(f"precision must be 16, bf16 or 32, got {precision!r}")
    device_type = torch.device(device).type
    if key == "32":
        return AmpSettings(device_type, None, False)
    if key == "bf16":
        if device_type == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise PrecisionError("precision bf16: this GPU does not support bfloat16 (use 16 or 32)")
        return AmpSettings(device_type, torch.bfloat16, False)
    if device_type == "cuda":
        return AmpSettings(device_type, torch.float16, True)
    logger.info("precision 16 on %s: using bfloat16 autocast (float16 needs a GPU)", device_type)
    return AmpSettings(device_type, torch.bfloat16, False)


def autocast(settings: AmpSettings) -> contextlib.AbstractContextManager:
    """The autocast context for ``settings`` (a null context when autocast is off)."""
    if not settings.enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=settings.device_type, dtype=settings.dtype)


def make_scaler(settings: AmpSettings) -> torch.amp.GradScaler:
    """A GradScaler that is active only for float16 on CUDA (a no-op otherwise)."""
    return torch.amp.GradScaler(settings.device_type if settings.use_scaler else "cpu", enabled=settings.use_scaler)
