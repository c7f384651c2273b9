import numpy as np
import pandas as pd
import pytest

from wsss.cli.folds import main as folds_main
from wsss.data.classes import labels_to_matrix
from wsss.data.folds import FoldsError, fold_table, make_folds, read_folds, read_labels_csv


@pytest.fixture(scope="module")
def real_folds(shared_data):
    labels = read_labels_csv(shared_data / "hpa_train_labels.csv")
    assert len(labels) == 21806
    return make_folds(labels, n_folds=4, seed=42)


def test_real_labels_balanced_across_folds(real_folds):
    table = fold_table(real_folds)
    counts = table.iloc[:19][[f"fold {k}" for k in range(4)]].to_numpy()
    spread = counts.max(axis=1) - counts.min(axis=1)
    assert spread.max() <= 3, table.to_string()
    totals = labels_to_matrix(real_folds["Label"]).sum(axis=0)
    np.testing.assert_array_equal(table.iloc[:19]["total"].to_numpy(), totals)
    images = table.iloc[19][[f"fold {k}" for k in range(4)]].to_numpy()
    assert images.sum() == 21806 and images.max() - images.min() < 0.02 * 21806


def test_every_image_in_exactly_one_fold(real_folds):
    assert real_folds["fold"].between(0, 3).all() and real_folds["ID"].is_unique


def test_deterministic_for_seed(shared_data, real_folds):
    labels = read_labels_csv(shared_data / "hpa_train_labels.csv")
    again = make_folds(labels, n_folds=4, seed=42)
    assert (again["fold"] == real_folds["fold"]).all()
    other = make_folds(labels, n_folds=4, seed=7)
    assert (other["fold"] != real_folds["fold"]).any()


def test_cli_writes_folds_and_table(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = ["|".join(map(str, sorted(set(rng.choice(19, rng.integers(1, 3)).tolist())))) for _ in range(200)]
    csv = tmp_path / "train.csv"
    pd.DataFrame({"ID": [f"i{k}" for k in range(200)], "Label": labels}).to_csv(csv, index=False)
    assert folds_main(["--csv", str(csv), "--n-folds", "4", "--seed", "3", "--out", str(tmp_path / "f.csv")]) == 0
    out = capsys.readouterr().out
    assert "0 Nucleoplasm" in out and "fold 3" in out and "images" in out
    folds = read_folds(tmp_path / "f.csv")
    assert set(folds["fold"]) == {0, 1, 2, 3}
    table = pd.read_csv(tmp_path / "f_table.csv")
    assert list(table.columns) == ["class", "fold 0", "fold 1", "fold 2", "fold 3", "total"]


@pytest.mark.parametrize("content,msg", [
    ("ID,Label\na,0|19\n", "line 2: label '0|19': class 19 is out of range"),
    ("ID,Label\na,0\na,1\n", "duplicate ID a"),
    ("ID,Lab\na,0\n", "missing column"),
    ("ID,Label\na,\n", "line 2: empty label"),
])
def test_bad_csv(tmp_path, capsys, content, msg):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    with pytest.raises(FoldsError, match=msg):
        read_labels_csv(csv)
    assert folds_main(["--csv", str(csv), "--out", str(tmp_path / "f.csv")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and len(err.strip().splitlines()) == 1


def test_too_few_images():
    with pytest.raises(FoldsError, match="cannot be split"):
        make_folds(pd.DataFrame({"ID": ["a", "b"], "Label": ["0", "1"]}), n_folds=4)


def test_cli_unwritable_output_is_one_line(tmp_path, capsys):
    csv = tmp_path / "train.csv"
    pd.DataFrame({"ID": [f"i{k}" for k in range(8)], "Label": ["0", "1"] * 4}).to_csv(csv, index=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert folds_main(["--csv", str(csv), "--n-folds", "2", "--out", str(blocker / "f.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wsss-folds: error: cannot write") and len(err.strip().splitlines()) == 1
