"""Process groups and work sharding over ``torchrun`` ranks: the one distributed layer of the project.

``torchrun --nnodes N --nproc-per-node P -m wsss.cli.X ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` (and the rendezvous variables); :func:`env_info` reads them and
:func:`init_distributed` starts the process group: NCCL when the process uses a CUDA device,
gloo otherwise. Without those variables (or with ``WORLD_SIZE=1``) everything here is a
single-process no-op, so every command behaves the same with and without ``torchrun``.

Training (:mod:`wsss.train.ddp`) uses the group for DistributedDataParallel; ``wsss-prepare``,
``wsss-segment`` and ``wsss-infer`` use it to share out ids:

* :func:`balanced_shares` gives each rank a deterministic share of a list of work units,
  balanced by cost (longest-processing-time greedy: units in decreasing cost, each to the rank
  with the least cost so far, ties to the lower index), every share kept in list order;
* :func:`take_share` does it for ids with a per-id cost (the image's pixel count: a 3072 px field
  costs 2.25x a 2048 px one), grouping ``block`` consecutive ids into one unit (a batch of the
  one-process run, so every rank computes exactly the batches a single process would) and logs
  ``rank r/N: k of M ids``;
* :func:`on_main` runs the planning on rank 0 only (it reads the output folder: what is done) and
  gives every rank its result, or raises its exception on every rank, so all ranks agree.

This module imports nothing from the project (bottom layer).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a collective may wait (minutes) unless ``WSSS_DIST_TIMEOUT_MIN`` says otherwise: ranks of a
#: sharded run meet at the end, and one share may take longer than another on a shared machine.
DEFAULT_TIMEOUT_MIN = 720


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


def current() -> DistInfo:
    """This process's place in the running process group (single process when none is running)."""
    if not is_running():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), env_info().local_rank)


def is_running() -> bool:
    """True when a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """``device`` with the local rank's GPU when it is an index-less CUDA device (made current)."""
    if device.type != "cuda":
        return device
    if device.index is None:
        device = torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
    torch.cuda.set_device(device)
    return device


def resolve_device(requested: str | None, info: DistInfo) -> torch.device:
    """The device of this process: ``requested`` (``auto``/None = CUDA if available) with the local rank's GPU."""
    name = (requested or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    return local_device(device, info)


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(minutes=float(os.environ.get("WSSS_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MIN)))


def init_distributed(device: torch.device, info: DistInfo) -> None:
    """Start the process group for ``info`` (NCCL on CUDA, gloo otherwise); no-op for one process."""
    if not info.enabled or is_running():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, timeout=_timeout())
    logger.info("process group %s: rank %d of %d", backend, info.rank, info.world_size)


def cleanup() -> None:
    """Destroy the process group if one is running."""
    if is_running():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: torch.device | str = "cpu") -> Iterator[DistInfo]:
    """Start the ``torchrun`` process group for ``device`` when launched by it, yield this rank's info, tear down.

    A group that is already running (a caller or a test started it) is used and left running.
    """
    info = env_info()
    owned = info.enabled and not is_running()
    if owned:
        init_distributed(torch.device(device), info)
    try:
        yield current() if is_running() else DistInfo()
    finally:
        if owned:
            cleanup()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_running():
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
    if is_running():
        work = out.to(_reduce_device())
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        out = work.cpu()
    return out


def all_true(flag: bool) -> bool:
    """True when ``flag`` is true on every rank (``flag`` itself without DDP); a collective call."""
    if not is_running():
        return bool(flag)
    bad = all_reduce_sum(torch.tensor([0.0 if flag else 1.0]))
    return float(bad[0]) == 0.0


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` without DDP)."""
    if not is_running():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_running():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank; its exception is raised on every rank.

    Without a process group this is ``fn()``.
    """
    if not is_running():
        return fn()
    result: Any = None
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            error = exc
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def balanced_shares(costs: Sequence[float], world_size: int) -> list[list[int]]:
    """Indices of ``costs`` per rank, balanced by total cost; deterministic, each share in index order.

    Longest-processing-time greedy: units in decreasing cost (ties by index) each go to the rank
    whose share costs least so far (ties to the lower rank). The largest share then exceeds the
    mean by at most one unit's cost.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    loads = [0.0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shares[rank].append(index)
        loads[rank] += float(costs[index])
    return [sorted(share) for share in shares]


def share_of(ids: Sequence[str], costs: Sequence[float], world_size: int, rank: int, block: int = 1) -> list[str]:
    """Rank ``rank``'s ids: blocks of ``block`` consecutive ids balanced by summed cost, in list order."""
    if len(costs) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(costs)} costs")
    block = max(1, int(block))
    starts = list(range(0, len(ids), block))
    block_costs = [sum(float(c) for c in costs[s:s + block]) for s in starts]
    mine = balanced_shares(block_costs, world_size)[rank]
    return [image_id for b in mine for image_id in ids[starts[b]:starts[b] + block]]


def take_share(ids: Sequence[str], costs: Sequence[float], block: int = 1, info: DistInfo | None = None) -> list[str]:
    """This rank's share of ``ids`` (:func:`share_of`; all of them without a process group), logged.

    Every rank must pass the same ``ids`` and ``costs`` (compute them with :func:`on_main`).
    """
    info = info or current()
    if not info.enabled:
        return list(ids)
    mine = share_of(ids, costs, info.world_size, info.rank, block)
    chosen = set(mine)
    cost = sum(float(c) for i, c in zip(ids, costs) if i in chosen)
    total = sum(float(c) for c in costs) or 1.0
    logger.info("rank %d/%d: %d of %d ids (%.1f%% of the pixels)", info.rank, info.world_size, len(mine), len(ids),
                100.0 * cost / total)
    return mine
