"""Training loop: loss goes down, exact resume, crash-safe checkpoints, AMP on CPU, CLI, checkpoint loading."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train_helpers import make_cache, tiny_config

from wsss.models.checkpoint import CheckpointError, load_model_from_checkpoint, read_metadata
from wsss.precision import PrecisionError, autocast, make_scaler, resolve_precision
from wsss.train import checkpoint as ckpt
from wsss.train.loop import TrainError, fit

pytestmark = [pytest.mark.timeout(300)]

AUG = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "RandomRotate90", "p": 0.5}]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cache(tmp_path_factory.mktemp("cache"), n=24)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data: tuple[Path, Path]) -> dict:
    """One 6-epoch run of the tiny test model, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("trained")
    return fit(tiny_config(root, *data, epochs=6, lr=2e-3), 0)


@pytest.mark.slow
def test_training_drives_loss_down_and_beats_chance(trained: dict) -> None:
    hist = trained["history"]
    assert len(hist) == 6
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    assert hist[-1]["train_full"] < hist[0]["train_full"]
    assert trained["val_map"] > trained["val_map_chance"] + 0.1
    out = Path(trained["out"])
    for name in ("best.safetensors", "last.safetensors", "config.yaml", "metrics.csv", "curves.png"):
        assert (out / name).is_file(), name
    lines = (out / "metrics.csv").read_text().splitlines()
    assert len(lines) == 7 and "val_map" in lines[0] and "train_rec" in lines[0]
    meta = read_metadata(out / "best.safetensors")
    assert int(meta["epoch"]) == trained["best_epoch"]
    assert float(meta["val_loss"]) == pytest.approx(trained["best_val_loss"])
    assert trained["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in hist))


@pytest.mark.slow
def test_resume_gives_the_same_next_epoch_as_an_uninterrupted_run(tmp_path: Path, data: tuple[Path, Path]) -> None:
    extra = dict(lr=2e-3, scheduler={"name": "plateau", "factor": 0.3, "patience": 0}, sampler="balanced")
    base = tiny_config(tmp_path / "a", *data, epochs=3, **extra)
    base["data"]["train_augment"] = AUG
    base["loss"]["rec_warmup_epochs"] = 1.5
    full = fit(copy.deepcopy(base), 0)

    part = copy.deepcopy(base)
    part["train"]["out"] = str(tmp_path / "b" / "run")
    part["train"]["epochs"] = 1
    fit(copy.deepcopy(part), 0)
    with pytest.raises(TrainError, match="already holds a run"):
        fit(copy.deepcopy(part), 0)
    part["train"]["epochs"] = 3
    resumed = fit(copy.deepcopy(part), 0, resume=True)

    a = load_file(str(Path(full["out"]) / "last.safetensors"))
    b = load_file(str(Path(resumed["out"]) / "last.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for ra, rb in zip(full["history"], resumed["history"], strict=True):
        for key in ("train_loss", "val_loss", "lr", "w_rec", "step"):
            assert ra[key] == rb[key], key
    assert len(list(Path(resumed["out"]).glob("last.state-*.pt"))) == 1


@pytest.mark.slow
def test_kill_during_save_keeps_previous_checkpoint(tmp_path: Path, data: tuple[Path, Path], monkeypatch) -> None:
    cfg = tiny_config(tmp_path, *data, epochs=1)
    fit(copy.deepcopy(cfg), 0)
    run = Path(cfg["train"]["out"])
    before = (run / "last.safetensors").read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the weights")

    # the new resume-state file is written, then the process dies before the weights are replaced
    monkeypatch.setattr(ckpt, "save_weights", killed)
    cfg["train"]["epochs"] = 2
    with pytest.raises(KeyboardInterrupt):
        fit(copy.deepcopy(cfg), 0, resume=True)
    monkeypatch.undo()
    assert (run / "last.safetensors").read_bytes() == before
    sd, state, meta = ckpt.load_resume_state(run / "last.safetensors")
    assert state["epoch"] == 1 and meta["state_file"] == "last.state-e0001.pt"
    assert not list(run.glob(".*tmp"))
    summary = fit(copy.deepcopy(cfg), 0, resume=True)
    assert summary["epochs"] == 2 and [r["epoch"] for r in summary["history"]] == [1, 2]


def test_atomic_write_leaves_old_file_when_replace_fails(tmp_path: Path, monkeypatch) -> None:
    from wsss.models import build_model

    model = build_model("test_resnet")
    cfg = {"model": {"name": "test_resnet"}}
    path = ckpt.save_checkpoint(tmp_path, "best", model, cfg, epoch=1, val_loss=0.5)
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, "best", model, cfg, epoch=2, val_loss=0.4)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors"]


@pytest.mark.slow
def test_load_model_from_checkpoint_reproduces_outputs(tmp_path: Path, trained: dict) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained["out"], run)
    model, loaded_cfg = load_model_from_checkpoint(run / "best.safetensors", device="cpu")
    assert loaded_cfg["data"]["size"] == 64 and loaded_cfg["model"]["name"] == "test_resnet"
    assert len(loaded_cfg["data"]["mean"]) == 4 and not model.training
    sd = load_file(str(run / "best.safetensors"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key])
    # without config.yaml the copy in the metadata is used
    (run / "config.yaml").unlink()
    _, cfg2 = load_model_from_checkpoint(run / "best.safetensors")
    assert cfg2["model"]["name"] == "test_resnet"
    with pytest.raises(CheckpointError, match="not found"):
        load_model_from_checkpoint(run / "nope.safetensors")
    (run / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_model_from_checkpoint(run / "junk.safetensors")


@pytest.mark.slow
def test_trained_checkpoint_records_its_input(trained: dict) -> None:
    """Training fills the model's record from the resolved data config; the loader restores it."""
    import json

    path = Path(trained["out"]) / "best.safetensors"
    record = json.loads(read_metadata(path)["model"])
    model, cfg = load_model_from_checkpoint(path)
    assert record["input_size"] == cfg["data"]["size"] == 64
    assert record["mean"] == cfg["data"]["mean"] and record["std"] == cfg["data"]["std"]
    assert model.model_cfg == record and record["name"] == "test_resnet"


def test_amp_settings() -> None:
    assert resolve_precision("32", "cpu").dtype is None
    assert resolve_precision(16, "cpu").dtype == torch.bfloat16
    s = resolve_precision("16", "cuda")
    assert s.dtype == torch.float16 and s.use_scaler
    assert not resolve_precision("bf16", "cuda").use_scaler
    with pytest.raises(PrecisionError):
        resolve_precision("8", "cpu")
    assert not make_scaler(resolve_precision("bf16", "cpu")).is_enabled()


@pytest.mark.slow
def test_bf16_autocast_path_on_cpu_trains(tmp_path: Path, data: tuple[Path, Path]) -> None:
    from wsss.models import build_model

    amp = resolve_precision("bf16", "cpu")
    model = build_model("test_resnet")
    with autocast(amp):
        out = model(torch.randn(2, 4, 64, 64), puzzle=True)
    assert out.cams.dtype == torch.bfloat16
    cfg = tiny_config(tmp_path, *data, epochs=2, precision="bf16", lr=2e-3)
    summary = fit(cfg, 0)
    losses = [r["train_loss"] for r in summary["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert load_model_from_checkpoint(Path(summary["out"]) / "last.safetensors")[0] is not None


def test_bad_inputs_are_clear_errors(tmp_path: Path, data: tuple[Path, Path]) -> None:
    cfg = tiny_config(tmp_path, *data)
    with pytest.raises(TrainError, match="fold 7 not found"):
        fit(copy.deepcopy(cfg), 7)
    bad = copy.deepcopy(cfg)
    bad["data"]["size"] = 96
    with pytest.raises(TrainError, match="multiples of 64"):
        fit(bad, 0)
    bad = copy.deepcopy(cfg)
    bad["data"]["folds"] = str(tmp_path / "missing.csv")
    with pytest.raises(TrainError, match="missing.csv"):
        fit(bad, 0)


def test_cli_overrides_and_one_line_errors(tmp_path: Path, data: tuple[Path, Path], capsys) -> None:
    import yaml

    from wsss.cli.train import build_parser, main, resolve_config

    cache, folds = data
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"model": {"name": "test_resnet"}, "data": {"size": 64, "train_augment": None},
                                        "train": {"epochs": 5}}))
    args = build_parser().parse_args(["--config", str(cfg_path), "--epochs", "1", "--batch-size", "4", "--lr", "1e-3",
                                      "--precision", "32", "--set", "loss.w_rec=0.5", "--set", "train.epochs=3",
                                      "--cache", str(cache), "--folds", str(folds)])
    cfg = resolve_config(args)
    assert cfg["train"]["epochs"] == 1 and cfg["loss"]["w_rec"] == 0.5 and cfg["train"]["precision"] == "32"
    assert cfg["train"]["lr"] == pytest.approx(1e-3) and cfg["model"]["name"] == "test_resnet"
    assert cfg["loss"]["w_full"] == 1.0  # defaults kept
    out = tmp_path / "run"
    code = main(["--config", str(cfg_path), "--epochs", "1", "--batch-size", "4", "--precision", "32", "--device", "cpu",
                 "--cache", str(cache), "--folds", str(folds), "--out", str(out), "-q",
                 "--set", "data.mean=[0.08,0.15,0.08,0.08]", "--set", "data.num_workers=0"])
    assert code == 0 and (out / "last.safetensors").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["fold"] == 0 and saved["data"]["mean"] == [0.08, 0.15, 0.08, 0.08]
    capsys.readouterr()
    code = main(["--config", str(cfg_path), "--folds", str(tmp_path / "nope.csv"), "--cache", str(cache),
                 "--out", str(tmp_path / "r2"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("wsss-train: error:") and "nope.csv" in err[0]


def test_cli_bad_precision_device_and_string_flags(tmp_path: Path, data: tuple[Path, Path], capsys, monkeypatch) -> None:
    import yaml

    import wsss.train.loop as loop
    from wsss.cli.train import build_parser, main, resolve_config

    cache, folds = data
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"model": {"name": "test_resnet"}, "data": {"size": 64, "train_augment": None}}))
    base = ["--config", str(cfg_path), "--cache", str(cache), "--folds", str(folds), "--out", str(tmp_path / "r"), "-q"]
    # bad precision / device: one line, exit 2, and nothing built before the check
    monkeypatch.setattr(loop, "build_loaders", lambda *a, **k: pytest.fail("loaders built before validation"))
    for extra, needle in ((["--set", "train.precision=fp8", "--device", "cpu"], "precision"),
                          (["--device", "foo"], "foo")):
        capsys.readouterr()
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("wsss-train: error:") and needle in err[0]
    monkeypatch.undo()
    # --out/--cache/--folds/--device are plain strings, never YAML
    args = build_parser().parse_args(["--config", str(cfg_path), "--out", "{fold}", "--cache", "512", "--folds", "null",
                                      "--device", "cpu"])
    cfg = resolve_config(args)
    assert cfg["train"]["out"] == "{fold}" and cfg["data"]["cache"] == "512" and cfg["data"]["folds"] == "null"
    assert loop.resolve_out_dir(cfg, 3) == Path("3")
    cfg["train"]["out"] = {"fold": None}  # what an unquoted --set train.out={fold} gives
    with pytest.raises(TrainError, match="train.out"):
        loop.resolve_out_dir(cfg, 0)
    # --epochs 0 on a new run: no metrics yet, printed as n/a
    capsys.readouterr()
    code = main(base + ["--epochs", "0", "--batch-size", "4", "--precision", "32", "--device", "cpu",
                        "--set", "data.mean=[0.08,0.15,0.08,0.08]", "--set", "data.std=[0.05,0.2,0.05,0.05]", "--set", "data.num_workers=0"])
    assert code == 0 and "mAP n/a" in capsys.readouterr().out


def test_checkpoint_config_prefers_metadata(tmp_path: Path) -> None:
    import yaml

    from wsss.models import build_model

    cfg = {"model": {"name": "test_resnet"}, "data": {"size": 64, "mean": [0.1] * 4, "std": [0.2] * 4}}
    ckpt.save_checkpoint(tmp_path, "best", build_model("test_resnet"), cfg, 1, 0.5)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**cfg, "data": {"size": 128, "mean": [0.9] * 4, "std": [1.0] * 4}}))
    _, loaded = load_model_from_checkpoint(tmp_path / "best.safetensors")
    assert loaded["data"]["size"] == 64 and loaded["data"]["mean"] == [0.1] * 4


