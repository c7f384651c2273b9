"""DDP on the CPU with gloo and 2 processes: gradient sync through the puzzle pass, and a torchrun smoke run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from test_train_helpers import make_cache

from wsss.losses import ComboLoss

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = model(x, puzzle=True)
    ComboLoss()(out, y).total.backward()
    opt.step()


def _worker(rank: int, init_file: str, x: torch.Tensor, y: torch.Tensor, state: dict, result_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    from wsss.models import build_model

    model = build_model("test_resnet", num_classes=3)
    model.load_state_dict(state)
    model.eval()  # BN in eval mode: the two half batches then add up to the full batch exactly
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    half = x.shape[0] // 2
    _step(ddp, x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half])
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, f"{result_file}.{rank}")
    dist.destroy_process_group()


def test_ddp_two_processes_match_single_process_step(tmp_path: Path) -> None:
    from wsss.models import build_model

    torch.manual_seed(0)
    model = build_model("test_resnet", num_classes=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 4, 64, 64)
    y = torch.tensor([[1.0, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    mp.spawn(_worker, args=(str(tmp_path / "init"), x, y, state, str(tmp_path / "res")), nprocs=2, join=True)
    model.eval()
    _step(model, x, y)
    ref = model.state_dict()
    r0 = torch.load(tmp_path / "res.0", weights_only=True)
    r1 = torch.load(tmp_path / "res.1", weights_only=True)
    for key in ref:
        torch.testing.assert_close(r0[key], r1[key], rtol=0, atol=0)
        torch.testing.assert_close(r0[key], ref[key], rtol=1e-4, atol=1e-5)
    assert not torch.equal(r0["classifier.weight"], state["classifier.weight"])


def test_torchrun_cli_smoke(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.is_file():
        pytest.skip("torchrun not found next to the python executable")
    cache, folds = make_cache(tmp_path / "data", n=16)
    cfg = {"model": {"name": "test_resnet"},
           "data": {"size": 64, "train_augment": None, "num_workers": 0, "mean": [0.08, 0.15, 0.08, 0.08]},
           "train": {"epochs": 2, "batch_size": 2, "lr": 1e-3, "sampler": "balanced"}}
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "wsss.cli.train", "--config", str(cfg_path),
           "--fold", "1", "--cache", str(cache), "--folds", str(folds), "--out", str(out), "--device", "cpu",
           "--precision", "32", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process group gloo: rank 0 of 2" in proc.stderr
    lines = (out / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert len(rows) == 2
    # 8 training images over 2 ranks (4 each, batch 2), all 8 validation images gathered from both ranks
    assert int(rows[0]["train_images"]) == 8 and int(rows[0]["val_images"]) == 8
    assert (out / "best.safetensors").is_file() and (out / "last.safetensors").is_file()


def _flag_worker(rank: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    from wsss.train import ddp

    agreed = ddp.all_true(rank == 0)  # rank 1 has a "non-finite loss": both must skip
    total = ddp.all_reduce_sum(torch.tensor([float(rank + 1)]))
    torch.save({"agreed": agreed, "total": float(total[0])}, f"{result_file}.{rank}")
    dist.destroy_process_group()


def test_ranks_agree_on_skipping_a_step(tmp_path: Path) -> None:
    mp.spawn(_flag_worker, args=(str(tmp_path / "init"), str(tmp_path / "res")), nprocs=2, join=True)
    for rank in range(2):
        r = torch.load(tmp_path / f"res.{rank}", weights_only=True)
        assert r == {"agreed": False, "total": 3.0}
