"""Stage drivers, resumable tables, skipped inputs, OOF merge and the two CLIs on a tiny dataset."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from wsss.infer.crops import CropParams
from wsss.infer.oof import merge_oof
from wsss.infer.runner import InferSettings, render_overlays, run_stage1, run_stage2
from wsss.infer.scoring import ScoreParams
from wsss.infer.settings import DEFAULTS
from wsss.infer.sources import ImageSource, MaskSource
from wsss.infer.tables import PartWriter, read_parquet
from wsss.schema import CELL_COLUMNS, IMAGE_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
GOOD = ["img0", "img1", "img2"]
MEAN = (0.05, 0.05, 0.05, 0.05)
STD = (0.1, 0.1, 0.1, 0.1)


class GreenRedCAM(torch.nn.Module):
    """Obeys the PuzzleCAM contract: class 0 CAM = pooled green, class 1 = pooled red, others negative."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))
        self.calls = 0
        self.fail_after = fail_after

    def forward(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        pooled = F.avg_pool2d(x, 4)
        cams = torch.full((x.shape[0], 19, pooled.shape[2], pooled.shape[3]), -2.0)
        cams[:, 0] = pooled[:, 1] * self.scale + 1.0
        cams[:, 1] = pooled[:, 0] * self.scale + 1.0
        return cams.mean((2, 3)), cams


def _write_image(root: Path, image_id: str, rgby: np.ndarray) -> None:
    for c, name in enumerate(("red", "green", "blue", "yellow")):
        cv2.imwrite(str(root / f"{image_id}_{name}.png"), rgby[:, :, c])


def make_dataset(tmp: Path) -> tuple[Path, Path]:
    """64x64 Kaggle-layout images: cell 1 green+red, cell 2 red only, cell 3 nothing; two bad ids."""
    images, masks = tmp / "images", tmp / "masks"
    images.mkdir()
    masks.mkdir()
    labels = np.zeros((64, 64), dtype=np.uint16)
    labels[8:24, 8:24] = 1
    labels[40:56, 40:56] = 2
    labels[8:24, 40:56] = 3
    rgby = np.zeros((64, 64, 4), dtype=np.uint8)
    rgby[labels > 0, 2] = 120
    rgby[labels == 1, 1] = 200
    rgby[(labels == 1) | (labels == 2), 0] = 100
    for image_id in GOOD + ["img3", "img4"]:
        _write_image(images, image_id, rgby)
    for image_id in GOOD + ["img3"]:
        cv2.imwrite(str(masks / f"{image_id}_cells.png"), labels)
    (images / "img3_red.png").write_bytes(b"not a png at all")  # corrupt image
    return images, masks  # img4 has no mask


def settings(out: Path, **kw) -> InferSettings:
    base = dict(out_dir=out, input_size=64, mean=MEAN, std=STD, batch_size=2, workers=0, chunk_images=2,
                source="stage1:test", crop=CropParams(size=32),
                score=ScoreParams(cam_weight=1.0, threshold=0.3, negative_floor=0.1))
    base.update(kw)
    return InferSettings(**base)


@pytest.fixture()
def data(tmp_path: Path) -> tuple[Path, Path]:
    return make_dataset(tmp_path)


def _run1(data, out, ids=None, model=None, **kw):
    images, masks = data
    return run_stage1(model or GreenRedCAM(), ids or GOOD + ["img3", "img4"], ImageSource(images),
                      MaskSource(masks, out), settings(out, **kw))


def test_stage1_tables_scores_and_skipped_ids(data, tmp_path):
    out = tmp_path / "out"
    summary = _run1(data, out)
    assert sorted(summary.processed) == GOOD
    skipped = dict(summary.skipped)
    assert set(skipped) == {"img3", "img4"}
    assert "img3" in skipped["img3"] and "red" in skipped["img3"]
    assert "no label map" in skipped["img4"]
    cells = read_parquet(out / "cells_stage1.parquet")
    images = read_parquet(out / "images_stage1.parquet")
    assert list(cells.columns) == CELL_COLUMNS and list(images.columns) == IMAGE_COLUMNS
    assert len(cells) == 9 and sorted(images["image_id"]) == GOOD
    one = cells[cells["image_id"] == "img0"].set_index("cell_id")
    assert one.loc[1, ["x0", "y0", "x1", "y1", "area"]].tolist() == [8, 8, 24, 24, 256]
    assert one.loc[1, "p_0"] > 0.5 and one.loc[2, "p_0"] == 0 and one.loc[2, "p_1"] > 0.3
    assert one.loc[3, "p_18"] == pytest.approx(1.0) and one.loc[3, ["p_0", "p_1"]].max() == 0
    assert one.loc[1, "p_18"] < 0.5
    assert (one["fold"] == -1).all() and (one["source"] == "stage1:test").all()
    assert (one["orig_width"] == 64).all() and not one["is_border"].any()
    npz = Path(one["mask_path"].iloc[0])
    assert npz.suffix == ".npz" and npz.is_file()
    with np.load(npz) as maps:
        assert maps["cells"].shape == (64, 64) and int(maps["orig_height"]) == 64
    report = pd.read_csv(out / "skipped_stage1.csv")
    assert sorted(report["image_id"]) == ["img3", "img4"]


def test_stage1_d4_and_multi_scale_on_an_equivariant_model(data, tmp_path):
    """GreenRedCAM (pointwise, then pooled) commutes with every D4 element: D4 TTA leaves its table
    unchanged; multi-scale runs, is recorded in the run's settings and keeps the cell order."""
    from wsss.infer.tta import D4_MODES

    plain = tmp_path / "plain"
    _run1(data, plain, ids=GOOD)
    _run1(data, tmp_path / "d4", ids=GOOD, tta=D4_MODES)
    _run1(data, tmp_path / "ms", ids=GOOD, tta=D4_MODES, scales=(0.5, 1.0, 2.0))
    base = read_parquet(plain / "cells_stage1.parquet")
    d4 = read_parquet(tmp_path / "d4" / "cells_stage1.parquet")
    ms = read_parquet(tmp_path / "ms" / "cells_stage1.parquet")
    probs = [f"p_{k}" for k in range(19)]
    np.testing.assert_allclose(d4[probs].to_numpy(), base[probs].to_numpy(), atol=1e-5)
    assert ms[["image_id", "cell_id"]].equals(base[["image_id", "cell_id"]])
    run = yaml.safe_load((tmp_path / "ms" / "run_stage1.json").read_text())
    assert run["settings"]["scales"] == [0.5, 1.0, 2.0] and len(run["settings"]["tta"]) == 7
    assert "scales" not in yaml.safe_load((plain / "run_stage1.json").read_text())["settings"]


def test_resume_after_kill_skips_finished_ids(data, tmp_path):
    out = tmp_path / "out"
    # probe forward = call 1, first batch (2 images) = call 2; the kill hits the second batch
    with pytest.raises(KeyboardInterrupt):
        _run1(data, out, ids=GOOD, model=GreenRedCAM(fail_after=2), batch_size=2, chunk_images=1)
    assert PartWriter(out, "stage1", ("cells", "images")).finished_ids() == {"img0", "img1"}
    orphan = out / "parts_stage1" / "cells-000099.parquet"  # a part whose marker never got written
    orphan.write_bytes(b"half")
    model = GreenRedCAM()
    summary = _run1(data, out, ids=GOOD, model=model)
    assert not orphan.exists()
    assert summary.already_done == 2 and summary.processed == ["img2"]
    assert model.calls == 2  # probe + one batch: finished ids were not run again
    cells = read_parquet(out / "cells_stage1.parquet")
    assert sorted(cells.groupby("image_id").size().items()) == [(i, 3) for i in GOOD]
    assert sorted(read_parquet(out / "images_stage1.parquet")["image_id"]) == GOOD


def test_stage2_crops_scores_and_pictures(data, tmp_path):
    images, masks = data
    out = tmp_path / "out"
    st = settings(out, source="stage2:test", batch_size=4, images_per_batch=2)
    summary = run_stage2(GreenRedCAM(), GOOD + ["img3"], ImageSource(images), MaskSource(masks, out), st)
    assert sorted(summary.processed) == GOOD and [i for i, _ in summary.skipped] == ["img3"]
    cells = read_parquet(out / "cells_stage2.parquet")
    assert list(cells.columns) == CELL_COLUMNS and len(cells) == 9
    one = cells[cells["image_id"] == "img1"].set_index("cell_id")
    assert one.loc[1, "p_0"] > one.loc[2, "p_0"] and one.loc[1, "p_0"] > one.loc[3, "p_0"]
    assert one.loc[2, "p_1"] > one.loc[3, "p_1"]
    assert not (out / "images_stage2.parquet").exists()
    pics = render_overlays(GreenRedCAM(), ["img0"], ImageSource(images), MaskSource(masks, out), st, stage=2)
    pics += render_overlays(GreenRedCAM(), ["img0"], ImageSource(images), MaskSource(masks, out),
                            settings(out), stage=1)
    assert {p.name for p in pics} == {"img0_stage2_crops.png", "img0_stage2_cells.png",
                                      "img0_stage1_cams.png", "img0_stage1_cells.png"}
    assert all(cv2.imread(str(p)) is not None for p in pics)


def test_oof_merge_coverage_missing_duplicates_wrong_fold(data, tmp_path):
    folds = pd.DataFrame({"ID": GOOD + ["img3"], "Label": ["0"] * 4, "fold": [0, 0, 1, 1]})
    run0, run1 = tmp_path / "f0", tmp_path / "f1"
    _run1(data, run0, ids=["img0", "img1"], fold=0)
    _run1(data, run1, ids=["img2", "img3"], fold=1)  # img3 is corrupt -> skipped -> missing
    merged, report = merge_oof([run0, run1], folds, stage=1)
    assert report.missing == ["img3"] and not report.duplicates and not report.wrong_fold
    assert not report.complete and report.n_covered == 3
    assert len(merged["cells"]) == 9 and sorted(merged["images"]["image_id"]) == GOOD
    assert merged["cells"].groupby("image_id")["fold"].first().to_dict() == {"img0": 0, "img1": 0, "img2": 1}
    _, dup = merge_oof([run0, run0, run1], folds)
    assert dup.duplicates == ["img0", "img1"]
    wrong = tmp_path / "wrong"
    _run1(data, wrong, ids=["img0"], fold=1)
    merged_w, rep_w = merge_oof([run0, run1, wrong], folds)
    assert rep_w.wrong_fold == ["img0"] and len(merged_w["cells"]) == 9
    complete, rep_c = merge_oof([run0, run1], folds[folds["ID"] != "img3"])
    assert rep_c.complete and rep_c.n_covered == 3


def test_config_file_matches_code_defaults():
    assert yaml.safe_load((ROOT / "configs" / "infer.yaml").read_text()) == DEFAULTS


def _checkpoint(tmp: Path) -> Path:
    from wsss.models import build_model
    from wsss.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = {"model": {"name": "test_resnet"}, "data": {"size": 64, "mean": list(MEAN), "std": list(STD)}}
    run = tmp / "run_fold{fold}".replace("{fold}", "0")
    save_checkpoint(run, "best", build_model("test_resnet"), cfg, epoch=1)
    return run


def test_cli_both_stages_fold_and_oof(data, tmp_path, capsys):
    from wsss.cli.infer import main as infer_main
    from wsss.cli.oof import main as oof_main

    images, masks = data
    _checkpoint(tmp_path)
    folds = tmp_path / "folds.csv"
    pd.DataFrame({"ID": GOOD, "Label": ["0", "1", "2"], "fold": [0, 0, 0]}).to_csv(folds, index=False)
    out = tmp_path / "oof0"
    common = ["--ckpt", str(tmp_path / "run_fold{fold}"), "--images", str(images), "--masks", str(masks),
              "--out", str(out), "--fold", "0", "--folds", str(folds), "--workers", "0", "--batch-size", "2"]
    assert infer_main(["--stage", "1", *common, "--tta", "--overlay", "img0", "--set", "stage1.threshold=0.4"]) == 0
    assert infer_main(["--stage", "2", *common, "--set", "stage2.size=32"]) == 0
    text = capsys.readouterr().out
    assert "stage 1 (stage1:test_resnet, fold 0): 3 images, 9 cells" in text
    assert "stage 2 (stage2:test_resnet, fold 0): 3 images, 9 cells" in text
    cfg = yaml.safe_load((out / "config_stage1.yaml").read_text())
    assert cfg["stage1"]["threshold"] == 0.4 and cfg["tta"] is True and cfg["resolved"]["input_size"] == 64
    assert (out / "overlays" / "img0_stage1_cams.png").is_file()
    cells2 = read_parquet(out / "cells_stage2.parquet")
    assert len(cells2) == 9 and (cells2["fold"] == 0).all()
    merged = tmp_path / "merged"
    assert oof_main([str(out), "--folds", str(folds), "--out", str(merged), "--stage", "2"]) == 0
    assert len(read_parquet(merged / "oof_cells_stage2.parquet")) == 9
    more = tmp_path / "folds_more.csv"
    pd.DataFrame({"ID": GOOD + ["img9"], "Label": ["0"] * 4, "fold": [0, 0, 0, 1]}).to_csv(more, index=False)
    assert oof_main([str(out), "--folds", str(more), "--out", str(merged)]) == 1
    assert "missing: 1: img9" in capsys.readouterr().out
    # a resumed run with the same fold and settings does nothing; another fold, other scoring
    # settings or another checkpoint into the same folder is refused
    same = ["--stage", "1", *common, "--tta", "--set", "stage1.threshold=0.4"]
    assert infer_main(same) == 0
    assert "0 images, 0 cells" in capsys.readouterr().out
    assert infer_main(["--stage", "1", *common, "--set", "stage1.threshold=0.4"]) == 2
    err = capsys.readouterr().err
    assert "holds a stage1 run with other scoring settings (tta differ)" in err and "new --out" in err
    assert infer_main(same[:-1] + ["stage1.cam_weight=0.9"]) == 2
    assert "score differ" in capsys.readouterr().err
    other = tmp_path / "other" / "run_fold0"
    _checkpoint(other.parent)  # the same backbone, another checkpoint file
    assert infer_main([a if a != str(tmp_path / "run_fold{fold}") else str(other) for a in same]) == 2
    assert "holds a stage1 run with ckpt=" in capsys.readouterr().err
    other_fold = ["--stage", "1", "--ckpt", str(tmp_path / "run_fold0"), "--images", str(images), "--masks",
                  str(masks), "--out", str(out), "--fold", "1", "--folds", str(more), "--workers", "0"]
    assert infer_main(other_fold) == 2
    assert "holds a stage1 run with fold=0" in capsys.readouterr().err
    assert infer_main(["--stage", "1", "--ckpt", str(tmp_path / "nope"), "--images", str(images), "--masks",
                       str(masks), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "wsss-infer: error:" in err and "nope" in err
    # a bad --device is a one-line error before the checkpoint is loaded, not a traceback
    assert infer_main([*same, "--device", "foo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wsss-infer: error: --device") and "foo" in err and "Traceback" not in err
    if not torch.cuda.is_available():
        assert infer_main([*same, "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.shared_data
def test_real_hpa_sample_sizes_and_reference_masks(hpa_sample, tmp_path):
    """Real 2048/3072 px Kaggle-layout images with full-resolution uint8 reference masks go through."""
    out = tmp_path / "real"
    st = settings(out, input_size=128, batch_size=3, crop=CropParams(size=32))
    images, masks = ImageSource(hpa_sample / "images"), MaskSource(hpa_sample / "masks", out)
    ids = images.list_ids()
    summary = run_stage1(GreenRedCAM(), ids, images, masks, st)
    assert sorted(summary.processed) == sorted(ids) and not summary.skipped
    cells = read_parquet(out / "cells_stage1.parquet")
    counts = cells.groupby("image_id").size().to_dict()
    assert counts == {"000a6c98-bb9b-11e8-b2b9-ac1f6b6435d0": 19, "a34d8680-bb99-11e8-b2b9-ac1f6b6435d0": 18,
                      "a7faf0b4-bb99-11e8-b2b9-ac1f6b6435d0": 10}
    sizes = cells.groupby("image_id")["orig_width"].first().to_dict()
    assert sorted(sizes.values()) == [2048, 2048, 3072]
    assert cells[["x1", "y1"]].max().max() <= 512 and cells["p_0"].between(0, 1).all()
    summary2 = run_stage2(GreenRedCAM(), ids[:1], images, masks, settings(out, crop=CropParams(size=32)))
    assert summary2.n_cells == counts[ids[0]]


def test_converted_label_map_rebuilt_when_working_size_changes(data, tmp_path):
    _, masks = data
    out = tmp_path / "out"
    full = MaskSource(masks, out, working_size=None).load("img0", (64, 64))
    assert full.cells.shape == (64, 64) and full.path == out / "label_maps" / "img0.npz"
    small = MaskSource(masks, out, working_size=32).load("img0", (64, 64))
    assert small.cells.shape == (32, 32), "a changed masks.working_size rebuilds the converted map"
    with np.load(small.path) as maps:
        assert maps["cells"].shape == (32, 32)
    stamp = small.path.stat().st_mtime_ns
    assert MaskSource(masks, out, working_size=32).load("img0", (64, 64)).cells.shape == (32, 32)
    assert small.path.stat().st_mtime_ns == stamp, "a matching converted map is reused"


def test_precision_16_on_cpu_is_bf16_like_training():
    from wsss.infer.cams import amp_name, autocast_context

    assert amp_name("16", "cpu") == "bf16" and amp_name("bf16", "cpu") == "bf16" and amp_name("32", "cpu") == "fp32"
    with autocast_context(torch.device("cpu"), "16"):
        y = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert y.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        autocast_context(torch.device("cpu"), "8")
