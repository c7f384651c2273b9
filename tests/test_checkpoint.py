"""Reading checkpoints (wsss.models.checkpoint): the model's record, old checkpoints, pickles refused."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from wsss.config import save_config
from wsss.infer.settings import build_settings, default_config
from wsss.models import MODEL_CFG_KEYS, PretrainedError, build_model
from wsss.models.checkpoint import (
    FORMAT,
    CheckpointError,
    load_model_from_checkpoint,
    load_weights_only,
    not_weights_only_message,
)
from wsss.train import checkpoint as ckpt

MEAN, STD = [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]


class _Payload:
    """Pickles as a call of ``os.system``; only ever pickled here, never unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickles(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A marker path (created only if a payload ran) and pickled files with that payload."""
    marker = tmp_path / "payload-ran"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"conv.weight": _Payload(marker)}))
    zipped = tmp_path / "zipped.pth"
    torch.save({"state_dict": {"conv.weight": _Payload(marker)}}, zipped)
    return marker, [raw, zipped]


def test_model_records_its_build_options() -> None:
    model = build_model("test_resnet", num_classes=5, grid=2)
    assert tuple(model.model_cfg) == MODEL_CFG_KEYS
    assert model.model_cfg == {"name": "test_resnet", "num_classes": 5, "in_chans": 4, "output_stride": None,
                               "grid": 2, "input_size": None, "mean": None, "std": None}
    model.set_input_cfg(64, MEAN, STD)
    assert (model.model_cfg["input_size"], model.model_cfg["mean"], model.model_cfg["std"]) == (64, MEAN, STD)
    with pytest.raises(ValueError, match="unknown model_cfg"):
        type(model)(model.backbone, 8, model_cfg={"size": 64})


def test_record_is_saved_restored_and_drives_the_settings(tmp_path: Path) -> None:
    model = build_model("test_resnet")
    model.set_input_cfg(64, MEAN, STD)
    # the training config disagrees on purpose: the model's own record wins
    cfg = {"model": {"name": "test_resnet"}, "data": {"size": 128, "mean": [0.9] * 4, "std": [1.0] * 4}}
    path = ckpt.save_checkpoint(tmp_path, "best", model, cfg, epoch=1)
    loaded, train_cfg = load_model_from_checkpoint(path)
    assert loaded.model_cfg == model.model_cfg and train_cfg["data"]["size"] == 128
    settings = build_settings(default_config(), tmp_path / "out", 1, loaded.model_cfg)
    assert settings.input_size == 64 and settings.mean == tuple(MEAN) and settings.std == tuple(STD)
    assert settings.source == "stage1:test_resnet"
    override = default_config()
    override["stage1"]["input_size"] = 96
    assert build_settings(override, tmp_path / "out", 2, loaded.model_cfg).input_size == 96


@pytest.mark.parametrize("legacy", ["build-options-only", "no-record-config-beside"])
def test_old_checkpoints_take_input_from_the_training_config(tmp_path: Path, legacy: str) -> None:
    """Checkpoints written before the model kept its record still load, with the config's input."""
    model = build_model("test_resnet")
    cfg = {"model": {"name": "test_resnet", "puzzle_grid": 2}, "data": {"size": 64, "mean": MEAN, "std": STD}}
    meta = {"format": FORMAT, "epoch": "1", "val_loss": ""}
    if legacy == "build-options-only":  # what checkpoints held before input_size/mean/std
        meta["model"] = json.dumps({"name": "test_resnet", "num_classes": 19, "in_chans": 4,
                                    "output_stride": None, "grid": 2})
        meta["config"] = json.dumps(cfg)
    else:  # neither record nor config in the metadata: config.yaml beside the weights
        save_config(cfg, tmp_path / "config.yaml")
    path = ckpt.save_weights(tmp_path / "best.safetensors", model, meta)
    loaded, _ = load_model_from_checkpoint(path)
    assert loaded.model_cfg["name"] == "test_resnet" and loaded.model_cfg["input_size"] == 64
    settings = build_settings(default_config(), tmp_path / "out", 1, loaded.model_cfg)
    assert settings.input_size == 64 and settings.mean == tuple(MEAN) and settings.std == tuple(STD)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_pickled_checkpoints_are_refused_in_one_line_and_never_run(tmp_path: Path, capsys) -> None:
    from wsss.cli.infer import main as infer_main

    marker, files = _pickles(tmp_path)
    for path in files:
        expected = f"{path}: not a safetensors or weights-only checkpoint; it will not be unpickled"
        assert not_weights_only_message(path) == expected
        with pytest.raises(CheckpointError) as info:
            load_weights_only(path)
        assert str(info.value) == expected
        with pytest.raises(CheckpointError) as info:
            load_model_from_checkpoint(path)
        assert str(info.value) == expected
        with pytest.raises(PretrainedError) as info:
            build_model("test_resnet", pretrained_file=path)
        assert str(info.value) == expected
        capsys.readouterr()
        code = infer_main(["--stage", "1", "--ckpt", str(path), "--images", str(tmp_path), "--masks", str(tmp_path),
                           "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err == [f"wsss-infer: error: {expected}"]
    assert not marker.exists()


def test_pickled_resume_state_is_refused(tmp_path: Path) -> None:
    marker, files = _pickles(tmp_path)
    path = ckpt.save_checkpoint(tmp_path / "run", "last", build_model("test_resnet"), {}, epoch=1,
                                state={"epoch": 1})
    state_file = path.parent / "last.state-e0001.pt"
    assert ckpt.load_resume_state(path)[1] == {"epoch": 1}
    state_file.write_bytes(files[1].read_bytes())
    with pytest.raises(CheckpointError) as info:
        ckpt.load_resume_state(path)
    assert str(info.value) == f"{state_file}: not a safetensors or weights-only checkpoint; it will not be unpickled"
    assert not marker.exists()


def test_a_weights_only_file_without_the_record_is_not_a_wsss_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(build_model("test_resnet").state_dict(), path)
    with pytest.raises(CheckpointError, match="not a wsss Puzzle-CAM checkpoint"):
        load_model_from_checkpoint(path)
