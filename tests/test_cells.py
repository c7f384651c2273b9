"""The cell classifier: crops shared with stage 2, D4, training (task cell) with exact resume,
``wsss-infer --stage cell`` under the per-cell table contract, its OOF merge, and soft targets."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from wsss.data.cells import CellCropStore, image_cell_crops
from wsss.data.crops import CropParams, extract_crops
from wsss.data.dataset import normalize
from wsss.masks import index_cells, load_label_maps
from wsss.schema import CELL_COLUMNS, PROB_COLUMNS
from wsss.train.loop import TrainError, fit

pytestmark = [pytest.mark.timeout(180)]

N_IMAGES = 8
SIZE = 128


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8 synthetic 128 px images (heterogeneous), their cache, 2 folds and the truth label maps as .npz."""
    from wsss.cli.prepare import main as prepare
    from wsss.cli.segment import main as segment
    from wsss.cli.synth import main as synth_main

    root = tmp_path_factory.mktemp("cellsynth")
    assert synth_main([str(root / "synth"), "--count", str(N_IMAGES), "--size", str(SIZE), "--seed", "3",
                       "--variability", "0.8", "--cells-min", "3", "--cells-max", "6", "--quiet", "--no-gallery",
                       "--sheet", "0"]) == 0
    assert prepare([str(root / "synth" / "train"), str(root / "cache"), "--size", str(SIZE), "--workers", "1",
                    "--quiet"]) == 0
    assert segment([str(root / "cache"), str(root / "seg"), "--masks", str(root / "synth" / "masks"),
                    "--size", str(SIZE), "--quiet"]) == 0
    labels = pd.read_csv(root / "synth" / "train.csv", dtype=str)
    labels["fold"] = np.arange(len(labels)) % 2
    labels.to_csv(root / "folds.csv", index=False)
    return {"root": root, "cache": root / "cache", "seg": root / "seg", "folds": root / "folds.csv",
            "synth": root / "synth"}


def cell_config(synth: dict[str, Path], out: Path, **train: object) -> dict:
    from wsss.config import merge
    from wsss.train.defaults import default_config

    cfg = merge(default_config(), {
        "name": "cellt", "task": "cell",
        "data": {"cache": str(synth["cache"]), "folds": str(synth["folds"]), "size": 32, "num_workers": 0,
                 "train_augment": [{"name": "HorizontalFlip", "p": 0.5}, {"name": "RandomRotate90", "p": 0.5}],
                 "mean": [0.08, 0.04, 0.04, 0.06], "std": [0.13, 0.09, 0.1, 0.08]},
        "cells": {"masks": str(synth["seg"]), "store": str(synth["root"] / "store")},
        "model": {"name": "resnet10t_w16"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 2e-3, "precision": "32", "device": "cpu",
                  "samples_per_epoch": 24, "scheduler": {"name": "plateau", "patience": 0}, "out": str(out), "progress": False,
                  "seed": 0, "tensorboard": False},
    })
    cfg["train"].update(train)
    return cfg