@pytest.mark.slow
def test_resume_warns_about_overridden_lr(tmp_path: Path, data: tuple[Path, Path], caplog) -> None:
    cfg = tiny_config(tmp_path, *data, epochs=1)
    fit(copy.deepcopy(cfg), 0)
    cfg2 = copy.deepcopy(cfg)
    cfg2["train"]["epochs"], cfg2["train"]["lr"] = 2, 5e-4
    with caplog.at_level("WARNING", logger="wsss.train.loop"):
        fit(cfg2, 0, resume=True)
    assert any("train.lr" in r.getMessage() and "differs" in r.getMessage() for r in caplog.records)


def test_all_true_without_ddp() -> None:
    from wsss.train import ddp

    assert ddp.all_true(True) and not ddp.all_true(False)
    assert ddp.all_reduce_sum(torch.tensor([1.0, 2.0])).dtype == torch.float64


def test_resolved_precision_is_saved_with_the_run(trained: dict) -> None:
    import yaml

    saved = yaml.safe_load((Path(trained["out"]) / "config.yaml").read_text())
    resolved = saved["train"]["resolved"]
    assert resolved["precision"] == "32" and resolved["autocast"] == "fp32" and resolved["channels_last"] is False
    assert resolved["why"].startswith("precision: fp32 (32; CPU ")


