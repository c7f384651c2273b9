"""End-to-end smoke run of wsss-demo on a tiny synthetic set (every stage, real code, ~30 s)."""

import pandas as pd
import pytest

from wsss.cli.demo import METHODS, main as demo_main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--count", "32", "--size", "128", "--epochs", "1", "--workers", "1", "--overlays", "1"]
    assert demo_main(argv) == 0
    printed = capsys.readouterr().out
    assert "per-cell mAP at IoU 0.6" in printed
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
