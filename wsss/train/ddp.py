"""PyTorch DistributedDataParallel helpers for runs launched with ``torchrun``.

``torchrun --nproc_per_node N -m wsss.cli.train ...`` (or the ``wsss-train`` script) sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them and starts the
process group: NCCL when the run uses CUDA, gloo on the CPU. Multi-node works the same way
(``torchrun --nnodes ... --rdzv_endpoint ...``). Without those variables everything is a
single-process no-op.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and local rank of this process (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """:class:`DistInfo` from the ``torchrun`` environment variables (single process if absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistInfo(rank, world, local)


def resolve_device(requested: str | None, info: DistInfo) -> torch.device:
    """The device of this process: ``requested`` (``auto``/None = CUDA if available) with the local rank's GPU."""
    name = (requested or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device, info: DistInfo) -> None:
    """Start the process group for ``info`` (NCCL on CUDA, gloo otherwise); no-op for one process."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    logger.info("process group %s: rank %d of %d", backend, info.rank, info.world_size)


def cleanup() -> None:
    """Destroy the process group if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _reduce_device() -> torch.device:
    """Where collectives run: the current GPU for an NCCL group (NCCL cannot reduce CPU tensors), else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks as float64; returns a new CPU tensor (a CPU copy without DDP).

    Under NCCL the reduction runs on this rank's GPU and the result is copied back to the CPU.
    """
    out = values.detach().to(torch.float64).cpu().clone()
    if dist.is_available() and dist.is_initialized():
        work = out.to(_reduce_device())
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        out = work.cpu()
    return out


def all_true(flag: bool) -> bool:
    """True when ``flag`` is true on every rank (``flag`` itself without DDP); a collective call."""
    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    bad = all_reduce_sum(torch.tensor([0.0 if flag else 1.0]))
    return float(bad[0]) == 0.0


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` without DDP)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel (or DataParallel) wrapper."""
    return model.module if hasattr(model, "module") else model
