"""Sharding over torch.distributed ranks: balanced shares, per-rank parts, merged tables equal to one process.

The 2-process runs use gloo on the CPU: ``torchrun`` for the ``wsss-segment`` and ``wsss-infer
--stage 1`` command lines, ``torch.multiprocessing.spawn`` for prepare, stage 2 and the kill of a
rank followed by a rerun on another number of processes (every id then appears exactly once).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from wsss import dist as wdist
from wsss.data.io import kaggle_shape, pixel_costs
from wsss.data.prepare import prepare_cache
from wsss.data.source import ImageSource as DataImageSource
from wsss.infer.crops import CropParams
from wsss.infer.oof import merge_oof
from wsss.infer.runner import InferSettings, run_stage1, run_stage2
from wsss.infer.sources import ImageSource, MaskSource
from wsss.infer.tables import PartWriter, read_parquet
from wsss.masks import load_label_maps, save_label_maps

N_IDS = 10
MEAN = (0.05, 0.05, 0.05, 0.05)
STD = (0.1, 0.1, 0.1, 0.1)


def make_images(root: Path, n: int = N_IDS) -> tuple[Path, Path]:
    """``n`` Kaggle-layout fields of view (64 or 96 px) with 1-4 disc cells, and their ``.npz`` label maps."""
    rng = np.random.default_rng(0)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for k in range(n):
        side = 96 if k % 3 == 0 else 64
        yy, xx = np.mgrid[:side, :side]
        labels = np.zeros((side, side), np.uint16)
        rgby = np.zeros((side, side, 4), np.uint8)
        for c in range(1 + k % 4):
            cy, cx = rng.integers(14, side - 14, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 100
            labels[disc & (labels == 0)] = c + 1
            rgby[disc, 0] = 90 + 20 * c
            rgby[(yy - cy) ** 2 + (xx - cx) ** 2 < 25, 2] = 200
            rgby[disc, 1] = rng.integers(0, 255)
            rgby[disc, 3] = 80
        image_id = f"id{k:02d}"
        for c, name in enumerate(("red", "green", "blue", "yellow")):
            cv2.imwrite(str(images / f"{image_id}_{name}.png"), rgby[:, :, c])
        save_label_maps(masks / f"{image_id}.npz", labels, labels, (side, side))
    return images, masks


class GreenRedCAM(torch.nn.Module):
    """A batch-invariant CAM model (pooled stains); ``kill_after`` forward calls SIGKILLs the process."""

    def __init__(self, kill_after: int | None = None) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))
        self.calls = 0
        self.kill_after = kill_after

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        if self.kill_after is not None and self.calls > self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        pooled = F.avg_pool2d(x, 4)
        cams = torch.full((x.shape[0], 19, pooled.shape[2], pooled.shape[3]), -2.0)
        cams[:, 0] = pooled[:, 1] * self.scale + 1.0
        cams[:, 1] = pooled[:, 0] * self.scale + 0.5
        return cams.mean((2, 3)), cams


def settings(out: Path, **kw: object) -> InferSettings:
    base: dict = dict(out_dir=out, input_size=32, mean=MEAN, std=STD, batch_size=2, workers=0, chunk_images=1,
                      source="test", crop=CropParams(size=16), images_per_batch=2)
    base.update(kw)
    return InferSettings(**base)


def _ids(images: Path) -> list[str]:
    return DataImageSource(images).list_ids()


# ----- shares -----------------------------------------------------------------------------------------------

def test_balanced_shares_are_deterministic_and_balanced_by_pixels() -> None:
    costs = [3072 ** 2 if i % 4 == 0 else 2048 ** 2 for i in range(40)]
    shares = wdist.balanced_shares(costs, 3)
    assert shares == wdist.balanced_shares(costs, 3)
    assert sorted(i for s in shares for i in s) == list(range(40))
    assert all(s == sorted(s) for s in shares)
    loads = [sum(costs[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(costs)
    # sizes, not counts: one 3072 px field (2.25x) against three 2048 px ones
    assert wdist.balanced_shares([3072 ** 2, 2048 ** 2, 2048 ** 2, 2048 ** 2], 2) == [[0], [1, 2, 3]]
    assert wdist.balanced_shares([1.0] * 5, 2) == [[0, 2, 4], [1, 3]]


def test_share_of_keeps_blocks_whole_and_in_order() -> None:
    ids = [f"i{k}" for k in range(7)]
    parts = [wdist.share_of(ids, [1.0] * 7, 2, r, block=3) for r in range(2)]
    assert parts == [["i0", "i1", "i2", "i6"], ["i3", "i4", "i5"]]
    assert wdist.take_share(ids, [], info=wdist.DistInfo()) == ids  # one process: everything, no costs needed


def test_pixel_counts_from_headers(tmp_path: Path) -> None:
    images, _ = make_images(tmp_path, n=4)
    ids = _ids(images)
    assert DataImageSource(images).pixel_counts(ids) == [96.0 * 96, 64.0 * 64, 64.0 * 64, 96.0 * 96]
    assert kaggle_shape(images, "nope") is None
    assert pixel_costs([(2, 3), None, (4, 4)]) == [6.0, 16.0, 16.0]


def test_part_writers_of_every_rank_count_merge_in_order_and_feed_oof(tmp_path: Path) -> None:
    images, masks = make_images(tmp_path)
    ids = _ids(images)
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_stage1(GreenRedCAM(), ids, ImageSource(images), MaskSource(masks, ref), settings(ref, fold=0))
    # rank 1 of an earlier sharded run finished some ids: a single process skips them and merges in id order
    run_stage1(GreenRedCAM(), ids[:5], ImageSource(images), MaskSource(masks, out), settings(out, fold=0))
    rank_dir = out / "parts_stage1" / "rank1"
    (out / "parts_stage1").rename(tmp_path / "moved")
    rank_dir.parent.mkdir()
    (tmp_path / "moved").rename(rank_dir)
    assert PartWriter(out, "stage1", ("cells", "images")).finished_ids() == set(ids[:5])
    for name in ("cells_stage1", "images_stage1", "processed_stage1"):
        (out / f"{name}.parquet").unlink()  # as if rank 0 never consolidated them
    folds = pd.DataFrame({"ID": ids, "Label": ["0"] * len(ids), "fold": [0] * len(ids)})
    merged, report = merge_oof([out], folds, stage=1)  # OOF reads the parts of every rank
    assert report.n_covered == 5 and report.missing == ids[5:] and sorted(merged["images"]["image_id"]) == ids[:5]
    summary = run_stage1(GreenRedCAM(), ids, ImageSource(images), MaskSource(masks, out), settings(out, fold=0))
    assert summary.already_done == 5 and summary.processed == ids[5:]  # its rows come first in the parts
    for name in ("cells_stage1", "images_stage1", "processed_stage1"):
        assert (out / f"{name}.parquet").read_bytes() == (ref / f"{name}.parquet").read_bytes(), name


# ----- spawned ranks: prepare, stage 2, a killed rank -------------------------------------------------------

def _worker(rank: int, world: int, init: str, root: str, task: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    base = Path(root)
    images, masks = base / "images", base / "masks"
    ids = _ids(images)
    if task == "first":
        prepare_cache(images, base / "cache_n", ids, size=32, workers=1, progress=False)
        out2 = base / "stage2_n"
        run_stage2(GreenRedCAM(), ids, ImageSource(images), MaskSource(masks, out2), settings(out2))
        dist.barrier()
        out1 = base / "stage1_kill"  # rank 1 dies by SIGKILL in its second batch (call 1 is the probe)
        run_stage1(GreenRedCAM(kill_after=2 if rank == 1 else None), ids, ImageSource(images),
                   MaskSource(masks, out1), settings(out1))
    else:
        out1 = base / "stage1_kill"
        summary = run_stage1(GreenRedCAM(), ids, ImageSource(images), MaskSource(masks, out1), settings(out1))
        torch.save({"already_done": summary.already_done, "processed": summary.processed},
                   base / f"resume.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_spawned_ranks_prepare_stage2_and_a_killed_rank_resumed_on_three(tmp_path: Path) -> None:
    images, masks = make_images(tmp_path)
    ids = _ids(images)
    with pytest.raises(mp.ProcessExitedException):
        mp.spawn(_worker, args=(2, str(tmp_path / "init1"), str(tmp_path), "first"), nprocs=2, join=True)
    # prepare: the manifest and PNGs of one process
    prepare_cache(images, tmp_path / "cache_1", ids, size=32, workers=1, progress=False)
    assert (tmp_path / "cache_n" / "manifest.csv").read_bytes() == (tmp_path / "cache_1" / "manifest.csv").read_bytes()
    assert not list((tmp_path / "cache_n").glob("manifest-rank*.csv"))
    for i in ids:
        assert (tmp_path / "cache_n" / f"{i}.png").read_bytes() == (tmp_path / "cache_1" / f"{i}.png").read_bytes()
    # stage 2: the tables of one process, byte for byte
    ref2 = tmp_path / "stage2_1"
    run_stage2(GreenRedCAM(), ids, ImageSource(images), MaskSource(masks, ref2), settings(ref2))
    for name in ("cells_stage2", "processed_stage2"):
        assert (tmp_path / "stage2_n" / f"{name}.parquet").read_bytes() == (ref2 / f"{name}.parquet").read_bytes()
    assert (tmp_path / "stage2_n" / "parts_stage2" / "rank1").is_dir()
    # the killed run left finished parts of both ranks and no consolidated table
    killed = tmp_path / "stage1_kill"
    done_before = PartWriter(killed, "stage1", ("cells", "images")).finished_ids()
    assert 0 < len(done_before) < len(ids) and not (killed / "cells_stage1.parquet").exists()
    assert list((killed / "parts_stage1" / "rank1").glob("done-*.parquet"))
    mp.spawn(_worker, args=(3, str(tmp_path / "init2"), str(tmp_path), "resume"), nprocs=3, join=True)
    runs = [torch.load(tmp_path / f"resume.{r}", weights_only=True) for r in range(3)]
    assert runs[0]["already_done"] == len(done_before)
    assert sorted(runs[0]["processed"]) == sorted(set(ids) - done_before)
    ref1 = tmp_path / "stage1_1"
    run_stage1(GreenRedCAM(), ids, ImageSource(images), MaskSource(masks, ref1), settings(ref1))
    cells = read_parquet(killed / "cells_stage1.parquet")
    processed = read_parquet(killed / "processed_stage1.parquet")
    assert processed["image_id"].tolist() == ids  # every id exactly once, in the one-process order
    assert cells.groupby("image_id").size().to_dict() == read_parquet(ref1 / "cells_stage1.parquet").groupby(
        "image_id").size().to_dict()
    pd.testing.assert_frame_equal(cells, read_parquet(ref1 / "cells_stage1.parquet"))
    pd.testing.assert_frame_equal(read_parquet(killed / "images_stage1.parquet"),
                                  read_parquet(ref1 / "images_stage1.parquet"))


# ----- torchrun: the command lines ------------------------------------------------------------------------

def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.is_file():
        pytest.skip("torchrun not found next to the python executable")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", str(nproc), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=200)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_torchrun_segment_two_ranks_writes_the_one_process_maps(tmp_path: Path) -> None:
    from wsss.cli.segment import main as segment_main

    images, _ = make_images(tmp_path)
    proc = _torchrun(["-m", "wsss.cli.segment", str(images), str(tmp_path / "seg2"), "--size", "0", "--quiet"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0/2:" in proc.stderr and "rank 1/2:" in proc.stderr and "process group gloo" in proc.stderr
    assert segment_main([str(images), str(tmp_path / "seg1"), "--size", "0", "--quiet"]) == 0
    ids = _ids(images)
    for i in ids:
        a, b = load_label_maps(tmp_path / "seg1" / f"{i}.npz"), load_label_maps(tmp_path / "seg2" / f"{i}.npz")
        assert np.array_equal(a.cells, b.cells) and np.array_equal(a.nuclei, b.nuclei), i
        assert np.array_equal(a.border, b.border) and (a.orig_height, a.orig_width) == (b.orig_height, b.orig_width)
    assert sum(m.cells.max() > 0 for m in (load_label_maps(tmp_path / "seg2" / f"{i}.npz") for i in ids)) > N_IDS // 2


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_torchrun_infer_stage1_two_ranks_writes_the_one_process_tables(tmp_path: Path) -> None:
    from wsss.cli.infer import main as infer_main
    from wsss.models import build_model
    from wsss.train.checkpoint import save_checkpoint

    images, masks = make_images(tmp_path)
    torch.manual_seed(0)
    cfg = {"model": {"name": "test_resnet"}, "data": {"size": 64, "mean": list(MEAN), "std": list(STD)}}
    save_checkpoint(tmp_path / "run", "best", build_model("test_resnet"), cfg, epoch=1)
    common = ["--stage", "1", "--ckpt", str(tmp_path / "run"), "--images", str(images), "--masks", str(masks),
              "--workers", "0", "--batch-size", "2", "--device", "cpu", "--set", "chunk_images=2"]
    proc = _torchrun(["-m", "wsss.cli.infer", *common, "--out", str(tmp_path / "inf2")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0/2:" in proc.stderr and "rank 1/2:" in proc.stderr
    assert f"stage 1 (stage1:test_resnet, fold -1): {N_IDS} images" in proc.stdout
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs: float sums over other thread counts may differ in the last bit
    try:
        assert infer_main([*common, "--out", str(tmp_path / "inf1")]) == 0
    finally:
        torch.set_num_threads(threads)
    for name in ("cells_stage1", "images_stage1", "processed_stage1"):
        one, two = tmp_path / "inf1" / f"{name}.parquet", tmp_path / "inf2" / f"{name}.parquet"
        assert one.read_bytes() == two.read_bytes(), name
    assert list((tmp_path / "inf2" / "parts_stage1" / "rank1").glob("done-*.parquet"))


def test_stage_ws_under_torchrun_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    from wsss.cli.infer import main as infer_main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code = infer_main(["--stage", "ws", "--ckpt", str(tmp_path / "ws.safetensors"), "--images", str(tmp_path),
                       "--masks", str(tmp_path), "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("wsss-infer: error: --stage ws") and "torchrun" in err
