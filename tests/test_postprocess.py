"""Post-processing of combined per-cell tables: blending, Negative suppression, border/small down-weighting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from wsss.config import ConfigError
from wsss.ensemble import EnsembleError
from wsss.postprocess import (
    DEFAULTS,
    PostParams,
    blend_with_image,
    image_context,
    postprocess,
    small_cells,
    suppress_negative,
)
from wsss.schema import PROB_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def cells() -> pd.DataFrame:
    """Two images: A with cells of area 100, 100, 10 (the last on the border), B with one cell of area 40."""
    df = pd.DataFrame({"image_id": ["A", "A", "A", "B"], "cell_id": [1, 2, 3, 1], "area": [100, 100, 10, 40],
                       "is_border": [False, False, True, False]})
    probs = np.full((4, 19), 0.5)
    probs[:, 18] = [0.0, 0.5, 1.0, 0.2]
    df[PROB_COLUMNS] = probs
    return df


def images() -> pd.DataFrame:
    return pd.DataFrame({"image_id": ["A", "B"], **{c: [0.9, 0.1] for c in PROB_COLUMNS}})


def test_each_step_by_hand():
    blended = blend_with_image(cells(), images(), 0.7, 0.3)
    assert blended["p_0"].tolist() == pytest.approx([0.7 * 0.5 + 0.3 * 0.9] * 3 + [0.7 * 0.5 + 0.3 * 0.1])
    geom = blend_with_image(cells(), images(), 0.7, 0.3, method="geom")
    assert geom["p_0"].iloc[0] == pytest.approx(0.5 ** 0.7 * 0.9 ** 0.3)
    sup = suppress_negative(cells())
    assert sup["p_3"].tolist() == pytest.approx([0.5, 0.25, 0.0, 0.4])
    assert sup["p_18"].tolist() == cells()["p_18"].tolist()  # Negative itself is kept
    assert small_cells(cells(), 0.5).tolist() == [False, False, True, False]  # B's only cell is its own median
    assert small_cells(cells(), 50, unit="px").tolist() == [False, False, True, True]
    with pytest.raises(EnsembleError, match="image-level row"):
        blend_with_image(cells(), images().iloc[:1], 0.7, 0.3)


def test_image_context_by_hand():
    base = cells()
    base.loc[0, "p_2"], base.loc[1, "p_2"], base.loc[2, "p_2"] = 0.9, 0.3, 0.0  # image A's mean of p_2: 0.4
    out = image_context(base, 0.5)
    assert out["p_2"].tolist() == pytest.approx([0.9 * 0.4 ** 0.5, 0.3 * 0.4 ** 0.5, 0.0, 0.5 * 0.5 ** 0.5])
    top = image_context(base, 1.0, agg="max")
    assert top["p_2"].iloc[1] == pytest.approx(0.3 * 0.9) and top["p_2"].iloc[3] == pytest.approx(0.25)
    # one factor per image and class: the order of an image's cells within a class is kept
    assert np.argsort(out.loc[:2, "p_2"]).tolist() == np.argsort(base.loc[:2, "p_2"]).tolist()
    assert postprocess(base, PostParams(context_power=0.5))["p_2"].tolist() == pytest.approx(out["p_2"].tolist())
    assert PostParams(context_power=0.5).active == ["context x image mean^0.5"]
    with pytest.raises(ConfigError, match="context.agg"):
        PostParams(context_power=1.0, context_agg="median")
    with pytest.raises(ConfigError, match="context.power"):
        PostParams(context_power=-1.0)


def test_pipeline_order_and_off_by_default():
    base = cells()
    assert postprocess(base, PostParams()).equals(base)
    assert PostParams().active == []
    params = PostParams(blend_image=1.0, blend_cell=1.0, negative_suppression=True, border_factor=0.5,
                        small_factor=0.1, small_area=0.5)
    out = postprocess(base, params, images())
    # cell A3: blend (0.5 + 0.9) / 2 = 0.7; Negative (1 + 0.9) / 2 = 0.95 -> 0.7 * 0.05; border x0.5, small x0.1
    assert out["p_0"].iloc[2] == pytest.approx(0.7 * 0.05 * 0.5 * 0.1)
    assert out["p_18"].iloc[2] == pytest.approx(0.95 * 0.05)
    assert out["p_0"].iloc[0] == pytest.approx(0.7 * (1 - 0.45))
    assert len(params.active) == 4
    with pytest.raises(EnsembleError, match="image-level"):
        postprocess(base, params)


def test_config_keys_checked_and_file_matches_defaults():
    assert yaml.safe_load((ROOT / "configs" / "ensemble.yaml").read_text()) == DEFAULTS
    params = PostParams.from_config({"postprocess": {"blend": {"image": 0.3, "cell": 0.7}, "small": {"area": 0.25}}})
    assert params.blend_image == 0.3 and params.small_area == 0.25 and params.small_unit == "median"
    with pytest.raises(ConfigError, match="did you mean postprocess.border"):
        PostParams.from_config({"postprocess": {"bordr": {"factor": 0.5}}})
    with pytest.raises(ConfigError, match="unit"):
        PostParams.from_config({"postprocess": {"small": {"unit": "percent"}}})
    with pytest.raises(ConfigError, match="<= 1"):
        PostParams(border_factor=2.0)


def test_cli_applies_the_section_and_writes_it(tmp_path, capsys):
    from wsss.cli.ensemble import main as ensemble_main

    npz = tmp_path / "a.npz"
    labels = np.zeros((32, 32), np.uint16)
    labels[0:10, 0:10], labels[12:30, 12:30] = 1, 2
    np.savez_compressed(npz, cells=labels, nuclei=labels, orig_height=32, orig_width=32, border=np.zeros(3, bool))
    table = pd.DataFrame({"image_id": "A", "cell_id": [1, 2], "source": "s", "fold": 0, "orig_width": 32,
                          "orig_height": 32, "mask_path": str(npz), "area": [100, 324], "is_border": [True, False]})
    table[PROB_COLUMNS] = 0.4
    table.to_parquet(tmp_path / "cells.parquet", index=False)
    images().to_parquet(tmp_path / "images.parquet", index=False)
    out = tmp_path / "ens.parquet"
    argv = [str(tmp_path / "cells.parquet"), "-o", str(out), "--config", str(ROOT / "configs" / "ensemble.yaml"),
            "--set", "postprocess.border.factor=0.5"]
    assert ensemble_main(argv) == 0
    assert "post-processing: border x0.5" in capsys.readouterr().out
    result = pd.read_parquet(out)
    assert result["p_0"].tolist() == pytest.approx([0.2, 0.4], abs=1e-6)
    saved = yaml.safe_load((tmp_path / "ens_config.yaml").read_text())
    assert saved["postprocess"]["border"]["factor"] == 0.5
    assert ensemble_main([*argv, "--set", "postprocess.blend.image=0.3"]) == 2
    assert "--images" in capsys.readouterr().err
    assert ensemble_main([*argv, "--set", "postprocess.blend.image=1", "--images", str(tmp_path / "images.parquet")]) == 0
    assert pd.read_parquet(out)["p_0"].tolist() == pytest.approx([0.5 * (0.4 + 0.9) / 2, (0.4 + 0.9) / 2], abs=1e-6)
    assert ensemble_main([*argv, "--set", "postprocess.smal.area=1"]) == 2
    assert "unknown config key postprocess.smal" in capsys.readouterr().err
