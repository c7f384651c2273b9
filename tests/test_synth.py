"""Tests of the synthetic HPA-like data generator (wsss.data.synth) and its CLI (wsss-synth)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from wsss.cli.synth import main as synth_main
from wsss.data.classes import NEGATIVE, NUM_CLASSES, parse_label
from wsss.data.io import read_rgby
from wsss.data.synth import (
    WRITEUP_CLASS_COUNTS,
    LabelSampler,
    SynthError,
    SynthOptions,
    generate,
    image_id,
    image_label,
    image_rng,
    load_class_freq,
    output_files,
    plan_labels,
    read_cell_labels,
    read_truth,
    render_image,
    render_planned,
    write_class_gallery,
)
from wsss.data.synth_patterns import CYTOPLASMIC_CLASSES, NUCLEAR_CLASSES

SIZE = 128
COUNT = 6
OPTS = SynthOptions(size=SIZE, seed=3)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    generate(out, OPTS, count=COUNT, workers=1, sheet=4, gallery=False, progress=False)
    return out


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different non-zero labels that are 4-neighbours somewhere."""
    pairs: set[tuple[int, int]] = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        m = (a != b) & (a > 0) & (b > 0)
        pairs |= {(int(min(x, y)), int(max(x, y))) for x, y in zip(a[m], b[m])}
    return pairs


# --- layout, truth and labels -------------------------------------------------------------------

def test_layout_files_and_types(synth_dir: Path) -> None:
    train = pd.read_csv(synth_dir / "train.csv", dtype=str)
    assert list(train.columns) == ["ID", "Label"]
    assert list(train["ID"]) == [image_id(3, i) for i in range(COUNT)]
    for name in train["ID"]:
        for path in output_files(synth_dir, name):
            assert path.is_file(), path
        rgby = read_rgby(synth_dir / "train", name)
        assert rgby.shape == (SIZE, SIZE, 4) and rgby.dtype == np.uint8
        for kind in ("cells", "nuclei"):
            raw = cv2.imread(str(synth_dir / "masks" / f"{name}_{kind}.png"), cv2.IMREAD_UNCHANGED)
            assert raw.dtype == np.uint16 and raw.shape == (SIZE, SIZE)
    cells_df = read_cell_labels(synth_dir)
    assert list(cells_df.columns) == ["ID", "cell_id", "Label"]
    sheet = cv2.imread(str(synth_dir / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > SIZE and sheet.shape[1] > 2 * SIZE
    config = json.loads((synth_dir / "synth_config.json").read_text())
    assert config["size"] == SIZE and config["seed"] == 3
    assert not list(synth_dir.rglob("*.tmp"))


def test_cell_and_nucleus_ids_are_consistent(synth_dir: Path) -> None:
    cells_df = read_cell_labels(synth_dir)
    for name in pd.read_csv(synth_dir / "train.csv", dtype=str)["ID"]:
        cells, nuclei = read_truth(synth_dir, name)
        ids = set(np.unique(cells)) - {0}
        assert ids == set(range(1, len(ids) + 1)), "cell ids are 1..m"
        assert set(np.unique(nuclei)) - {0} == ids, "every cell has its nucleus and vice versa"
        assert (cells[nuclei > 0] == nuclei[nuclei > 0]).all(), "nucleus i lies inside cell i"
        for i in ids:  # a cell is one connected piece
            assert ndimage.label(cells == i)[1] == 1
        listed = cells_df.loc[cells_df["ID"] == name, "cell_id"]
        assert sorted(listed) == sorted(ids), "every cell, border cells too, has a label"


def test_image_label_is_union_of_cell_labels(synth_dir: Path) -> None:
    train = pd.read_csv(synth_dir / "train.csv", dtype=str).set_index("ID")["Label"]
    cells_df = read_cell_labels(synth_dir)
    for name, group in cells_df.groupby("ID"):
        cell_sets = [parse_label(lab) for lab in group["Label"]]
        assert parse_label(train[name]) == image_label(cell_sets)
        for lab in cell_sets:
            assert lab == [NEGATIVE] or NEGATIVE not in lab, "Negative is exclusive"


def test_image_label_rule() -> None:
    assert image_label([[18], [0, 16], [18]]) == [0, 16]
    assert image_label([[18], [18]]) == [NEGATIVE]
    assert image_label([[0], [7], [0, 13]]) == [0, 7, 13]


def test_touching_cells_touching_nuclei_and_border_cells(synth_dir: Path) -> None:
    names = list(pd.read_csv(synth_dir / "train.csv", dtype=str)["ID"])
    touching_cells = border_cells = 0
    for name in names:
        cells, _ = read_truth(synth_dir, name)
        touching_cells += len(_touching_pairs(cells))
        edge = np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]])
        border_cells += len(set(edge.tolist()) - {0})
    assert touching_cells > 0 and border_cells > 0
    # nuclei of neighbouring cells touch in some images (daughter cells)
    opts = SynthOptions(size=SIZE, seed=5, cells_min=18, cells_max=25, variability=0.0)
    assert any(_touching_pairs(render_image(opts, i).nuclei) for i in range(6))


