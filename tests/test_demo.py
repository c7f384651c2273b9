"""End-to-end smoke run of wsss-demo on a tiny synthetic set (every stage, real code, ~30 s)."""

import pandas as pd
import pytest

from wsss.cli.demo import BUDGETS, METHODS, build_parser, settings_from_args
from wsss.cli.demo import main as demo_main


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--count", "32", "--size", "128", "--epochs", "1", "--workers", "1", "--overlays", "1"]
    assert demo_main(argv) == 0
    printed = capsys.readouterr().out
    assert "per-cell mAP at IoU 0.6" in printed
    # progress a person can follow: the precision chosen, one line per epoch, one per step with its time
    assert "[train] precision: " in printed and "[train] epoch 1/1 " in printed
    assert "[demo] wsss-train: done in " in printed and "[demo] wsss-infer --stage 2: done in " in printed
    results = pd.read_csv(out / "results.csv")
    assert list(results["method"]) == list(METHODS)
    scores = results.drop(columns="method")
    assert list(scores.columns[:2]) == ["official mAP all", "official mAP heterogeneous"]
    assert {"strict mAP all", "strict mAP heterogeneous"} <= set(scores.columns)
    assert scores.apply(lambda c: c.between(0, 1) | c.isna()).all().all()
    assert "official protocol" in printed and "strict protocol" in printed
    submission = pd.read_csv(out / "submission.csv")
    assert list(submission.columns) == ["ID", "ImageWidth", "ImageHeight", "PredictionString"]
    assert (submission["ImageWidth"] == 128).all() and len(submission) > 0
    # A second run finds every step finished and reproduces the same table.
    assert demo_main(argv) == 0
    again = pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(results, again)


def test_budgets_default_and_full_and_explicit_flags_win(tmp_path):
    quick = settings_from_args(build_parser().parse_args(["--out", str(tmp_path)]))
    assert quick.config == BUDGETS["quick"].config and quick.epochs == BUDGETS["quick"].epochs
    assert quick.count == BUDGETS["quick"].count and quick.size == BUDGETS["quick"].size
    full = settings_from_args(build_parser().parse_args(["--full"]))
    assert full.config.name == "cpu_tiny.yaml" and full.epochs == BUDGETS["full"].epochs
    mixed = settings_from_args(build_parser().parse_args(["--full", "--epochs", "3", "--count", "50"]))
    assert mixed.epochs == 3 and mixed.count == 50 and mixed.config.name == "cpu_tiny.yaml"
    for budget in BUDGETS.values():
        assert budget.config.is_file()
