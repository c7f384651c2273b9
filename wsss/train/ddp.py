"""PyTorch DistributedDataParallel helpers for training runs launched with ``torchrun``.

``torchrun --nproc_per_node N -m wsss.cli.train ...`` (or the ``wsss-train`` script) sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them and starts the
process group: NCCL when the run uses CUDA, gloo on the CPU. Multi-node works the same way
(``torchrun --nnodes ... --rdzv_endpoint ...``). Without those variables everything is a
single-process no-op.

The process-group machinery is :mod:`wsss.dist` (shared with the sharded prepare, segment and
inference); this module re-exports it for the training code and adds what only training needs.
"""

from __future__ import annotations

import torch

from wsss.dist import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    all_true,
    barrier,
    broadcast_object,
    cleanup,
    env_info,
    init_distributed,
    resolve_device,
)

__all__ = ["DistInfo", "all_gather_objects", "all_reduce_sum", "all_true", "barrier", "broadcast_object", "cleanup",
           "env_info", "init_distributed", "resolve_device", "unwrap"]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel (or DataParallel) wrapper."""
    return model.module if hasattr(model, "module") else model
