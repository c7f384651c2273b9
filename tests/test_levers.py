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
    assert lv.main(["--out", str(out), "--budget", "test", "--count", "8", "--seeds", "0"]) == 0
    printed = capsys.readouterr().out
    assert "seed0/cell/train0: done before, skipped" in printed and "seed0/train0 ..." in printed
    for needle in ("truth-broadcast", "oracle", "+tta d4", "+multi-scale", "+negative suppression", "all levers",
                   "cell classifier", "cell classifier d4", "last pseudo round, d4", "+pseudo rounds (1)", "+rec loss masked, w 4 ramped", "rec loss: stage2", "one seed gives no spread", "over seeds 0", "str all 0-17", "helping levers ="):
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