@pytest.mark.parametrize("amx, expect", [(True, ("bf16", "bf16", True)), (False, ("32", "fp32", False))])
def test_auto_resolution_is_recorded_per_machine(monkeypatch: pytest.MonkeyPatch, amx: bool, expect: tuple) -> None:
    from wsss.precision import CpuCapability
    from wsss.train import ddp
    from wsss.train.loop import resolve_hardware

    monkeypatch.setattr("wsss.precision.cpu_capability", lambda: CpuCapability("AVX512" if amx else "AVX2", amx, False))
    t = {"precision": "auto", "channels_last": "auto"}
    amp = resolve_hardware(t, torch.device("cpu"), ddp.env_info())
    assert (t["resolved"]["precision"], t["resolved"]["autocast"], t["resolved"]["channels_last"]) == expect
    assert amp.canonical == expect[0]
    assert ("AMX" in t["resolved"]["why"]) == amx


@pytest.mark.parametrize("select, expect", [("loss", 0.3), ("map", -0.6), ("ap", -0.6), ("last", -5.0)])
def test_selection_score_is_lower_for_the_better_epoch(select: str, expect: float) -> None:
    metric_name = "ap" if select == "ap" else "map"
    assert ckpt.selection_score(select, 0.3, 0.6, 5, metric_name) == pytest.approx(expect)
    assert ckpt.selection_score(select, 0.3, None, 5, metric_name) == (float("inf") if select in ("map", "ap")
                                                                        else pytest.approx(expect))
    with pytest.raises(ValueError, match="train.select must be loss, map or last, got 'ap'"):
        ckpt.selection_score("ap", 0.3, 0.6, 5, "map")


