"""Mask encoding/decoding in the competition's exact format, submission CSV writing and reading."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from wsss.schema import PROB_COLUMNS
from wsss.masks import (
    CellMasks,
    MaskError,
    cell_masks_from_label_map,
    coco_string_to_counts,
    decode_binary_mask,
    encode_binary_mask,
    encode_label_map,
    full_size_overlap,
    label_map_counts,
    label_overlap,
    mask_string_to_rle,
    naive_encode_label_map,
    nearest_index,
    pairwise_iou,
    resize_labels,
)
from wsss.submission import (
    SubmissionError,
    build_submission,
    format_prediction_string,
    parse_prediction_string,
    read_submission,
    write_submission,
)
from wsss.tables import read_cell_table


def blob_labels(h: int, w: int, n: int, seed: int) -> np.ndarray:
    """A uint16 label map of ``n`` random, partly touching rectangles (later ones overwrite)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), dtype=np.uint16)
    for i in range(1, n + 1):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
        labels[y0:min(y1, y0 + h // 2), x0:min(x1, x0 + w // 2)] = i
    return labels


def reference_encode(mask: np.ndarray) -> str:
    """The competition's recipe written independently of wsss.submission."""
    fortran = np.asfortranarray(mask.astype(np.uint8)[:, :, None])
    counts = mask_utils.encode(fortran)[0]["counts"]
    return base64.b64encode(zlib.compress(counts, zlib.Z_BEST_COMPRESSION)).decode()


def test_encode_binary_mask_matches_recipe_and_round_trips():
    rng = np.random.default_rng(0)
    for shape in [(7, 5), (64, 48), (33, 90)]:
        mask = rng.random(shape) < 0.3
        text = encode_binary_mask(mask)
        assert text == reference_encode(mask)
        assert np.array_equal(decode_binary_mask(text, *shape), mask)


def test_empty_and_full_masks_round_trip():
    for mask in (np.zeros((5, 6), bool), np.ones((5, 6), bool)):
        assert np.array_equal(decode_binary_mask(encode_binary_mask(mask), 5, 6), mask)


@pytest.mark.parametrize("shape,out_hw,seed", [
    ((40, 40), None, 1),            # at its own size
    ((32, 32), (128, 128), 2),      # 4x, like 512 -> 2048
    ((50, 37), (173, 131), 3),      # non-integer, non-square ratio
    ((24, 24), (81, 81), 4),        # 3.375x, like 512 -> 1728
])
def test_encode_label_map_byte_identical_to_per_cell(shape, out_hw, seed):
    labels = blob_labels(*shape, n=9, seed=seed)
    fast = encode_label_map(labels, out_hw=out_hw)
    naive = naive_encode_label_map(labels, out_hw=out_hw)
    assert fast == naive
    assert set(fast) == {int(v) for v in np.unique(labels) if v}


def test_encode_label_map_edge_runs_and_absent_ids():
    labels = np.zeros((6, 5), dtype=np.uint16)
    labels[0, 0] = 1          # first pixel: counts start with a zero-length background run
    labels[:, -1] = 2         # whole last column: mask ends on foreground
    labels[2:4, 1:3] = 3
    fast = encode_label_map(labels, ids=[1, 2, 3, 9])
    for cid in (1, 2, 3, 9):
        assert fast[cid] == reference_encode(labels == cid)
    counts = label_map_counts(labels, ids=[1, 2])
    assert counts[1].tolist() == [0, 1, 29]
    assert counts[2].tolist() == [24, 6]


def test_label_map_int64_and_bool_inputs():
    labels = blob_labels(20, 30, 5, seed=5)
    assert encode_label_map(labels.astype(np.int64), out_hw=(45, 61)) == naive_encode_label_map(labels, out_hw=(45, 61))
    mask = labels == 2
    assert encode_label_map(mask)[1] == reference_encode(mask)


def test_coco_string_parser_matches_pycocotools():
    rng = np.random.default_rng(6)
    for _ in range(30):
        mask = rng.random((rng.integers(3, 60), rng.integers(3, 60))) < rng.random()
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        counts = coco_string_to_counts(rle["counts"])
        assert counts.sum() == mask.size
        assert np.array_equal(counts, label_map_counts(mask.astype(np.uint8), ids=[1])[1])


def test_upscale_semantics_are_cv2_inter_nearest():
    labels = blob_labels(23, 17, 6, seed=7)
    up = resize_labels(labels, 70, 40)
    assert np.array_equal(up, cv2.resize(labels, (40, 70), interpolation=cv2.INTER_NEAREST))
    assert np.array_equal(up, labels[nearest_index(23, 70)[:, None], nearest_index(17, 40)[None, :]])
    assert np.array_equal(resize_labels(labels.astype(np.int64), 70, 40), up)
    # upscaling the transpose equals transposing the upscaled map (what the fast encoder relies on)
    assert np.array_equal(resize_labels(labels.T.copy(), 40, 70), up.T)


def test_nearest_index_matches_cv2_for_many_sizes():
    rng = np.random.default_rng(16)
    pairs = [(512, 2048), (512, 1728), (512, 3072), (108, 1036), (420, 1194)]
    pairs += [tuple(int(v) for v in p) for p in rng.integers(2, 3000, (300, 2))]
    for src, dst in pairs:
        row = np.arange(src, dtype=np.int32)[None, :].repeat(2, axis=0)
        assert np.array_equal(cv2.resize(row, (dst, 2), interpolation=cv2.INTER_NEAREST)[0], nearest_index(src, dst))


@pytest.mark.parametrize("shape_a,shape_b,orig", [
    ((13, 11), (7, 9), (40, 37)),      # two working scales: weighted bincount on the refined grid
    ((40, 37), (7, 9), (40, 37)),      # one map at full size
    ((20, 20), (20, 20), (20, 20)),    # no upscaling
])
def test_pairwise_iou_all_paths_equal_brute_force(shape_a, shape_b, orig):
    a = blob_labels(*shape_a, 6, seed=17)
    b = blob_labels(*shape_b, 5, seed=18)
    fa, fb = resize_labels(a, *orig), resize_labels(b, *orig)
    ma = cell_masks_from_label_map(a, *orig)
    mb = cell_masks_from_label_map(b, *orig, ids=[*np.unique(b)[1:].tolist(), 99])
    ref = np.array([[((fa == i) & (fb == j)).sum() / max(((fa == i) | (fb == j)).sum(), 1) for j in mb.ids]
                    for i in ma.ids])
    assert np.allclose(pairwise_iou(ma, mb), ref)
    assert np.allclose(pairwise_iou(CellMasks(ma.ids, *orig, rles=ma.to_rles()), mb), ref)
    inter, a_ids, b_ids, a_area, b_area = full_size_overlap(a, b, *orig)
    assert a_area.tolist() == [int((fa == i).sum()) for i in a_ids]
    assert inter.sum() == int(((fa > 0) & (fb > 0)).sum())


def test_mask_string_validation():
    text = encode_binary_mask(np.ones((4, 4), bool))
    with pytest.raises(MaskError, match="4x5"):
        mask_string_to_rle(text, 4, 5)
    with pytest.raises(MaskError, match="invalid mask string"):
        mask_string_to_rle("not base64!", 4, 4)


def test_parse_prediction_string():
    assert parse_prediction_string("") == []
    x = 0.1 + 0.2   # not representable in 6 digits: the default keeps it exact
    assert parse_prediction_string(format_prediction_string([(2, x, "m")]))[0][1] == x
    assert format_prediction_string([(2, x, "m")], decimals=3) == "2 0.3 m"
    assert parse_prediction_string("3 0.5 abc 18 1 xyz") == [(3, 0.5, "abc"), (18, 1.0, "xyz")]
    with pytest.raises(SubmissionError, match="multiple of 3"):
        parse_prediction_string("3 0.5")
    with pytest.raises(SubmissionError, match="out of range"):
        parse_prediction_string("19 0.5 abc")
    with pytest.raises(SubmissionError, match="class confidence"):
        parse_prediction_string("x 0.5 abc")


def test_sample_submission_decodes(shared_data: Path):
    sub = read_submission(shared_data / "hpa_sample_submission.csv")
    assert len(sub.images) == 559
    assert len(sub.predictions) == 559
    assert set(zip(sub.images["ImageWidth"], sub.images["ImageHeight"])) == {(1728, 1728), (2048, 2048), (3072, 3072)}
    for size in (1728, 2048, 3072):
        row = sub.predictions.loc[sub.images["ImageWidth"].to_numpy() == size].iloc[0]
        mask = decode_binary_mask(row["mask"], size, size)
        assert mask.shape == (size, size) and not mask.any()   # the placeholders are empty masks
        assert encode_binary_mask(np.zeros((size, size), bool)) == row["mask"]
        assert encode_label_map(np.zeros((8, 8), np.uint16), ids=[1], out_hw=(size, size))[1] == row["mask"]


def test_real_mask_byte_identical(hpa_sample: Path):
    path = sorted((hpa_sample / "masks").glob("*_predictedmask.png"))[0]
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    ids = [int(v) for v in np.unique(labels) if v][:3]
    assert encode_label_map(labels, ids=ids) == naive_encode_label_map(labels, ids=ids)
    small = cv2.resize(labels, (512, 512), interpolation=cv2.INTER_NEAREST)
    assert encode_label_map(small, ids=ids, out_hw=labels.shape) == naive_encode_label_map(small, ids=ids,
                                                                                            out_hw=labels.shape)


def test_label_overlap_and_pairwise_iou():
    a = blob_labels(30, 20, 6, seed=8)
    b = blob_labels(30, 20, 5, seed=9)
    inter, a_ids, b_ids, a_area, b_area = label_overlap(a, b)
    for i, ai in enumerate(a_ids):
        assert a_area[i] == (a == ai).sum()
        for j, bj in enumerate(b_ids):
            assert inter[i, j] == ((a == ai) & (b == bj)).sum()
    ma = cell_masks_from_label_map(a, 30, 20)
    mb = cell_masks_from_label_map(b, 30, 20, ids=[*b_ids.tolist(), 77])   # 77: absent -> IoU 0
    iou = pairwise_iou(ma, mb)
    ref = np.array([[((a == i) & (b == j)).sum() / max(((a == i) | (b == j)).sum(), 1) for j in mb.ids]
                    for i in ma.ids])
    assert np.allclose(iou, ref)
    as_rles = CellMasks(ids=ma.ids, height=30, width=20, rles=ma.to_rles())
    assert np.allclose(pairwise_iou(as_rles, mb), ref)


def write_npz(path: Path, cells: np.ndarray, orig_hw: tuple[int, int]) -> Path:
    """A label-map file in the segmentation stage's format."""
    np.savez_compressed(path, cells=cells, nuclei=cells, orig_height=orig_hw[0], orig_width=orig_hw[1],
                        border=np.zeros(int(cells.max()) + 1, bool))
    return path


def cell_rows(image_id: str, npz: Path, ids: list[int], orig_hw: tuple[int, int], probs: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({"image_id": image_id, "cell_id": ids, "source": "test", "fold": 0,
                       "orig_width": orig_hw[1], "orig_height": orig_hw[0], "mask_path": str(npz)})
    df[PROB_COLUMNS] = probs
    return df


def test_build_and_read_submission(tmp_path: Path):
    cells_a = blob_labels(32, 32, 4, seed=10)
    cells_b = blob_labels(20, 30, 3, seed=11)
    npz_a = write_npz(tmp_path / "a.npz", cells_a, (96, 96))
    npz_b = write_npz(tmp_path / "b.npz", cells_b, (50, 75))
    ids_a = [int(v) for v in np.unique(cells_a) if v]
    ids_b = [int(v) for v in np.unique(cells_b) if v]
    rng = np.random.default_rng(12)
    table = pd.concat([cell_rows("A", npz_a, ids_a, (96, 96), rng.random((len(ids_a), 19))),
                       cell_rows("B", npz_b, ids_b, (50, 75), rng.random((len(ids_b), 19)))], ignore_index=True)
    images = pd.DataFrame({"ID": ["B", "EMPTY", "A"], "ImageWidth": [75, 64, 96], "ImageHeight": [50, 64, 96]})
    sub = build_submission(table, images)
    assert sub["ID"].tolist() == ["B", "EMPTY", "A"]
    assert sub.loc[1, "PredictionString"] == ""
    out = write_submission(sub, tmp_path / "sub.csv")
    back = read_submission(out)
    assert back.images["ID"].tolist() == ["B", "EMPTY", "A"]
    assert len(back.predictions) == 19 * (len(ids_a) + len(ids_b))
    cells = back.cells()
    full_a = resize_labels(cells_a, 96, 96)
    for cid, row in zip(ids_a, cells.loc[cells["image_id"] == "A"].itertuples()):
        assert np.array_equal(decode_binary_mask(row.mask, 96, 96), full_a == cid)
    got = cells.loc[cells["image_id"] == "A", PROB_COLUMNS].to_numpy()
    assert np.allclose(got, table.loc[table["image_id"] == "A", PROB_COLUMNS].to_numpy(), atol=1e-5)
    floor = build_submission(table, min_confidence=0.9)
    n_kept = sum(len(s.split()) // 3 for s in floor["PredictionString"])
    assert n_kept == int((table[PROB_COLUMNS].to_numpy() >= 0.9).sum())


def test_build_submission_rejects_size_mismatch(tmp_path: Path):
    npz = write_npz(tmp_path / "a.npz", blob_labels(16, 16, 2, seed=13), (64, 64))
    table = cell_rows("A", npz, [1, 2], (64, 64), np.full((2, 19), 0.5))
    images = pd.DataFrame({"ID": ["A"], "ImageWidth": [32], "ImageHeight": [64]})
    with pytest.raises(SubmissionError, match="image list says"):
        build_submission(table, images)


def test_read_submission_errors_name_line(tmp_path: Path):
    path = tmp_path / "bad.csv"
    path.write_text("ID,ImageWidth,ImageHeight,PredictionString\na,10,10,\nb,10,10,1 0.5\n")
    with pytest.raises(SubmissionError, match=r"bad.csv:3: b: .*multiple of 3"):
        read_submission(path)
    path.write_text("ID,Width\na,10\n")
    with pytest.raises(SubmissionError, match="missing column"):
        read_submission(path)


def test_read_cell_table_averages_duplicates_and_resolves_paths(tmp_path: Path):
    npz = write_npz(tmp_path / "a.npz", blob_labels(16, 16, 2, seed=14), (16, 16))
    table = pd.concat([cell_rows("A", Path("a.npz"), [1, 2], (16, 16), np.full((2, 19), 0.2)),
                       cell_rows("A", Path("a.npz"), [1, 2], (16, 16), np.full((2, 19), 0.6))])
    table.to_parquet(tmp_path / "cells.parquet")
    df = read_cell_table(tmp_path / "cells.parquet")
    assert len(df) == 2 and np.allclose(df[PROB_COLUMNS].to_numpy(), 0.4)
    assert Path(df["mask_path"].iloc[0]) == npz


def test_submit_cli(tmp_path: Path, capsys):
    from wsss.cli.submit import main as submit_main

    cells = blob_labels(16, 16, 3, seed=15)
    npz = write_npz(tmp_path / "a.npz", cells, (48, 48))
    ids = [int(v) for v in np.unique(cells) if v]
    cell_rows("A", npz, ids, (48, 48), np.full((len(ids), 19), 0.3)).to_parquet(tmp_path / "cells.parquet")
    pd.DataFrame({"ID": ["A", "Z"], "width": [48, 100], "height": [48, 90], "source": "x"}).to_csv(
        tmp_path / "manifest.csv", index=False)
    out = tmp_path / "sub.csv"
    assert submit_main([str(tmp_path / "cells.parquet"), "-o", str(out), "--ids", str(tmp_path / "manifest.csv")]) == 0
    sub = pd.read_csv(out, keep_default_na=False)
    assert list(sub.columns) == ["ID", "ImageWidth", "ImageHeight", "PredictionString"]
    assert sub["PredictionString"].iloc[1] == "" and sub["ImageWidth"].tolist() == [48, 100]
    assert len(sub["PredictionString"].iloc[0].split()) == 3 * 19 * len(ids)
    capsys.readouterr()
    assert submit_main([str(tmp_path / "missing.parquet"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.parquet" in err[0]


@pytest.mark.parametrize("content,msg", [
    ("", "not a readable CSV"),
    ("ID,width,height\na,64.7,64\n", "a.csv:2: ImageWidth '64.7' is not a positive integer|64.7"),
    ("ID,width,height\na,64,64\na,64,64\n", "a.csv:3: image a listed twice"),
    ("ID,ImageWidth,ImageHeight\na,0,64\n", "is not a positive integer"),
])
def test_read_image_sizes_rejects_bad_lists(tmp_path, content, msg):
    from wsss.submission import read_image_sizes

    path = tmp_path / "a.csv"
    path.write_text(content)
    with pytest.raises(SubmissionError, match=msg):
        read_image_sizes(path)