def test_cells_vary_in_number_and_size(synth_dir: Path) -> None:
    counts, areas = [], []
    for name in pd.read_csv(synth_dir / "train.csv", dtype=str)["ID"]:
        cells, _ = read_truth(synth_dir, name)
        counts.append(int(cells.max()))
        areas.extend(np.bincount(cells.ravel())[1:].tolist())
    assert len(set(counts)) > 1
    assert np.percentile(areas, 90) > 2 * np.percentile(areas, 10)


# --- determinism and resume ---------------------------------------------------------------------

def test_same_seed_same_bytes_whatever_the_workers(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "par"
    generate(out, OPTS, count=4, workers=2, sheet=4, gallery=False, progress=False)
    ours, ref = _all_files(out), _all_files(synth_dir)
    for rel, data in ours.items():
        if rel.startswith(("train/", "masks/")) or rel in ("contact_sheet.png", "synth_config.json"):
            assert ref[rel] == data, rel
    first_rows = (synth_dir / "train.csv").read_text().splitlines()[:5]
    assert (out / "train.csv").read_text().splitlines() == first_rows
    other = render_image(SynthOptions(size=SIZE, seed=4), 0)
    assert not np.array_equal(other.rgby, render_image(OPTS, 0).rgby), "another seed gives another image"


def test_resume_skips_finished_ids(tmp_path: Path) -> None:
    out = tmp_path / "resume"
    generate(out, OPTS, count=3, workers=1, sheet=0, gallery=False, progress=False)
    before = _all_files(out)
    first = output_files(out, image_id(3, 0))[0]
    stamp = first.stat().st_mtime_ns
    output_files(out, image_id(3, 1))[2].unlink()  # a killed run: id 1 incomplete ...
    stale = out / "train" / f".{image_id(3, 1)}_blue.png.999.tmp"  # ... with a temp file left over
    stale.write_bytes(b"partial")
    report = generate(out, OPTS, count=4, workers=1, sheet=0, gallery=False, progress=False)
    assert (report.generated, report.skipped) == (2, 2)
    assert first.stat().st_mtime_ns == stamp, "finished ids are not rewritten"
    after = _all_files(out)
    for rel, data in before.items():
        if rel != "train.csv" and rel != "cell_labels.csv":
            assert after[rel] == data, rel
    assert len(pd.read_csv(out / "train.csv")) == 4
    assert not stale.exists()


def test_folder_with_other_options_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "mix"
    generate(out, OPTS, count=1, workers=1, sheet=0, gallery=False, progress=False)
    with pytest.raises(SynthError, match="size"):
        generate(out, SynthOptions(size=96, seed=3), count=1, sheet=0, gallery=False, progress=False)


# --- green patterns -----------------------------------------------------------------------------

def _green_inside_nucleus_fraction(cls: int) -> float:
    rng = image_rng(11, cls, stream=2)
    labels = [[cls]] * 8 if cls != 11 else [[11]] * 8
    img = render_planned(160, 1.0, rng, labels, [cls == 11] * 8, "t")
    green = img.rgby[:, :, 1].astype(np.float64)
    signal = np.clip(green - np.median(green[img.cells == 0]) - 2, 0, None) * (img.cells > 0)
    return float(signal[img.nuclei > 0].sum() / max(signal.sum(), 1e-9))


@pytest.mark.parametrize("cls", NUCLEAR_CLASSES)
def test_nuclear_class_signal_lies_in_the_nucleus(cls: int) -> None:
    assert _green_inside_nucleus_fraction(cls) > 0.7


@pytest.mark.parametrize("cls", CYTOPLASMIC_CLASSES)
def test_cytoplasmic_class_signal_lies_outside_the_nucleus(cls: int) -> None:
    assert _green_inside_nucleus_fraction(cls) < 0.3


def test_negative_cells_have_near_zero_green() -> None:
    rng = image_rng(12, 0, stream=2)
    labels = [[NEGATIVE] if i % 2 else [0, 16] for i in range(12)]
    img = render_planned(160, 1.0, rng, labels, [False] * 12, "t")
    green = img.rgby[:, :, 1].astype(np.float64)
    neg_means, pos_means = [], []
    for cid, lab in img.cell_labels.items():
        core = ndimage.binary_erosion(img.cells == cid, iterations=2)
        if core.sum() < 20:
            continue
        (neg_means if lab == [NEGATIVE] else pos_means).append(green[core].mean())
    assert neg_means and pos_means
    assert max(neg_means) < 8.0
    assert min(pos_means) > 2 * max(neg_means)


def test_mitotic_spindle_only_in_dividing_cells() -> None:
    sampler = LabelSampler(np.eye(NUM_CLASSES)[11])
    for k in range(30):
        labels, dividing, _ = plan_labels(np.random.default_rng(k), 10, sampler, 0.3)
        with_spindle = [i for i, lab in enumerate(labels) if 11 in lab]
        assert 1 <= len(with_spindle) <= 3
        assert all(dividing[i] for i in with_spindle)


# --- label sampler and class distribution -------------------------------------------------------

def test_label_sampler_follows_the_class_distribution() -> None:
    shares, _ = load_class_freq("writeup")
    assert shares[11] < 0.01 and shares[15] < 0.01 and shares[0] > 0.2
    sampler = LabelSampler(shares)
    np.testing.assert_allclose(sampler.expected_shares(), shares, atol=1e-6)
    rng = np.random.default_rng(0)
    draws = [sampler.sample(rng) for _ in range(12000)]
    counts = np.zeros(NUM_CLASSES)
    for lab in draws:
        assert 1 <= len(lab) <= 3 and len(set(lab)) == len(lab)
        assert lab == [NEGATIVE] or NEGATIVE not in lab
        counts[lab] += 1
    expected = shares * counts.sum()
    assert (np.abs(counts - expected) < 4 * np.sqrt(expected) + 3).all(), (counts, expected)


def test_uniform_and_json_class_frequencies(tmp_path: Path) -> None:
    uniform, name = load_class_freq("uniform")
    assert name == "uniform" and np.allclose(uniform, 1 / NUM_CLASSES)
    path = tmp_path / "freq.json"
    path.write_text(json.dumps({"Nucleoplasm": 3, "16": 1}))
    shares, _ = load_class_freq(str(path))
    assert shares[0] == pytest.approx(0.75) and shares[16] == pytest.approx(0.25)
    sampler = LabelSampler(shares)
    rng = np.random.default_rng(1)
    assert all(set(sampler.sample(rng)) <= {0, 16} for _ in range(200))
    path.write_text(json.dumps(list(WRITEUP_CLASS_COUNTS)))
    np.testing.assert_allclose(load_class_freq(str(path))[0], load_class_freq("writeup")[0])


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2, 3]", "needs 19"),
    ('{"Foo": 1}', "unknown class"),
    ('{"0": -1}', "non-negative"),
    ('{"0": 0}', "all class weights are zero"),
])
def test_bad_class_frequency_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SynthError, match=message):
        load_class_freq(str(path))