def test_an_unknown_select_is_refused_before_training(tmp_path: Path, data: tuple[Path, Path]) -> None:
    from wsss.config import ConfigError
    from wsss.train.defaults import check_train_config

    cfg = tiny_config(tmp_path, *data, epochs=1, select="accuracy")
    with pytest.raises(ConfigError, match="train.select must be one of loss, map, last, got 'accuracy'"):
        check_train_config(cfg)
    with pytest.raises(ConfigError, match="train.select must be one of loss, map, last"):
        fit(cfg, 0)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("select", ["map", "last"])
def test_select_keeps_the_epoch_its_rule_names(tmp_path: Path, data: tuple[Path, Path], select: str) -> None:
    summary = fit(tiny_config(tmp_path, *data, epochs=3, lr=2e-3, select=select), 0)
    hist = summary["history"]
    want = len(hist) if select == "last" else 1 + int(np.argmax([r["val_map"] for r in hist]))
    assert summary["best_epoch"] == want and summary["select"] == select
    assert int(read_metadata(Path(summary["out"]) / "best.safetensors")["epoch"]) == want
    assert summary["best_val_loss"] == pytest.approx(hist[want - 1]["val_loss"])


@pytest.mark.slow
def test_resume_with_another_select_is_refused(tmp_path: Path, data: tuple[Path, Path]) -> None:
    cfg = tiny_config(tmp_path, *data, epochs=1)
    fit(copy.deepcopy(cfg), 0)
    cfg["train"].update(epochs=2, select="last")
    with pytest.raises(TrainError, match="cannot resume with train.select last: the run chose its best epoch by loss"):
        fit(cfg, 0, resume=True)
