"""scripts/levers.py: the verdict arithmetic, and a whole run at the test budget (resumed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _levers():
    spec = importlib.util.spec_from_file_location("levers_script", ROOT / "scripts" / "levers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["levers_script"] = module
    spec.loader.exec_module(module)
    return module


def _scores(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for method, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            rows.append({"seed": seed, "method": method, "official all": v, "strict all": -v,
                         "official all 0-17": v})
    return pd.DataFrame(rows)


def test_aggregate_and_verdicts():
    lv = _levers()
    scores = _scores({"ensemble": [0.5, 0.6], "+a": [0.6, 0.7], "+b": [0.4, 0.7], "stage1": [0.1, 0.3]})
    summary = lv.aggregate(scores).set_index("method")
    assert summary.loc["stage1", "official all mean"] == pytest.approx(0.2)
    assert summary.loc["stage1", "official all sd"] == pytest.approx(0.1414, abs=1e-4)
    deltas = lv.lever_deltas(scores).set_index("lever")
    assert list(deltas.index) == ["+a", "+b"]  # only levers, in order
    assert deltas.loc["+a", "official all delta"] == pytest.approx(0.1)
    assert deltas.loc["+a", "official all verdict"] == "helps" and deltas.loc["+a", "strict all verdict"] == "hurts"
    assert deltas.loc["+b", "official all verdict"] == "no clear gain"


def _scorer(table: dict[frozenset, tuple[list[float], list[float]]]):
    """score_of for select_levers: keys -> (official per seed, strict per seed); calls are recorded."""
    calls: list[frozenset] = []

    def score_of(keys: frozenset) -> pd.DataFrame:
        calls.append(keys)
        official, strict = table[frozenset(keys)]
        return pd.DataFrame([{"seed": k, "official all": o, "strict all": s_, "official all 0-17": o}
                             for k, (o, s_) in enumerate(zip(official, strict))])

    return score_of, calls


def test_greedy_selection_measures_each_lever_with_the_ones_before_it(capsys):
    lv = _levers()
    both = lv.run_from_args(lv.build_parser().parse_args(["--out", "unused"]))
    official = lv.run_from_args(lv.build_parser().parse_args(["--out", "unused", "--select", "official"]))
    f = frozenset
    table = {f(): ([0.80, 0.81], [0.40, 0.41]),
             f({"cell"}): ([0.84, 0.85], [0.48, 0.49]),
             f({"context"}): ([0.79, 0.80], [0.40, 0.41]),  # alone on the baseline: no gain
             f({"small"}): ([0.805, 0.815], [0.40, 0.41]),
             f({"cell", "context"}): ([0.835, 0.845], [0.52, 0.53]),  # with the classifier: strict up a lot
             f({"cell", "small"}): ([0.845, 0.855], [0.48, 0.49]),
             f({"cell", "context", "small"}): ([0.84, 0.85], [0.52, 0.53])}
    score_of, _ = _scorer(table)
    assert lv.select_levers(both, ["context", "small", "cell"], score_of) == ["cell", "context", "small"]
    assert "chosen: +cell classifier x8" in capsys.readouterr().out
    score_of, _ = _scorer(table)
    assert lv.select_levers(official, ["context", "small", "cell"], score_of) == ["cell", "small"]
    # a leaky lever is never tried, however good
    table[f({"pseudo"})] = ([0.9, 0.9], [0.9, 0.9])
    score_of, calls = _scorer(table)
    assert lv.select_levers(both, ["small", "pseudo"], score_of) == ["small"]
    assert all("pseudo" not in keys for keys in calls) and "are leaky" in capsys.readouterr().out


def test_a_gain_must_hold_in_every_seed():
    lv = _levers()
    both = lv.run_from_args(lv.build_parser().parse_args(["--out", "unused"]))
    official = lv.run_from_args(lv.build_parser().parse_args(["--out", "unused", "--select", "official"]))

    def rows(official_: list[float], strict: list[float]) -> pd.DataFrame:
        return pd.DataFrame([{"seed": k, "official all": o, "strict all": s_} for k, (o, s_) in
                             enumerate(zip(official_, strict))])

    base = rows([0.8, 0.8], [0.5, 0.5])
    trade = rows([0.79, 0.795], [0.55, 0.54])  # a little lower officially, much higher strictly
    assert lv.gain(both, base, trade) == pytest.approx(0.01875) and lv.gain(official, base, trade) is None
    assert lv.gain(both, base, rows([0.85, 0.79], [0.5, 0.5])) is None  # one seed lower
    assert lv.gain(official, base, rows([0.81, 0.82], [0.49, 0.51])) == pytest.approx(0.015)  # strict mixed: kept


def _cell_table(probs: list[float], area: int = 1) -> pd.DataFrame:
    """A per-cell table of one image "a": cell k + 1 has every class probability ``probs[k]``."""
    from wsss.schema import CELL_COLUMNS, PROB_COLUMNS

    rows = [{"image_id": "a", "cell_id": k + 1, "source": "s", "fold": 0, "x0": 0, "y0": 0, "x1": 1, "y1": 1,
             "area": area, "is_border": False, "orig_width": 8, "orig_height": 8, "mask_path": "m.npz",
             **dict.fromkeys(PROB_COLUMNS, p)} for k, p in enumerate(probs)]
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def test_the_cell_classifier_weight_reaches_the_geometric_mean():
    lv = _levers()
    s1, s2, cell = _cell_table([0.1]), _cell_table([0.1]), _cell_table([0.8])
    equal = lv.combined([s1, s2, cell])["p_0"].iloc[0]
    heavy = lv.combined([s1, s2, cell], [1.0, 1.0, 8.0])["p_0"].iloc[0]
    assert equal == pytest.approx((0.1 * 0.1 * 0.8) ** (1 / 3), rel=1e-4)
    assert heavy == pytest.approx((0.1 * 0.1 * 0.8 ** 8) ** (1 / 10), rel=1e-4) and heavy > equal


def test_the_two_image_context_levers_add_their_powers():
    lv = _levers()
    base = _cell_table([0.2, 0.6], area=10)
    tables = lv.SeedTables(stages={"s1_plain": base, "s2_plain": base}, images=pd.DataFrame())
    levers = lv.Levers(context_power=0.5, context_power_strong=2.0)
    mean = 0.4  # the image's mean of p over its two cells (both stages equal: the geometric mean is p)
    for chosen, power in (({"context"}, 0.5), ({"context_strong"}, 2.0), ({"context", "context_strong"}, 2.5)):
        out = lv.with_levers(tables, chosen, levers)["p_0"].to_numpy()
        assert out == pytest.approx([0.2 * mean ** power, 0.6 * mean ** power], rel=1e-4), chosen
    assert lv.lever_label("context_strong", levers) == "image context (mean^2)"


def test_the_augmented_classifier_alone_and_beside_the_flips_only_one(tmp_path):
    lv = _levers()
    base, flips, augmented, augmented_d4 = _cell_table([0.5]), _cell_table([0.2]), _cell_table([0.9]), _cell_table([0.7])
    tables = lv.SeedTables(stages={"s1_plain": base, "s2_plain": base, "s1_d4": base, "s2_d4": base},
                           images=pd.DataFrame(), cell=flips, cell_d4=flips, cell_aug=augmented, cell_aug_d4=augmented_d4)
    levers = lv.Levers(cell_weight=8.0)
    with_flips = lv.with_levers(tables, {"cell"}, levers)["p_0"].iloc[0]
    assert with_flips == pytest.approx((0.5 * 0.5 * 0.2 ** 8) ** (1 / 10), rel=1e-4)
    assert lv.with_levers(tables, {"cell_aug"}, levers)["p_0"].iloc[0] == pytest.approx(
        (0.5 * 0.5 * 0.9 ** 8) ** (1 / 10), rel=1e-4)
    both = lv.with_levers(tables, {"cell", "cell_aug"}, levers)["p_0"].iloc[0]  # each classifier at weight 8
    assert both == pytest.approx((0.5 * 0.5 * 0.2 ** 8 * 0.9 ** 8) ** (1 / 18), rel=1e-4)
    assert lv.with_levers(tables, {"cell_aug", "tta"}, levers)["p_0"].iloc[0] == pytest.approx(  # its D4 table
        (0.5 * 0.5 * 0.7 ** 8) ** (1 / 10), rel=1e-4)
    assert "cell_aug" in lv.present_levers(tables)
    assert "cell_aug" not in lv.present_levers(lv.SeedTables(stages={}, images=pd.DataFrame(), cell=flips))
    assert lv.lever_label("cell_aug", levers) == "cell classifier augmented x8"
    run = lv.run_from_args(lv.build_parser().parse_args(["--out", str(tmp_path)]))
    assert run.levers.cell_augment == "configs/augment/cell.yaml"
    for word in ("none", "null", "NONE"):
        off = lv.run_from_args(lv.build_parser().parse_args(["--out", str(tmp_path), "--cell-augment", word]))
        assert off.levers.cell_augment is None and lv.augmented_classifier(off, 0) is None
    # a folder keeps the augmentation its classifier was trained with; a run without the lever keeps it too
    lv.check_settings(run)
    lv.check_settings(off)
    assert '"cell_augment": "configs/augment/cell.yaml"' in (tmp_path / "settings.json").read_text()
    other = lv.run_from_args(lv.build_parser().parse_args(["--out", str(tmp_path), "--cell-augment", "x.yaml"]))
    with pytest.raises(lv.StepError, match=r"cell_augment differ"):
        lv.check_settings(other)


def test_budget_overrides_and_bad_lever_options(tmp_path, capsys):
    lv = _levers()
    args = lv.build_parser().parse_args(["--out", str(tmp_path), "--budget", "real", "--cell-size", "128",
                                         "--cell-epochs", "6"])
    run = lv.run_from_args(args)
    assert (run.budget.cell_size, run.budget.cell_epochs, run.budget.size) == (128, 6, 384)
    assert lv.run_from_args(lv.build_parser().parse_args(["--out", str(tmp_path), "--budget", "real"])).budget.cell_size == 96
    for bad, message in ((["--cell-size", "0"], "must be above 0"), (["--cell-epochs", "-2"], "must be above 0"),
                         (["--context-power", "2"], "need different powers")):
        with pytest.raises(SystemExit) as exc:
            lv.main(["--out", str(tmp_path / "never"), *bad])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_pseudo_teacher_and_names(tmp_path):
    lv = _levers()
    run = lv.run_from_args(lv.build_parser().parse_args(["--out", str(tmp_path)]))
    assert run.levers.pseudo_source == "cell" and lv.pseudo_name(run, 2) == "pseudo2_cell"
    d4 = tmp_path / "oof_d4" / "oof_cells_stagecell.parquet"
    empty = lv.SeedTables(stages={}, images=pd.DataFrame())
    assert empty.pseudo is None and empty.pseudo_d4 is None
    # the default teacher is the classifier's own D4 table, untouched (no ensemble written)
    assert lv.teacher_table(run, 0, empty, "cell", d4) == d4 and not (tmp_path / "seed0").exists()
    other = lv.run_from_args(lv.build_parser().parse_args(["--out", str(tmp_path), "--pseudo-source", "ensemble"]))
    assert lv.pseudo_name(other, 1) == "pseudo1_ensemble"  # its rounds never reuse the other teacher's steps
    assert lv.scores_digest(other) != lv.scores_digest(run)
    with pytest.raises(SystemExit):
        lv.build_parser().parse_args(["--out", str(tmp_path), "--cell-weight", "0"])


def test_nested_teachers_never_saw_the_students_fold():
    lv = _levers()
    folds = pd.DataFrame({"ID": [f"i{n}" for n in range(8)], "Label": "0", "fold": [0, 0, 1, 1, 2, 2, 3, 3]})
    pair = lv.pair_folds(folds, 1, 3)
    assert pair["fold"].tolist() == [1, 1, 0, 0, 2, 2, 0, 0]  # 1 and 3 held out together, the rest renumbered
    # teacher of pair {j, k}: a table of every image it was run on, tagged with the pair
    pairs = {(j, k): pd.DataFrame({"image_id": folds.loc[folds["fold"].isin([j, k]), "ID"], "pair": f"{j}{k}"})
             for j in range(4) for k in range(j + 1, 4)}
    table = lv.nested_teacher_table(pairs, folds, 2)
    assert sorted(table["image_id"]) == ["i0", "i1", "i2", "i3", "i6", "i7"]  # every fold but 2
    assert table.set_index("image_id")["pair"].to_dict() == {"i0": "02", "i1": "02", "i2": "12", "i3": "12",
                                                              "i6": "23", "i7": "23"}
    run = lv.run_from_args(lv.build_parser().parse_args(["--out", "unused", "--pseudo-scheme", "nested"]))
    assert lv.pseudo_name(run, 1) == "pseudo1_cell_nested" and lv.leaky_levers(run) == frozenset()
    assert "nested" in lv.lever_label("pseudo", run.levers)
    with pytest.raises(SystemExit):
        lv.main(["--out", "unused", "--pseudo-scheme", "nested", "--pseudo-rounds", "2"])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_tiny_run_end_to_end_and_resume(tmp_path, capsys):
    lv = _levers()
    out = tmp_path / "levers"
    # one seed keeps the test short (the spread over seeds: test_aggregate_and_verdicts); the cell classifier
    # first as its own part (what a second process would do), then the rest, which skips its steps
    assert lv.main(["--out", str(out), "--budget", "test", "--count", "8", "--seeds", "0", "--part", "cell"]) == 0
    part = capsys.readouterr().out
    assert "part cell of seeds 0 done" in part and "seed0/cell/oof:" in part
    assert "seed0/train0 ..." not in part and "truth-broadcast" not in part
    # the pseudo rounds as a part of their own: the classifier is done, its D4 table is the teacher, no model runs
    assert lv.main(["--out", str(out), "--budget", "test", "--count", "8", "--seeds", "0", "--part", "pseudo"]) == 0
    part = capsys.readouterr().out
    assert "seed0/cell/train0: done before, skipped" in part and "seed0/cell_pseudo1_cell/oof_d4:" in part
    assert "seed0/train0 ..." not in part
    assert "cell_aug" not in part  # the pseudo rounds learn from the flips-only classifier alone
    # the augmented classifier as a part of its own; each classifier trained with its own augmentation
    assert lv.main(["--out", str(out), "--budget", "test", "--count", "8", "--seeds", "0", "--part", "cell_aug"]) == 0
    part = capsys.readouterr().out
    assert "seed0/cell_aug/train0 ..." in part and "seed0/cell_aug/oof_d4:" in part
    assert "seed0/cell/train0" not in part and "seed0/train0 ..." not in part
    for name, augment in (("cell", "configs/augment/d4.yaml"), ("cell_aug", "configs/augment/cell.yaml")):
        saved = yaml.safe_load((out / "seed0" / name / "run_fold0" / "config.yaml").read_text())
        assert saved["data"]["train_augment"] == augment, name
    assert lv.main(["--out", str(out), "--budget", "test", "--count", "8", "--seeds", "0"]) == 0
    printed = capsys.readouterr().out
    assert "seed0/cell_pseudo1_cell/train0: done before, skipped" in printed and "seed0/train0 ..." in printed
    assert "seed0/cell_aug/train0: done before, skipped" in printed
    for needle in ("truth-broadcast", "oracle", "+tta d4", "+multi-scale", "+negative suppression", "all levers",
                   "cell classifier", "cell classifier d4", "pseudo round 1, d4 (leaky)", "+pseudo rounds (1, cell) x8, leaky", "+image context (mean^0.5)", "+cell classifier x8", "cell classifier augmented d4", "+cell classifier augmented x8", "+rec loss masked, w 4 ramped", "rec loss: stage2", "one seed gives no spread", "over seeds 0", "str all 0-17", "helping levers ="):
        assert needle in printed, needle
    summary = pd.read_csv(out / "levers_summary.csv").set_index("method")
    assert summary.loc["oracle", "official all mean"] > summary.loc["naive", "strict all mean"]
    scores = pd.read_csv(out / "levers_scores.csv")
    assert sorted(scores["seed"].unique()) == [0]
    # a re-run does nothing again: every step is skipped, the scores are read back
    assert lv.main(["--out", str(out), "--budget", "test", "--count", "8", "--seeds", "0"]) == 0
    again = capsys.readouterr().out
    assert "train0 ..." not in again and "scores done before" in again
    # other data settings into the same folder are refused
    assert lv.main(["--out", str(out), "--budget", "test", "--count", "10"]) == 2
    assert "other settings (count differ)" in capsys.readouterr().err
