"""scripts/levers.py: the verdict arithmetic, and a whole run at the test budget (resumed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

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


def test_a_pseudo_round_must_also_beat_the_cell_classifier(capsys):
    lv = _levers()
    run = lv.run_from_args(lv.build_parser().parse_args(["--out", "unused"]))
    cell, pseudo = f"+{lv.lever_label('cell', run.levers)}", f"+{lv.lever_label('pseudo', run.levers)}"

    def scores(pseudo_values: list[float]) -> pd.DataFrame:
        rows = [{"seed": seed, "method": method, "official all": v, "strict all": v, "official all 0-17": v}
                for method, values in {"ensemble": [0.5, 0.6], cell: [0.7, 0.8], pseudo: pseudo_values}.items()
                for seed, v in enumerate(values)]
        return pd.DataFrame(rows)

    assert lv.helping_levers(run, scores([0.75, 0.85])) == ["cell", "pseudo"]
    assert lv.helping_levers(run, scores([0.65, 0.75])) == ["cell"]  # above the baseline, below the classifier
    assert "left out of the helping levers" in capsys.readouterr().out


def test_select_both_weighs_the_two_protocols():
    lv = _levers()
    ctx = f"+{lv.lever_label('context', lv.Levers())}"

    def scores(official: list[float], strict: list[float]) -> pd.DataFrame:
        rows = [{"seed": k, "method": "ensemble", "official all": 0.8, "strict all": 0.5, "official all 0-17": 0.8}
                for k in range(2)]
        rows += [{"seed": k, "method": ctx, "official all": o, "strict all": s_, "official all 0-17": o}
                 for k, (o, s_) in enumerate(zip(official, strict))]
        return pd.DataFrame(rows)

    both = lv.run_from_args(lv.build_parser().parse_args(["--out", "unused"]))
    official = lv.run_from_args(lv.build_parser().parse_args(["--out", "unused", "--select", "official"]))
    trade = scores([0.79, 0.795], [0.55, 0.54])  # a little lower officially, much higher strictly
    assert lv.lever_deltas(trade).set_index("lever").loc[ctx, "official+strict all delta"] == pytest.approx(0.01875)
    assert lv.helping_levers(both, trade) == ["context"] and lv.helping_levers(official, trade) == []
    assert lv.helping_levers(both, scores([0.85, 0.86], [0.40, 0.41])) == []  # the mean falls


def test_the_cell_classifier_weight_reaches_the_geometric_mean():
    lv = _levers()
    from wsss.schema import CELL_COLUMNS, PROB_COLUMNS

    def table(p: float) -> pd.DataFrame:
        row = {"image_id": "a", "cell_id": 1, "source": "s", "fold": 0, "x0": 0, "y0": 0, "x1": 1, "y1": 1,
               "area": 1, "is_border": False, "orig_width": 8, "orig_height": 8, "mask_path": "m.npz",
               **dict.fromkeys(PROB_COLUMNS, p)}
        return pd.DataFrame([row], columns=CELL_COLUMNS)

    s1, s2, cell = table(0.1), table(0.1), table(0.8)
    equal = lv.combined([s1, s2, cell])["p_0"].iloc[0]
    heavy = lv.combined([s1, s2, cell], [1.0, 1.0, 8.0])["p_0"].iloc[0]
    assert equal == pytest.approx((0.1 * 0.1 * 0.8) ** (1 / 3), rel=1e-4)
    assert heavy == pytest.approx((0.1 * 0.1 * 0.8 ** 8) ** (1 / 10), rel=1e-4) and heavy > equal


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
    assert lv.main(["--out", str(out), "--budget", "test", "--count", "8", "--seeds", "0"]) == 0
    printed = capsys.readouterr().out
    assert "seed0/cell_pseudo1_cell/train0: done before, skipped" in printed and "seed0/train0 ..." in printed
    for needle in ("truth-broadcast", "oracle", "+tta d4", "+multi-scale", "+negative suppression", "all levers",
                   "cell classifier", "cell classifier d4", "pseudo round 1, d4", "+pseudo rounds (1, cell) x8", "+cell classifier x8", "+rec loss masked, w 4 ramped", "rec loss: stage2", "one seed gives no spread", "over seeds 0", "str all 0-17", "helping levers ="):
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
