import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from wsss.cli.prepare import main as prepare_main
from wsss.data.io import CHANNELS, read_rgby_png
from wsss.data.prepare import MANIFEST_NAME, prepare_cache, read_manifest


def _make_layout(root: Path, ids: dict[str, tuple[int, int]], dtype=np.uint8) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for image_id, (h, w) in ids.items():
        for channel in CHANNELS:
            high = 255 if dtype == np.uint8 else 65535
            cv2.imwrite(str(root / f"{image_id}_{channel}.png"), rng.integers(0, high, (h, w)).astype(dtype))


def test_prepare_writes_cache_and_manifest(tmp_path):
    src, out = tmp_path / "src", tmp_path / "cache"
    _make_layout(src, {"a": (64, 64), "b": (80, 96)})
    _make_layout(src, {"c": (48, 48)}, np.uint16)
    report = prepare_cache(src, out, ["a", "b", "c"], size=32, workers=2, progress=False)
    assert sorted(report.written) == ["a", "b", "c"] and not report.failed
    manifest = read_manifest(out)
    assert manifest.set_index("ID")[["width", "height"]].to_dict("index") == {
        "a": {"width": 64, "height": 64}, "b": {"width": 96, "height": 80}, "c": {"width": 48, "height": 48}}
    for image_id in "abc":
        img = read_rgby_png(out / f"{image_id}.png")
        assert img.shape == (32, 32, 4) and img.dtype == np.uint8


def test_prepare_resumes_and_skips_finished(tmp_path):
    src, out = tmp_path / "src", tmp_path / "cache"
    _make_layout(src, {"a": (40, 40), "b": (40, 40)})
    prepare_cache(src, out, ["a"], size=16, workers=1, progress=False)
    mtime = (out / "a.png").stat().st_mtime_ns
    report = prepare_cache(src, out, ["a", "b"], size=16, workers=1, progress=False)
    assert report.skipped == ["a"] and report.written == ["b"]
    assert (out / "a.png").stat().st_mtime_ns == mtime
    assert list(read_manifest(out)["ID"]) == ["a", "b"]


def test_png_without_manifest_row_is_redone_and_cut_line_ignored(tmp_path):
    src, out = tmp_path / "src", tmp_path / "cache"
    _make_layout(src, {"a": (40, 40), "b": (40, 40)})
    prepare_cache(src, out, ["a", "b"], size=16, workers=1, progress=False)
    # Simulate a kill: b's manifest row cut in the middle of writing.
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    (out / MANIFEST_NAME).write_text("\n".join(lines[:2]) + "\nb,4")
    report = prepare_cache(src, out, ["a", "b"], size=16, workers=1, progress=False)
    assert report.written == ["b"] and report.skipped == ["a"]
    assert len(read_manifest(out)) == 2


def test_bad_inputs_reported_and_run_goes_on(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "cache"
    _make_layout(src, {"good": (32, 32), "nochan": (32, 32), "corrupt": (32, 32), "mismatch": (32, 32)})
    (src / "nochan_yellow.png").unlink()
    (src / "corrupt_red.png").write_bytes(b"\x89PNG garbage")
    cv2.imwrite(str(src / "mismatch_green.png"), np.zeros((30, 32), np.uint8))
    code = prepare_main([str(src), str(out), "--size", "16", "--workers", "2", "--quiet"])
    err = capsys.readouterr()
    assert code == 1
    assert "1 written" in err.out and "3 failed" in err.out
    failed_lines = [line for line in err.err.splitlines() if line.startswith("  ")]
    assert len(failed_lines) == 3
    assert any("nochan: missing yellow channel" in line for line in failed_lines)
    assert any("corrupt:" in line and "corrupt_red.png" in line for line in failed_lines)
    assert any("mismatch: mismatch_green.png is 32x30" in line for line in failed_lines)
    assert "Traceback" not in err.err
    assert list(read_manifest(out)["ID"]) == ["good"]


def test_cli_csv_subset_and_missing_csv(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "cache"
    _make_layout(src, {"a": (20, 20), "b": (20, 20)})
    pd.DataFrame({"ID": ["b"], "Label": ["1"]}).to_csv(tmp_path / "t.csv", index=False)
    assert prepare_main([str(src), str(out), "--size", "16", "--csv", str(tmp_path / "t.csv"), "--quiet"]) == 0
    assert list(read_manifest(out)["ID"]) == ["b"]
    assert prepare_main([str(src), str(out), "--csv", str(tmp_path / "nope.csv"), "--quiet"]) == 2
    assert "nope.csv: CSV not found" in capsys.readouterr().err


def test_killed_run_leaves_no_partial_file(tmp_path):
    """Kill a real wsss-prepare process mid-run: every PNG present must be complete and readable."""
    src, out = tmp_path / "src", tmp_path / "cache"
    _make_layout(src, {f"i{k:03d}": (256, 256) for k in range(40)})
    proc = subprocess.Popen([sys.executable, "-m", "wsss.cli.prepare", str(src), str(out), "--size", "192",
                             "--workers", "1", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import time
    deadline = time.time() + 30
    while time.time() < deadline and len(list(out.glob("*.png"))) < 5:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    for path in out.glob("*.png"):
        assert read_rgby_png(path).shape == (192, 192, 4)
    report = prepare_cache(src, out, [f"i{k:03d}" for k in range(40)], size=192, workers=1, progress=False)
    assert not report.failed and len(report.written) + len(report.skipped) == 40
    assert len(read_manifest(out)) == 40


def test_real_sample_prepares_with_original_sizes(hpa_sample, tmp_path):
    report = prepare_cache(hpa_sample / "images", tmp_path, ["000a6c98-bb9b-11e8-b2b9-ac1f6b6435d0",
                                                             "a7faf0b4-bb99-11e8-b2b9-ac1f6b6435d0"],
                           size=512, workers=2, progress=False)
    assert not report.failed
    sizes = read_manifest(tmp_path).set_index("ID")["width"].to_dict()
    assert sizes == {"000a6c98-bb9b-11e8-b2b9-ac1f6b6435d0": 2048, "a7faf0b4-bb99-11e8-b2b9-ac1f6b6435d0": 3072}


def test_source_path_with_comma_and_numeric_looking_ids(tmp_path):
    src, out = tmp_path / "src,with comma", tmp_path / "cache"
    _make_layout(src, {"0001": (24, 24)})
    pd.DataFrame({"ID": ["0001"], "Label": ["0"]}).to_csv(tmp_path / "t.csv", index=False)
    assert prepare_main([str(src), str(out), "--size", "16", "--csv", str(tmp_path / "t.csv"), "--quiet"]) == 0
    manifest = read_manifest(out)
    assert list(manifest["ID"]) == ["0001"] and manifest["source"].iloc[0] == str(src)
    assert prepare_cache(src, out, ["0001"], size=16, workers=1, progress=False).skipped == ["0001"]