# --- CLI and errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--size", "32"], "--size 32 is too small"),
    (["--cells-min", "9", "--cells-max", "3"], "--cells-max 3 is smaller"),
    (["--variability", "1.5"], "--variability"),
    (["--count", "0"], "--count"),
    (["--class-freq", "no_such_file.json"], "no_such_file.json"),
    (["--size", "64", "--cell-scale", "0.3"], "too small"),
    (["--workers", "0"], "--workers"),
])
def test_cli_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                 message: str) -> None:
    code = synth_main([str(tmp_path / "o"), "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err


def test_cli_generates_a_small_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert synth_main([str(out), "--count", "2", "--size", "96", "--seed", "7", "--quiet", "--no-gallery"]) == 0
    assert "2 generated" in capsys.readouterr().out
    assert len(pd.read_csv(out / "train.csv")) == 2 and (out / "contact_sheet.png").is_file()


def test_read_truth_errors(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match=r"nope_cells\.png: label image not found \(cells mask\)"):
        read_truth(tmp_path, "nope")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "bad_cells.png").write_bytes(b"not a png")
    with pytest.raises(SynthError, match=r"bad_cells\.png: not a readable image"):
        read_truth(tmp_path, "bad")


def test_class_gallery(tmp_path: Path) -> None:
    path = write_class_gallery(tmp_path, SynthOptions(size=96, seed=0))
    sheet = cv2.imread(str(path))
    assert sheet is not None and sheet.shape[0] > 4 * 160 and sheet.shape[1] > 4 * 320