@pytest.fixture(scope="module")
def trained(synth: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    return fit(cell_config(synth, tmp_path_factory.mktemp("cellrun") / "run"), 0)


# ------------------------------------------------------------------------------------------ pure parts


def test_raw_crops_are_the_stage2_crops_of_the_raw_image() -> None:
    rng = np.random.default_rng(0)
    rgby = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    labels = np.zeros((20, 24), np.uint16)
    labels[2:9, 3:12], labels[10:18, 14:22], labels[0:5, 18:24] = 1, 2, 3  # label map at half the image size
    mean, std = (0.1, 0.2, 0.3, 0.4), (0.2, 0.2, 0.3, 0.1)
    for blank in ("raw", "none", "normalized"):
        params = CropParams(size=16, blank=blank)
        raw, cells = image_cell_crops(rgby, labels, params, mean=mean)
        assert raw.dtype == np.uint8 and raw.shape == (3, 16, 16, 4)
        ref, _ = extract_crops(normalize(rgby, mean, std), labels, cells, params,
                               [-m / s for m, s in zip(mean, std)])
        # the same crops up to the uint8 rounding of the raw ones (half a grey level, in normalised units)
        assert torch.allclose(normalize(raw, mean, std), ref, atol=0.51 / 255 / min(std) + 1e-5)
    assert (image_cell_crops(rgby, labels, CropParams(size=16, blank="raw"))[0][:, 0, 0] == 0).all()


# ----------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_cell_training_writes_a_run_and_the_crop_store(trained: dict, synth: dict[str, Path]) -> None:
    out = Path(trained["out"])
    for name in ("best.safetensors", "last.safetensors", "config.yaml", "metrics.csv", "curves.png"):
        assert (out / name).is_file(), name
    hist = trained["history"]
    assert len(hist) == 2 and all(np.isfinite(r["train_loss"]) for r in hist)
    assert all(r["train_puzzle"] == 0 and r["train_rec"] == 0 for r in hist)  # no puzzle branch for cells
    assert hist[0]["train_images"] == 24  # samples_per_epoch cells
    from wsss.models import load_model_from_checkpoint

    model, cfg = load_model_from_checkpoint(out / "last.safetensors")
    assert cfg["task"] == "cell" and model.model_cfg["input_size"] == 32
    stores = [p for p in (synth["root"] / "store").iterdir() if p.is_dir()]
    assert len(stores) == 1
    assert len(list(stores[0].glob("*.cells.npz"))) == N_IMAGES
    store = CellCropStore(synth["root"] / "store", CropParams(size=32), synth["seg"],
                          mean=cfg["data"]["mean"])
    assert store.root == stores[0]
    index = store.index([f.name[:-len(".cells.npz")] for f in stores[0].glob("*.cells.npz")])
    n_cells = sum(index_cells(load_label_maps(p).cells).num_cells for p in synth["seg"].glob("*.npz"))
    assert len(index) == n_cells
    assert store.crop(index["image_id"][0], 0).shape == (32, 32, 4)


def _resumed_equals_uninterrupted(base: dict, tmp_path: Path) -> tuple[dict, dict]:
    """Train ``base`` (2 epochs) in one go into ``a`` and as 1 epoch + resume into ``b``; assert equal weights."""
    full = fit(copy.deepcopy(base), 0)
    part = copy.deepcopy(base)
    part["train"]["out"], part["train"]["epochs"] = str(tmp_path / "b"), 1
    fit(copy.deepcopy(part), 0)
    part["train"]["epochs"] = 2
    resumed = fit(copy.deepcopy(part), 0, resume=True)
    a = load_file(str(Path(full["out"]) / "last.safetensors"))
    b = load_file(str(Path(resumed["out"]) / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in full["history"]] == [r["train_loss"] for r in resumed["history"]]
    return full, part


@pytest.mark.slow
def test_cell_training_resumes_exactly(synth: dict[str, Path], tmp_path: Path) -> None:
    _resumed_equals_uninterrupted(cell_config(synth, tmp_path / "a"), tmp_path)


def test_cell_task_needs_masks_and_matching_soft_labels(synth: dict[str, Path], tmp_path: Path) -> None:
    cfg = cell_config(synth, tmp_path / "r")
    cfg["cells"]["masks"] = None
    with pytest.raises(TrainError, match="cells.masks"):
        fit(cfg, 0)
    # a soft-label table whose areas are not those of the label maps: refused
    table = _oof_like_table(synth)
    table["area"] = table["area"] + 1
    table.to_parquet(tmp_path / "other.parquet")
    cfg = cell_config(synth, tmp_path / "r2", epochs=1)
    cfg["data"]["soft_labels"] = str(tmp_path / "other.parquet")
    with pytest.raises(TrainError, match="other label maps"):
        fit(cfg, 0)


def _oof_like_table(synth: dict[str, Path]) -> pd.DataFrame:
    """A per-cell table over the label maps with random probabilities (what an OOF run writes)."""
    from wsss.infer.tables import cell_frame

    rng = np.random.default_rng(1)
    folds = pd.read_csv(synth["folds"], dtype={"ID": str})
    frames = []
    for image_id, fold in zip(folds["ID"], folds["fold"]):
        path = synth["seg"] / f"{image_id}.npz"
        cells = index_cells(load_label_maps(path).cells)
        frames.append(cell_frame(image_id, "test", int(fold), cells, rng.random((cells.num_cells, 19)), (SIZE, SIZE),
                                 str(path)))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.slow
def test_cell_training_from_soft_cell_targets(synth: dict[str, Path], tmp_path: Path) -> None:
    from wsss.train.data import build_cell_loaders
    from wsss.train.ddp import DistInfo

    table = _oof_like_table(synth)
    table.to_parquet(tmp_path / "soft.parquet")
    cfg = cell_config(synth, tmp_path / "run", epochs=1)
    cfg["data"]["soft_labels"] = str(tmp_path / "soft.parquet")
    train_loader, _, _, _ = build_cell_loaders(copy.deepcopy(cfg), 0, DistInfo(), torch.device("cpu"))
    ds = train_loader.dataset
    keys = pd.DataFrame([k.split("#") for k in ds.ids], columns=["image_id", "cell_id"]).astype({"cell_id": np.int64})
    expected = keys.merge(table, on=["image_id", "cell_id"], how="left")[PROB_COLUMNS].to_numpy(np.float32)
    assert np.allclose(ds.targets, expected)
    assert np.isfinite(fit(cfg, 0)["history"][0]["train_loss"])


# ---------------------------------------------------------------------------------------------- bags


def test_pool_cells_lse_lies_between_mean_and_max_and_tends_to_both() -> None:
    from wsss.losses import pool_cells

    x = torch.randn(3, 5, 19, generator=torch.Generator().manual_seed(0))
    mean, top = pool_cells(x, "mean"), pool_cells(x, "max")
    lse = pool_cells(x, "lse", 5.0)
    assert torch.all(lse >= mean - 1e-5) and torch.all(lse <= top + 1e-5)
    assert torch.allclose(pool_cells(x, "lse", 1e-3), mean, atol=5e-3)
    assert torch.allclose(pool_cells(x, "lse", 1e4), top, atol=1e-3)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_cells(x, "median")
    with pytest.raises(ValueError, match="B x K x C"):
        pool_cells(x[0], "max")


def test_bag_loss_terms_and_weights() -> None:
    from wsss.losses import bag_loss, bce_term

    logits = torch.randn(2, 4, 19, requires_grad=True)
    cells = (torch.rand(2, 4, 19) > 0.5).float()
    image = cells.amax(dim=1)
    terms = bag_loss(logits, cells, image, w_cell=0.5, w_bag=2.0, pool="max")
    assert torch.isclose(terms.full, bce_term(logits, cells))
    assert torch.isclose(terms.puzzle, bce_term(logits.amax(dim=1), image))
    assert torch.isclose(terms.total, 0.5 * terms.full + 2.0 * terms.puzzle) and terms.rec == 0
    # with max pooling and no cell term only the top cell of each bag and class gets a gradient
    bag_loss(logits, cells, image, w_cell=0.0, w_bag=1.0, pool="max").total.backward()
    assert int((logits.grad != 0).sum(dim=1).max()) == 1


def test_bag_dataset_draws_cells_of_one_image(synth: dict[str, Path]) -> None:
    from wsss.data.cells import CellBagDataset, CellCropDataset, bag_collate

    store = CellCropStore(synth["root"] / "bagstore", CropParams(size=32), synth["seg"])
    ids = sorted(p.stem for p in synth["seg"].glob("*.npz"))[:3]
    assert not store.build(synth["cache"], ids, progress=False)
    index = store.index(ids)
    cell_y = np.random.default_rng(0).random((len(index), 19)).astype(np.float32)
    cells = CellCropDataset(store, index, cell_y)
    image_y = np.eye(19, dtype=np.float32)[:3]
    k = int(index.groupby("image_id").size().max()) + 2  # more than any image has: every cell, then repeats
    ds = CellBagDataset(cells, ids, image_y, k)
    torch.manual_seed(0)
    crops, targets = ds[1]
    assert crops.shape == (k, 4, 32, 32) and targets.shape == (k + 1, 19)
    assert torch.equal(targets[0], torch.from_numpy(image_y[1]))
    rows = np.flatnonzero(index["image_id"].to_numpy() == ids[1])
    chosen = [int(np.flatnonzero((cell_y[rows] == t.numpy()).all(axis=1))[0]) for t in targets[1:]]
    assert set(chosen) == set(range(len(rows)))  # every cell of the image, then repeats of them
    first = chosen[0]
    assert torch.allclose(crops[0], cells[int(rows[first])][0])  # the crop of the cell whose target it carries
    small = CellBagDataset(cells, ids, image_y, 2)
    crops2, targets2 = bag_collate([small[0], small[2]])
    assert crops2.shape == (4, 4, 32, 32) and targets2.shape == (2, 3, 19)
    keep = (index["image_id"] != ids[0]).to_numpy()
    with pytest.raises(ValueError, match="no cells"):
        CellBagDataset(CellCropDataset(store, index[keep], cell_y[keep]), ids, image_y, 2)


@pytest.mark.parametrize("bag, match", [({"size": -1}, "cells.bag.size"), ({"size": 4, "pool": "median"}, "cells.bag.pool"),
                                        ({"size": 4, "lse_r": 0.0}, "cells.bag.lse_r"),
                                        ({"size": 4, "w_cell": 0.0, "w_bag": 0.0}, "not both 0")])
def test_bad_bag_settings_are_refused_before_any_work(bag: dict, match: str) -> None:
    from wsss.train.data import bag_settings

    with pytest.raises(TrainError, match=match):
        bag_settings({"task": "cell", "cells": {"bag": bag}})
    assert bag_settings({"task": "cell", "cells": {"bag": {"size": 0}}}) is None


@pytest.mark.slow
def test_cell_training_on_bags_resumes_exactly(synth: dict[str, Path], tmp_path: Path) -> None:
    bags = {"size": 4, "pool": "lse", "lse_r": 5.0, "w_cell": 0.5, "w_bag": 1.0}
    base = cell_config(synth, tmp_path / "a", batch_size=2, samples_per_epoch=4)
    base["cells"]["bag"] = bags
    full, part = _resumed_equals_uninterrupted(base, tmp_path)
    hist = full["history"]
    assert hist[0]["train_images"] == 16  # 4 bags of 4 cells
    assert all(r["train_puzzle"] > 0 for r in hist)  # the bag term
    assert np.allclose([r["train_loss"] for r in hist], [0.5 * r["train_full"] + r["train_puzzle"] for r in hist],
                       rtol=1e-4)
    single = copy.deepcopy(part)  # the same run resumed as single cells: refused
    single["cells"]["bag"]["size"], single["train"]["epochs"] = 0, 3
    with pytest.raises(TrainError, match="cells.bag.size 0"):
        fit(single, 0, resume=True)


# ---------------------------------------------------------------------------------------- inference


@pytest.mark.slow
def test_stage_cell_table_contract_d4_resume_and_oof(trained: dict, synth: dict[str, Path], tmp_path: Path,
                                                     capsys) -> None:
    from wsss.cli.infer import main as infer
    from wsss.cli.oof import main as oof

    common = ["--stage", "cell", "--ckpt", trained["out"], "--images", str(synth["cache"]), "--masks",
              str(synth["seg"]), "--folds", str(synth["folds"]), "--workers", "0"]
    assert infer(common + ["--fold", "0", "--out", str(tmp_path / "f0")]) == 0
    table = pd.read_parquet(tmp_path / "f0" / "cells_stagecell.parquet")
    assert list(table.columns) == CELL_COLUMNS
    probs = table[PROB_COLUMNS].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all() and np.isfinite(probs).all()
    assert (table["fold"] == 0).all() and table["source"].str.startswith("cell:").all()
    folds = pd.read_csv(synth["folds"], dtype={"ID": str})
    for image_id in folds.loc[folds["fold"] == 0, "ID"]:
        ids = index_cells(load_label_maps(synth["seg"] / f"{image_id}.npz").cells).ids
        assert sorted(table.loc[table["image_id"] == image_id, "cell_id"]) == sorted(ids.tolist())
    capsys.readouterr()
    assert infer(common + ["--fold", "0", "--out", str(tmp_path / "f0")]) == 0  # resumed: nothing left to do
    assert "0 images" in capsys.readouterr().out
    assert infer(common + ["--fold", "0", "--out", str(tmp_path / "f0"), "--tta", "d4"]) == 2  # other settings: refused
    assert infer(common + ["--fold", "0", "--out", str(tmp_path / "d4"), "--tta", "d4"]) == 0
    d4 = pd.read_parquet(tmp_path / "d4" / "cells_stagecell.parquet")
    assert len(d4) == len(table) and not np.allclose(d4[PROB_COLUMNS].to_numpy(), probs)
    assert infer(common + ["--fold", "1", "--out", str(tmp_path / "f1")]) == 0
    assert oof([str(tmp_path / "f0"), str(tmp_path / "f1"), "--folds", str(synth["folds"]), "--out",
                str(tmp_path / "oof"), "--stage", "cell"]) == 0
    merged = pd.read_parquet(tmp_path / "oof" / "oof_cells_stagecell.parquet")
    assert merged["image_id"].nunique() == N_IMAGES
    capsys.readouterr()
    assert infer(["--stage", "2"] + common[2:] + ["--fold", "0", "--out", str(tmp_path / "s2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use --stage cell" in err[0]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_cell_task_smoke(synth: dict[str, Path], tmp_path: Path) -> None:
    """Two CPU processes: rank 0 cuts the crops into a fresh store while rank 1 waits, both train."""
    import os
    import subprocess
    import sys

    import yaml

    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.is_file():
        pytest.skip("torchrun not found next to the python executable")
    cfg = cell_config(synth, tmp_path / "run", epochs=1)
    cfg["cells"]["store"] = str(tmp_path / "store")
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "wsss.cli.train", "--config", str(cfg_path),
           "--fold", "0", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "last.safetensors").is_file()
    assert len(list((tmp_path / "store").glob("*/*.cells.npz"))) == N_IMAGES
