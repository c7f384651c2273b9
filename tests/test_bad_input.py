"""The bad-input and fault battery (issue 15): every case as a user meets it, through the CLI.

Each case names the command, the fault, the exit code it must give (README, "Exit codes": 0 all
done, 1 finished with some ids skipped and listed, 2 refused before any work) and the text its
one line must hold; no case may print a traceback. Valid-but-unusual inputs (16-bit, 1728 px,
non-square, JPG/TIF, black, 32 px, colour-saved channels) must succeed. The CLIs run in-process
(``main(argv)``) on 32-64 px images and the ``test_resnet`` model; only the kill tests start
processes (marked slow).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

import wsss.cli.ensemble
import wsss.cli.eval
import wsss.cli.folds
import wsss.cli.infer
import wsss.cli.oof
import wsss.cli.prepare
import wsss.cli.segment
import wsss.cli.submit
import wsss.cli.synth
import wsss.cli.train
import wsss.models
import wsss.train.loop  # noqa: F401 - imported at collection: libraries that log (timm, huggingface_hub)
# bind their handlers to the session's stderr, not to one test's captured (then closed) stream
from test_train_helpers import make_cache
from wsss.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_SKIPPED
from wsss.schema import PROB_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ("red", "green", "blue", "yellow")
SIZE = 64


# --------------------------------------------------------------------------- helpers


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        """stderr without progress bars and log records."""
        return [line for line in self.err.splitlines()
                if line.strip() and "%|" not in line and not line.startswith(("INFO", "WARNING", "DEBUG"))]


def run_cli(name: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    """Run ``wsss-<name>`` in-process; SystemExit (argparse) counts as its code."""
    main = getattr(wsss.cli, name).main
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def expect(result: Outcome, code: int, needle: str) -> None:
    """The documented exit code, ``needle`` in the output, no traceback; exit 2 = exactly one error line."""
    text = result.out + result.err
    assert "Traceback" not in text, text
    assert result.code == code, text
    if code == EXIT_REFUSED:
        lines = result.error_lines()
        assert len(lines) == 1 and ": error: " in lines[0], lines
        assert needle in lines[0], lines
    else:
        assert needle in text, text


def cells_rgby(size: int = SIZE, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A tiny RGBY field of view with three square cells and their label map."""
    h, w = shape or (size, size)
    labels = np.zeros((h, w), dtype=np.uint16)
    labels[h // 8:h // 8 + h // 4, w // 8:w // 8 + w // 4] = 1
    labels[5 * h // 8:7 * h // 8, 5 * w // 8:7 * w // 8] = 2
    labels[h // 8:3 * h // 8, 5 * w // 8:7 * w // 8] = 3
    rgby = np.zeros((h, w, 4), dtype=np.uint8)
    rgby[labels > 0, 0] = 90
    rgby[labels == 1, 1] = 200
    rgby[labels > 0, 3] = 80
    for cell in (1, 2, 3):  # a nucleus in each cell
        ys, xs = np.nonzero(labels == cell)
        cy, cx = int(ys.mean()), int(xs.mean())
        rgby[max(cy - h // 20, 0):cy + h // 20 + 1, max(cx - w // 20, 0):cx + w // 20 + 1, 2] = 160
    return rgby, labels


def write_kaggle(root: Path, image_id: str, rgby: np.ndarray, ext: str = ".png") -> None:
    root.mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(CHANNELS):
        assert cv2.imwrite(str(root / f"{image_id}_{name}{ext}"), np.ascontiguousarray(rgby[..., c]))


def kaggle_with(tmp: Path, bad: Callable[[Path], None] | None = None) -> Path:
    """A Kaggle-layout folder with good id ``ok`` and whatever ``bad(folder)`` adds."""
    src = tmp / "src"
    write_kaggle(src, "ok", cells_rgby()[0])
    if bad is not None:
        bad(src)
    return src


def make_checkpoint(root: Path) -> Path:
    import torch

    from wsss.models import build_model
    from wsss.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = {"model": {"name": "test_resnet"}, "data": {"size": SIZE, "mean": [0.1] * 4, "std": [0.2] * 4}}
    save_checkpoint(root / "run", "best", build_model("test_resnet"), cfg, epoch=1)
    return root / "run" / "best.safetensors"


def cell_table(root: Path, name: str, ids: list[str], probs: float | None = None) -> Path:
    """A per-cell table (CSV) of 3 cells per image, label maps saved beside it."""
    from wsss.masks import save_label_maps

    _, labels = cells_rgby()
    rows = []
    rng = np.random.default_rng(len(name))
    for image_id in ids:
        maps = save_label_maps(root / "maps" / f"{image_id}.npz", labels, labels, (SIZE, SIZE))
        for cell in (1, 2, 3):
            p = rng.random(len(PROB_COLUMNS)) if probs is None else np.full(len(PROB_COLUMNS), probs)
            rows.append({"image_id": image_id, "cell_id": cell, "orig_width": SIZE, "orig_height": SIZE,
                         "mask_path": str(maps), **dict(zip(PROB_COLUMNS, p))})
    path = root / f"{name}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def submission_csv(root: Path, name: str, prediction: str) -> Path:
    path = root / f"{name}.csv"
    pd.DataFrame({"ID": ["a"], "ImageWidth": [SIZE], "ImageHeight": [SIZE],
                  "PredictionString": [prediction]}).to_csv(path, index=False)
    return path


def good_mask_token() -> str:
    from wsss.masks import encode_binary_mask

    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[8:24, 8:24] = True
    return encode_binary_mask(mask)


def train_args(tmp: Path, *extra: str) -> list[str]:
    """``wsss-train`` on a 12-image 64 px cache, test_resnet, 1 epoch, fp32."""
    cache, folds = tmp / "cache", tmp / "folds.csv"
    if not folds.is_file():
        make_cache(tmp, n=12, size=SIZE, n_folds=2)
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "test_resnet"},
        "data": {"size": SIZE, "train_augment": None, "num_workers": 0,
                 "mean": [0.08, 0.15, 0.08, 0.08], "std": [0.05, 0.2, 0.05, 0.05]},
        "train": {"epochs": 1, "batch_size": 4, "precision": "32", "device": "cpu", "progress": False,
                  "tensorboard": False}}))
    return ["--config", config, "--cache", cache, "--folds", folds, "--out", tmp / "run", "-q", *extra]


# --------------------------------------------------------------------------- images (wsss-prepare)


def _zero_byte(src: Path) -> None:
    write_kaggle(src, "bad", cells_rgby()[0])
    (src / "bad_yellow.png").write_bytes(b"")


def _truncated(src: Path) -> None:
    write_kaggle(src, "bad", np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 4), dtype=np.uint8))
    data = (src / "bad_green.png").read_bytes()
    (src / "bad_green.png").write_bytes(data[: len(data) // 2])


def _not_png(src: Path) -> None:
    write_kaggle(src, "bad", cells_rgby()[0])
    (src / "bad_blue.png").write_text("this is not an image\n")


def _missing_channel(src: Path) -> None:
    write_kaggle(src, "bad", cells_rgby()[0])
    (src / "bad_red.png").unlink()


def _mismatched(src: Path) -> None:
    write_kaggle(src, "bad", cells_rgby()[0])
    cv2.imwrite(str(src / "bad_yellow.png"), np.zeros((32, 32), np.uint8))


def _sixteen_bit(src: Path) -> None:
    write_kaggle(src, "v", cells_rgby()[0].astype(np.uint16) * 257)


def _large(src: Path) -> None:
    write_kaggle(src, "v", cv2.resize(cells_rgby()[0], (1728, 1728), interpolation=cv2.INTER_NEAREST))


def _non_square(src: Path) -> None:
    write_kaggle(src, "v", cells_rgby(shape=(SIZE, 96))[0])


def _rgb_as_channel(src: Path) -> None:
    rgby = cells_rgby()[0]
    for c, name in enumerate(CHANNELS):
        colour = np.zeros((SIZE, SIZE, 3), np.uint8)
        colour[..., c % 3] = rgby[..., c]
        cv2.imwrite(str(src / f"v_{name}.png"), colour)


def _black(src: Path) -> None:
    write_kaggle(src, "v", np.zeros((SIZE, SIZE, 4), np.uint8))


def _tiny(src: Path) -> None:
    write_kaggle(src, "v", cells_rgby(32)[0])


def _jpg(src: Path) -> None:
    write_kaggle(src, "v", cells_rgby()[0], ".jpg")


def _tif(src: Path) -> None:
    write_kaggle(src, "v", cells_rgby()[0], ".tif")


IMAGE_CASES = [  # (case, fault, exit code, text of its line)
    ("missing", _missing_channel, EXIT_SKIPPED, "bad"),
    ("zero-byte", _zero_byte, EXIT_SKIPPED, "bad_yellow.png"),
    ("truncated", _truncated, EXIT_SKIPPED, "bad_green.png"),
    ("not-png", _not_png, EXIT_SKIPPED, "bad_blue.png"),
    ("mismatched-sizes", _mismatched, EXIT_SKIPPED, "bad"),
    ("16-bit", _sixteen_bit, EXIT_OK, "2 written"),
    ("1728px", _large, EXIT_OK, "2 written"),
    ("non-square", _non_square, EXIT_OK, "2 written"),
    ("rgb-as-channel", _rgb_as_channel, EXIT_OK, "2 written"),
    ("black", _black, EXIT_OK, "2 written"),
    ("32px", _tiny, EXIT_OK, "2 written"),
    ("jpg", _jpg, EXIT_OK, "2 written"),
    ("tif", _tif, EXIT_OK, "2 written"),
]


@pytest.mark.parametrize("fault, code, needle", [c[1:] for c in IMAGE_CASES], ids=[c[0] for c in IMAGE_CASES])
def test_images_prepare(tmp_path: Path, capsys, fault, code: int, needle: str) -> None:
    src = kaggle_with(tmp_path, fault)
    result = run_cli("prepare", [src, tmp_path / "cache", "--size", SIZE, "--workers", 1, "--quiet"], capsys)
    expect(result, code, needle)
    if code == EXIT_SKIPPED:  # the good id is still written, the bad one listed on one line
        assert (tmp_path / "cache" / "ok.png").is_file()
        assert "1 failed" in result.out and "Traceback" not in result.err


@pytest.mark.parametrize("fault, code, needle", [
    (_black, EXIT_OK, ""), (_non_square, EXIT_OK, ""), (_truncated, EXIT_SKIPPED, "bad_green.png"),
], ids=["black", "non-square", "truncated"])
def test_images_segment(tmp_path: Path, capsys, fault, code: int, needle: str) -> None:
    src = kaggle_with(tmp_path, fault)
    result = run_cli("segment", [src, tmp_path / "seg", "--size", SIZE, "--quiet"], capsys)
    expect(result, code, needle)
    assert (tmp_path / "seg" / "ok.npz").is_file()


# --------------------------------------------------------------------------- labels


LABEL_CASES = [  # (case, Label of one row or a whole CSV, exit code, text of the line)
    ("label-19", "19", EXIT_REFUSED, "19"),
    ("label-minus-1", "-1", EXIT_REFUSED, "-1"),
    ("label-empty", "", EXIT_REFUSED, "line"),
    ("label-a", "a", EXIT_REFUSED, "'a'"),
    ("label-0|0", "0|0", EXIT_OK, "images in 2 folds"),
    ("duplicate-ids", "DUP", EXIT_REFUSED, "duplicate ID"),
    ("no-label-column", "NOCOL", EXIT_REFUSED, "Label"),
]


@pytest.mark.parametrize("label, code, needle", [c[1:] for c in LABEL_CASES], ids=[c[0] for c in LABEL_CASES])
def test_labels_folds(tmp_path: Path, capsys, label: str, code: int, needle: str) -> None:
    rows = [(f"i{k}", str(k % 3)) for k in range(8)]
    if label == "DUP":
        rows.append(("i0", "1"))
    elif label != "NOCOL":
        rows[3] = ("i3", label)
    frame = pd.DataFrame(rows, columns=["ID", "Label"])
    if label == "NOCOL":
        frame = frame.rename(columns={"Label": "Labels"})
    frame.to_csv(tmp_path / "train.csv", index=False)
    result = run_cli("folds", ["--csv", tmp_path / "train.csv", "--n-folds", 2, "--out", tmp_path / "folds.csv"], capsys)
    expect(result, code, needle)


@pytest.mark.timeout(300)  # trains or builds a model: slow under load
def test_fold_out_of_range_train(tmp_path: Path, capsys) -> None:
    argv = train_args(tmp_path)
    folds = pd.read_csv(tmp_path / "folds.csv", dtype=str)
    folds.loc[0, "fold"] = "7"  # a stray fold in a 2-fold file
    folds.to_csv(tmp_path / "folds.csv", index=False)
    expect(run_cli("train", [*argv, "--fold", "7"], capsys), EXIT_REFUSED, "fold 7: 1 image")
    expect(run_cli("train", argv, capsys), EXIT_REFUSED, "0..n-1")
    assert not (tmp_path / "run").exists()


def test_fold_not_in_file_infer(tmp_path: Path, capsys) -> None:
    src = kaggle_with(tmp_path)
    ckpt = make_checkpoint(tmp_path)
    pd.DataFrame({"ID": ["ok"], "Label": ["0"], "fold": [0]}).to_csv(tmp_path / "folds.csv", index=False)
    result = run_cli("infer", ["--stage", 1, "--ckpt", ckpt, "--images", src, "--masks", src,
                               "--out", tmp_path / "out", "--fold", 3, "--folds", tmp_path / "folds.csv"], capsys)
    expect(result, EXIT_REFUSED, "fold 3 not found")


@pytest.mark.timeout(300)  # trains or builds a model: slow under load
def test_ids_without_images(tmp_path: Path, capsys) -> None:
    src = kaggle_with(tmp_path)
    pd.DataFrame({"ID": ["ok", "ghost"], "Label": ["0", "1"]}).to_csv(tmp_path / "train.csv", index=False)
    result = run_cli("prepare", [src, tmp_path / "cache", "--csv", tmp_path / "train.csv", "--size", SIZE,
                                 "--workers", 1, "--quiet"], capsys)
    expect(result, EXIT_SKIPPED, "ghost")
    argv = train_args(tmp_path / "t")
    folds = pd.read_csv(tmp_path / "t" / "folds.csv", dtype=str)
    folds = pd.concat([folds, pd.DataFrame({"ID": ["ghost"], "Label": ["0"], "fold": ["0"]})])
    folds.to_csv(tmp_path / "t" / "folds.csv", index=False)
    expect(run_cli("train", argv, capsys), EXIT_REFUSED, "not prepared")


# --------------------------------------------------------------------------- masks (wsss-segment --masks, wsss-infer --masks)


def _mask_wrong_aspect(masks: Path) -> None:
    cv2.imwrite(str(masks / "ok_cells.png"), cells_rgby(shape=(48, 32))[1])


def _mask_half_size(masks: Path) -> None:  # same aspect ratio, another resolution: fine
    cv2.imwrite(str(masks / "ok_cells.png"), cells_rgby(32)[1])


def _mask_empty(masks: Path) -> None:
    cv2.imwrite(str(masks / "ok_cells.png"), np.zeros((SIZE, SIZE), np.uint16))


def _mask_missing(masks: Path) -> None:
    (masks / "ok_cells.png").unlink()


MASK_CASES = [  # (case, fault, exit code, text)
    ("wrong-aspect", _mask_wrong_aspect, EXIT_SKIPPED, "48x32 but its image is 64x64"),
    ("other-resolution", _mask_half_size, EXIT_OK, ""),
    ("empty", _mask_empty, EXIT_OK, ""),
    ("missing-id", _mask_missing, EXIT_SKIPPED, "no label map"),
]


@pytest.mark.parametrize("fault, code, needle", [c[1:] for c in MASK_CASES], ids=[c[0] for c in MASK_CASES])
def test_masks_segment(tmp_path: Path, capsys, fault, code: int, needle: str) -> None:
    src = kaggle_with(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir()
    cv2.imwrite(str(masks / "ok_cells.png"), cells_rgby()[1])
    fault(masks)
    result = run_cli("segment", [src, tmp_path / "seg", "--masks", masks, "--size", SIZE, "--quiet"], capsys)
    expect(result, code, needle)


def test_masks_70000_labels(tmp_path: Path, capsys) -> None:
    side = 272  # 73984 pixels, one label each: more cells than a uint16 map holds
    src = tmp_path / "src"
    write_kaggle(src, "big", np.full((side, side, 4), 50, np.uint8))
    masks = tmp_path / "masks"
    masks.mkdir()
    np.save(masks / "big_cells.npy", np.arange(1, side * side + 1, dtype=np.int64).reshape(side, side))
    result = run_cli("segment", [src, tmp_path / "seg", "--masks", masks, "--size", 0, "--quiet"], capsys)
    expect(result, EXIT_SKIPPED, "do not fit a uint16")


def test_masks_wrong_aspect_infer(tmp_path: Path, capsys) -> None:
    src = kaggle_with(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir()
    _mask_wrong_aspect(masks)
    ckpt = make_checkpoint(tmp_path)
    result = run_cli("infer", ["--stage", 1, "--ckpt", ckpt, "--images", src, "--masks", masks,
                               "--out", tmp_path / "out", "--set", "workers=0"], capsys)
    expect(result, EXIT_SKIPPED, "48x32 but its image is 64x64")
    assert "0 images" in result.out and "1 skipped" in result.out


# --------------------------------------------------------------------------- checkpoints and configs


def test_checkpoint_truncated_and_missing(tmp_path: Path, capsys) -> None:
    src = kaggle_with(tmp_path)
    ckpt = make_checkpoint(tmp_path)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    base = ["--stage", 1, "--images", src, "--masks", src, "--out", tmp_path / "out"]
    expect(run_cli("infer", [*base, "--ckpt", ckpt], capsys), EXIT_REFUSED, "best.safetensors")
    expect(run_cli("infer", [*base, "--ckpt", tmp_path / "nope.safetensors"], capsys), EXIT_REFUSED, "not found")


CONFIG_CASES = [  # (case, extra wsss-train arguments, text of the line)
    ("epochs-abc", ["--set", "train.epochs=abc"], "train.epochs: expected an integer, got 'abc'"),
    ("lr-fast", ["--set", "train.lr=fast"], "train.lr: expected a number, got 'fast'"),
    ("unknown-key", ["--set", "train.epochz=3"], "unknown config key train.epochz; did you mean train.epochs?"),
    ("bool-as-number", ["--set", "loss.rec_mask_by_labels=2"], "loss.rec_mask_by_labels: expected true or false"),
    ("section-as-value", ["--set", "train=3"], "'train' is not a section"),
    ("unknown-model", ["--set", "model.name=no_such_net"], "no_such_net"),
    ("bad-size", ["--set", "data.size=50"], "50"),
    ("bad-precision", ["--set", "train.precision=fp8"], "precision"),
]


@pytest.mark.timeout(300)  # trains or builds a model: slow under load
@pytest.mark.parametrize("extra, needle", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_configs_train(tmp_path: Path, capsys, extra: list[str], needle: str) -> None:
    expect(run_cli("train", train_args(tmp_path, *extra), capsys), EXIT_REFUSED, needle)
    assert not (tmp_path / "run").exists()  # refused before any work: no run folder


@pytest.mark.timeout(300)  # trains or builds a model: slow under load
def test_config_yaml_error_and_missing(tmp_path: Path, capsys) -> None:
    argv = train_args(tmp_path)
    (tmp_path / "tiny.yaml").write_text("model: {name: [unclosed\n")
    expect(run_cli("train", argv, capsys), EXIT_REFUSED, "invalid YAML")
    (tmp_path / "tiny.yaml").unlink()
    expect(run_cli("train", argv, capsys), EXIT_REFUSED, "config file not found")


@pytest.mark.timeout(300)  # trains or builds a model: slow under load
def test_config_saved_run_config_is_accepted(tmp_path: Path, capsys) -> None:
    """A run's saved config.yaml (with train.fold and train.resolved) is a valid --config."""
    argv = train_args(tmp_path, "--epochs", "0")  # saves the resolved config without training
    expect(run_cli("train", argv, capsys), EXIT_OK, "0 epochs")
    saved = tmp_path / "run" / "config.yaml"
    assert "resolved" in yaml.safe_load(saved.read_text())["train"]
    from wsss.cli.train import build_parser, resolve_config

    resolve_config(build_parser().parse_args(["--config", str(saved)]))


def test_config_infer_set(tmp_path: Path, capsys) -> None:
    src = kaggle_with(tmp_path)
    ckpt = make_checkpoint(tmp_path)
    base = ["--stage", 1, "--ckpt", ckpt, "--images", src, "--masks", src, "--out", tmp_path / "out"]
    expect(run_cli("infer", [*base, "--set", "stage1.thresold=0.4"], capsys), EXIT_REFUSED,
           "did you mean stage1.threshold?")
    expect(run_cli("infer", [*base, "--set", "batch_size=many"], capsys), EXIT_REFUSED, "batch_size")
    assert not (tmp_path / "out").exists()


class _Payload:
    """Unpickling this creates a marker file: it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


PICKLE_CASES = ["pt", "pth", "safetensors-named", "npz-mask"]


@pytest.mark.parametrize("kind", PICKLE_CASES)
def test_pickles_refused_never_run(tmp_path: Path, capsys, kind: str) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    src = kaggle_with(tmp_path)
    if kind == "npz-mask":
        masks = tmp_path / "masks"
        masks.mkdir()
        np.savez(masks / "ok.npz", cells=np.array([_Payload(marker)], dtype=object))
        result = run_cli("segment", [src, tmp_path / "seg", "--masks", masks, "--size", SIZE, "--quiet"], capsys)
        expect(result, EXIT_SKIPPED, "ok.npz")
    else:
        import torch

        path = tmp_path / {"pt": "evil.pt", "pth": "evil.pth", "safetensors-named": "best.safetensors"}[kind]
        torch.save({"state_dict": _Payload(marker)}, path)
        result = run_cli("infer", ["--stage", 1, "--ckpt", path, "--images", src, "--masks", src,
                                   "--out", tmp_path / "out"], capsys)
        assert result.code == EXIT_REFUSED and "Traceback" not in result.err
        lines = result.error_lines()
        assert len(lines) == 1 and path.name in lines[0], lines
    assert not marker.exists()


# --------------------------------------------------------------------------- submissions and ensembles


SUBMISSION_CASES = [  # (case, PredictionString of a submission input, text of the line)
    ("bad-tokens", "0 0.5", "not a multiple of 3"),
    ("bad-class", "19 0.5 {mask}", "class 19 out of range"),
    ("nan", "0 nan {mask}", "not finite"),
    ("confidence-1.5", "0 1.5 {mask}", "outside [0, 1]"),
    ("bad-base64", "0 0.5 !!notbase64!!", "a"),
    ("bad-zlib", "0 0.5 " + base64.b64encode(b"not zlib at all").decode(), "a"),
]


@pytest.mark.parametrize("prediction, needle", [c[1:] for c in SUBMISSION_CASES], ids=[c[0] for c in SUBMISSION_CASES])
def test_submission_inputs_ensemble(tmp_path: Path, capsys, prediction: str, needle: str) -> None:
    table = cell_table(tmp_path, "table", ["a"])
    team = submission_csv(tmp_path, "team", prediction.format(mask=good_mask_token()))
    result = run_cli("ensemble", [table, team, "-o", tmp_path / "ens.csv", "--max-unmatched", 1], capsys)
    expect(result, EXIT_REFUSED, needle)
    assert not (tmp_path / "ens.csv").exists()


@pytest.mark.parametrize("probs, needle", [(float("nan"), "NaN"), (1.5, "outside [0, 1]"), (-0.1, "outside [0, 1]")],
                         ids=["nan", "1.5", "negative"])
def test_table_probabilities_submit(tmp_path: Path, capsys, probs: float, needle: str) -> None:
    table = cell_table(tmp_path, "cells", ["a"], probs=probs)
    result = run_cli("submit", [table, "-o", tmp_path / "sub.csv"], capsys)
    expect(result, EXIT_REFUSED, needle)
    assert not (tmp_path / "sub.csv").exists()


def test_table_probabilities_ensemble(tmp_path: Path, capsys) -> None:
    a, b = cell_table(tmp_path, "a", ["x"]), cell_table(tmp_path, "b", ["x"], probs=1.5)
    expect(run_cli("ensemble", [a, b, "-o", tmp_path / "e.csv"], capsys), EXIT_REFUSED, "outside [0, 1]")


@pytest.mark.parametrize("weights, needle", [(["-1", "1"], "weight must be a finite number >= 0"),
                                             (["1"], "2 inputs but 1 weights"), (["0", "0"], "sum to 0"),
                                             (["nan", "1"], "finite")],
                         ids=["negative", "count", "zero-sum", "nan"])
def test_ensemble_weights(tmp_path: Path, capsys, weights: list[str], needle: str) -> None:
    a, b = cell_table(tmp_path, "a", ["x"]), cell_table(tmp_path, "b", ["x"])
    result = run_cli("ensemble", [a, b, "-o", tmp_path / "e.csv", "--weights", *weights], capsys)
    expect(result, EXIT_REFUSED, needle)


def test_ensemble_cells_matching_nowhere(tmp_path: Path, capsys, caplog) -> None:
    a, b = cell_table(tmp_path, "a", ["x", "y"]), cell_table(tmp_path, "b", ["z"])
    result = run_cli("ensemble", [a, b, "-o", tmp_path / "e.csv"], capsys)
    expect(result, EXIT_REFUSED, "6 of 6 primary cells match no cell of it")
    assert any(r.levelname == "WARNING" and "0 of 6 primary cells matched" in r.message for r in caplog.records)
    c = cell_table(tmp_path, "c", ["x"])  # half the cells: warned, below the threshold, done
    expect(run_cli("ensemble", [a, c, "-o", tmp_path / "e.csv"], capsys), EXIT_OK, "2 sources")
    expect(run_cli("ensemble", [a, c, "-o", tmp_path / "e.csv", "--max-unmatched", "0.2"], capsys),
           EXIT_REFUSED, "50% > max unmatched 20%")


def test_segment_zero_byte_npz_is_not_done(tmp_path: Path, capsys) -> None:
    src = kaggle_with(tmp_path, lambda s: write_kaggle(s, "two", cells_rgby()[0]))
    out = tmp_path / "seg"
    expect(run_cli("segment", [src, out, "--size", SIZE, "--quiet"], capsys), EXIT_OK, "")
    (out / "two.npz").write_bytes(b"")
    expect(run_cli("segment", [src, out, "--size", SIZE, "--quiet"], capsys), EXIT_OK, "")
    from wsss.masks import load_label_maps

    assert load_label_maps(out / "two.npz").num_cells > 0


@pytest.mark.timeout(300)  # trains or builds a model: slow under load
def test_corrupt_cache_image_train(tmp_path: Path, capsys) -> None:
    argv = train_args(tmp_path)
    for image_id in ("img002", "img003"):  # a validation and a training image of fold 0
        (tmp_path / "cache" / f"{image_id}.png").write_bytes(b"\x89PNG broken")
    for extra in ([], ["--set", "data.mean=auto"]):  # while training, and while measuring the channel stats
        result = run_cli("train", [*argv, *extra], capsys)
        expect(result, EXIT_REFUSED, "not a readable image")
        assert "re-run wsss-prepare" in result.error_lines()[0]
        assert "img002.png" in result.err or "img003.png" in result.err


# --------------------------------------------------------------------------- exit codes of skipped ids


def test_infer_exit_codes(tmp_path: Path, capsys) -> None:
    src = kaggle_with(tmp_path, lambda s: write_kaggle(s, "nomask", cells_rgby()[0]))
    masks = tmp_path / "masks"
    masks.mkdir()
    cv2.imwrite(str(masks / "ok_cells.png"), cells_rgby()[1])
    ckpt = make_checkpoint(tmp_path)
    base = ["--stage", 1, "--ckpt", ckpt, "--images", src, "--masks", masks, "--set", "workers=0"]
    result = run_cli("infer", [*base, "--out", tmp_path / "o1"], capsys)
    expect(result, EXIT_SKIPPED, "skipped nomask")
    (tmp_path / "ids.txt").write_text("ok\n")
    expect(run_cli("infer", [*base, "--out", tmp_path / "o2", "--ids", tmp_path / "ids.txt"], capsys), EXIT_OK, "0 skipped")


# --------------------------------------------------------------------------- unwritable outputs


def _unwritable_cases(tmp: Path) -> dict[str, list[object]]:
    blocker = tmp / "afile"
    blocker.write_text("a regular file\n")
    src = kaggle_with(tmp)
    table = cell_table(tmp, "cells", ["ok"])
    ckpt = make_checkpoint(tmp)
    pd.DataFrame({"ID": ["a", "b", "c", "d"], "Label": ["0", "1", "0", "1"]}).to_csv(tmp / "train.csv", index=False)
    return {
        "prepare": [src, blocker / "out", "--size", SIZE, "--quiet"],
        "folds": ["--csv", tmp / "train.csv", "--n-folds", 2, "--out", blocker / "folds.csv"],
        "synth": [blocker / "out", "--count", 1, "--size", SIZE, "--quiet", "--sheet", 0, "--no-gallery"],
        "segment": [src, blocker / "out", "--size", SIZE, "--quiet"],
        "infer": ["--stage", 1, "--ckpt", ckpt, "--images", src, "--masks", src, "--out", blocker / "out"],
        "train": train_args(tmp / "t", "--out", blocker / "out"),
        "submit": [table, "-o", blocker / "sub.csv"],
        "ensemble": [table, table, "-o", blocker / "ens.csv"],
        "eval": [table, "--truth", tmp, "--out", blocker / "eval.csv"],
    }


@pytest.mark.timeout(300)  # trains or builds a model: slow under load
def test_unwritable_outputs(tmp_path: Path, capsys) -> None:
    for name, argv in _unwritable_cases(tmp_path).items():
        result = run_cli(name, argv, capsys)
        expect(result, EXIT_REFUSED, "afile")
        assert result.code == EXIT_REFUSED, name


# --------------------------------------------------------------------------- kills, then a resume


def _spawn(name: str, argv: list[object]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", f"wsss.cli.{name}", *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (or it ends, or ``timeout``); True when it was killed."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=30) == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_segment_then_resume(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    for k in range(12):
        write_kaggle(src, f"i{k:02d}", cells_rgby(128)[0])
    out = tmp_path / "seg"
    proc = _spawn("segment", [src, out, "--size", 128, "--quiet"])
    assert _kill_when(proc, lambda: len(list(out.glob("*.npz"))) >= 2)  # killed mid-run
    expect(run_cli("segment", [src, out, "--size", 128, "--quiet"], capsys), EXIT_OK, "")
    from wsss.masks import load_label_maps

    assert all(load_label_maps(out / f"i{k:02d}.npz").num_cells == 3 for k in range(12))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_prepare_then_resume(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    for k in range(20):
        write_kaggle(src, f"i{k:02d}", cells_rgby(256)[0])
    out = tmp_path / "cache"
    proc = _spawn("prepare", [src, out, "--size", 128, "--workers", 1, "--quiet"])
    assert _kill_when(proc, lambda: len(list(out.glob("*.png"))) >= 3)  # killed mid-run
    expect(run_cli("prepare", [src, out, "--size", 128, "--workers", 1, "--quiet"], capsys), EXIT_OK, "0 failed")
    from wsss.data.prepare import read_manifest

    assert len(read_manifest(out)) == 20


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_infer_then_resume(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    masks = tmp_path / "masks"
    masks.mkdir()
    for k in range(8):
        write_kaggle(src, f"i{k}", cells_rgby()[0])
        cv2.imwrite(str(masks / f"i{k}_cells.png"), cells_rgby()[1])
    ckpt = make_checkpoint(tmp_path)
    out = tmp_path / "out"
    argv = ["--stage", 1, "--ckpt", ckpt, "--images", src, "--masks", masks, "--out", out,
            "--set", "chunk_images=1", "--set", "workers=0", "--batch-size", 1]
    proc = _spawn("infer", argv)
    assert _kill_when(proc, lambda: len(list(out.glob("parts_*/done-*.parquet"))) >= 2)  # killed mid-run
    expect(run_cli("infer", argv, capsys), EXIT_OK, "0 skipped")
    cells = pd.read_parquet(next(out.glob("cells*stage1*.parquet")))
    assert sorted(cells["image_id"].unique()) == [f"i{k}" for k in range(8)] and len(cells) == 24


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_train_then_resume(tmp_path: Path, capsys) -> None:
    argv = train_args(tmp_path, "--epochs", "3")
    last = tmp_path / "run" / "last.safetensors"
    proc = _spawn("train", argv)
    assert _kill_when(proc, last.is_file, timeout=300)  # killed mid-run
    result = run_cli("train", [*argv, "--resume"], capsys)
    expect(result, EXIT_OK, "3 epochs")


def _kill_keeps_old_or_new(name: str, argv: list[object], target: Path, capsys) -> None:
    """Kill ``name`` at several moments: ``target`` is always the previous file or the complete new one."""
    target.write_text("previous\n")
    old = target.read_bytes()
    expect(run_cli(name, argv, capsys), EXIT_OK, str(target))
    new = target.read_bytes()
    for delay_seen_tmp in (False, True):
        target.write_bytes(old)
        proc = _spawn(name, argv)
        tmp_glob = f".{target.name}.*"
        _kill_when(proc, (lambda: any(target.parent.glob(tmp_glob))) if delay_seen_tmp else (lambda: False),
                   timeout=60 if delay_seen_tmp else 1.5)
        assert target.read_bytes() in (old, new)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_submit_and_ensemble_leave_old_or_new_file(tmp_path: Path, capsys) -> None:
    table = cell_table(tmp_path, "cells", [f"im{k}" for k in range(30)])
    _kill_keeps_old_or_new("submit", [table, "-o", tmp_path / "sub.csv"], tmp_path / "sub.csv", capsys)
    _kill_keeps_old_or_new("ensemble", [table, table, "-o", tmp_path / "ens.csv"], tmp_path / "ens.csv", capsys)


def test_interrupted_write_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:
    """In-process: a write interrupted before its rename leaves the previous file and no temp file."""
    import wsss.fileio as fileio

    target = tmp_path / "sub.csv"
    target.write_text("previous\n")

    def boom(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write_bytes(target, b"new content")
    assert target.read_text() == "previous\n" and sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"]


def test_no_unsafe_loading_in_the_code() -> None:
    """Keep it so: no eval/exec/pickle/unsafe YAML/shell; torch.load only weights-only; np.load no pickles."""
    import re

    bad = re.compile(r"(?<![.\w])(eval|exec)\(|\bimport pickle\b|yaml\.load\(|yaml\.unsafe_load|shell=True|os\.system\("
                     r"|allow_pickle=True|weights_only=False")
    offenders = []
    for path in [*ROOT.joinpath("wsss").rglob("*.py"), *ROOT.joinpath("hpa_seg").rglob("*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if bad.search(line) or ("torch.load(" in line and "weights_only=True" not in line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders

