"""scripts/gpu_check.sh: its CPU branch (what CI runs), and a dry run of every GPU check's code on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the script would run the GPU checks")
def test_cpu_branch_says_so_in_one_line_and_exits_0() -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, env=env,
                          timeout=100)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU"), lines
    assert "torch" in lines[0] and "CPU" in lines[0]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_check_runs_on_the_cpu_at_tiny_sizes(tmp_path: Path) -> None:
    """The GPU branch's code (training steps, throughput, both stages end to end, watershed, DDP) on gloo/CPU."""
    out = tmp_path / "summary.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--model", "resnet10t_w16",
           "--size", "64", "--precision", "32", "--steps", "3", "--train-batch", "2", "--bench-batch", "2",
           "--bench-steps", "1", "--infer-batch", "2", "--crop-batch", "4", "--images-per-batch", "2",
           "--e2e-images", "2", "--workers", "0", "--ws-encoder", "resnet10t_w16", "--ws-batch", "1",
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=220)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert json.loads(done.stdout) == summary
    checks = summary["checks"]
    assert set(checks) == {"fp16", "bf16", "train_img_s_channels_last", "train_img_s_contiguous", "inference",
                           "end_to_end", "watershed", "ddp"}
    assert all(c["ok"] for c in checks.values()), checks
    assert checks["fp16"]["steps"] == 3 and checks["fp16"]["finite"]
    assert checks["ddp"]["backend"] == "gloo" and checks["ddp"]["world_size"] == 1
    assert checks["end_to_end"]["e2e_stage2_crops_s"] > 0 and checks["inference"]["stage2_crops_s"] > 0
    assert checks["train_img_s_channels_last"]["channels_last"] and not checks["train_img_s_contiguous"]["channels_last"]
