"""wsss-segment: both input layouts, resume, bad images reported by id, overlays, masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from wsss.masks import load_label_maps
from hpa_seg.toy import ToyCell, toy_field
from hpa_seg import run as seg_run
from wsss.cli import segment as cli
from wsss.data.io import CHANNELS, write_rgby_png

FIELDS = {
    "img_a": [ToyCell(60, 60, 40, 12), ToyCell(120, 70, 40, 12, brightness=50), ToyCell(245, 128, 35, 11)],
    "img_b": [ToyCell(100, 100, 45, 14), ToyCell(180, 180, 35, 11, brightness=70)],
    "img_c": [],
}


def _kaggle(root: Path, bad: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for k, (image_id, cells) in enumerate(FIELDS.items()):
        rgby, _, _ = toy_field(256, cells, seed=k)
        for c, name in enumerate(CHANNELS):
            cv2.imwrite(str(root / f"{image_id}_{name}.png"), rgby[:, :, c])
    if bad:
        for name in CHANNELS:
            (root / f"img_bad_{name}.png").write_bytes(b"")
    return root


def test_kaggle_layout_resume_and_bad_image(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    images = _kaggle(tmp_path / "imgs")
    out = tmp_path / "out"
    status = cli.main([str(images), str(out), "--size", "128", "--quiet", "--overlay", "img_a"])
    err = capsys.readouterr().err
    assert status == 1
    assert "img_bad" in err and "Traceback" not in err
    assert sorted(p.stem for p in out.glob("*.npz")) == ["img_a", "img_b", "img_c"]
    a = load_label_maps(out / "img_a.npz")
    assert a.cells.shape == (128, 128) and (a.orig_height, a.orig_width) == (256, 256)
    assert a.num_cells == 3 and a.border.sum() == 1
    assert load_label_maps(out / "img_c.npz").num_cells == 0, "an image without cells gives empty maps"
    assert (out / "overlays" / "img_a.png").is_file()

    seen: list[str] = []
    original = seg_run.run_task

    def spy(task: seg_run.Task) -> seg_run.Result:
        seen.append(task.image_id)
        return original(task)

    monkeypatch.setattr(seg_run, "run_task", spy)
    mtime = (out / "img_a.npz").stat().st_mtime_ns
    status = cli.main([str(images), str(out), "--size", "128", "--quiet"])
    assert status == 1 and seen == ["img_bad"], "finished ids are skipped, the bad one is retried"
    assert (out / "img_a.npz").stat().st_mtime_ns == mtime
    seen.clear()
    assert cli.main([str(images), str(out), "--size", "128", "--quiet", "--ids", "img_a", "img_b"]) == 0
    assert seen == []


def test_resume_with_other_settings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = _kaggle(tmp_path / "imgs", bad=False)
    out = tmp_path / "out"
    assert cli.main([str(images), str(out), "--size", "128", "--quiet", "--ids", "img_b"]) == 0
    assert cli.main([str(images), str(out), "--size", "64", "--quiet", "--ids", "img_b"]) == 2
    assert "size" in capsys.readouterr().err
    assert cli.main([str(images), str(out), "--size", "64", "--quiet", "--ids", "img_b", "--overwrite"]) == 0
    assert load_label_maps(out / "img_b.npz").cells.shape == (64, 64)


def test_cache_layout_records_original_size_and_workers(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    rows = ["ID,width,height,source"]
    for k, (image_id, cells) in enumerate(list(FIELDS.items())[:2]):
        rgby, _, _ = toy_field(256, cells, seed=k)
        write_rgby_png(cache / f"{image_id}.png", rgby)
        rows.append(f"{image_id},2048,2048,somewhere/{image_id}")
    (cache / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    status = cli.main([str(cache), str(out), "--size", "256", "--workers", "2", "--quiet", "--border", "drop"])
    assert status == 0
    a = load_label_maps(out / "img_a.npz")
    assert (a.orig_height, a.orig_width) == (2048, 2048)
    assert a.num_cells == 2 and not a.border.any(), "border cells dropped"


def test_precomputed_masks_option(tmp_path: Path) -> None:
    images = _kaggle(tmp_path / "imgs", bad=False)
    masks = tmp_path / "masks"
    masks.mkdir()
    _, true_cells, _ = toy_field(256, FIELDS["img_a"], seed=0)
    big = cv2.resize(true_cells, (512, 512), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(masks / "img_a_predictedmask.png"), big)
    out = tmp_path / "out"
    status = cli.main([str(images), str(out), "--size", "256", "--quiet", "--masks", str(masks)])
    assert status == 1, "ids without a mask file fail, by id"
    a = load_label_maps(out / "img_a.npz")
    assert np.array_equal(a.cells, true_cells) and a.nuclei.max() == 3
    assert not (out / "img_b.npz").exists()


def test_bad_arguments_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([str(tmp_path / "absent"), str(tmp_path / "out")]) == 2
    assert "not a folder" in capsys.readouterr().err
    images = _kaggle(tmp_path / "imgs", bad=False)
    assert cli.main([str(images), str(tmp_path / "o"), "--param", "no_such=1"]) == 2
    assert "no_such" in capsys.readouterr().err
    assert cli.main([str(images), str(tmp_path / "o"), "--ids", "zzz"]) == 2
