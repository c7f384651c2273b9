"""scripts/tune_stage1.py: the settings grid and re-scoring from recorded CAMs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsss.infer.scoring import ScoreParams, cell_footprints, score_cells
from wsss.masks import index_cells
from wsss.schema import PROB_COLUMNS

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tune_stage1.py"


@pytest.fixture(scope="module")
def tune():
    spec = importlib.util.spec_from_file_location("tune_stage1", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_list(tune):
    settings = tune.settings_list(["stage1.threshold=0.2"], ["stage1.cam_weight=0,1", "stage1.threshold=0.2,0.5"],
                                  ["stage1.cam_weight=0.9 stage1.negative_floor=1"])
    assert settings == [
        ("stage1.threshold=0.2",),
        ("stage1.threshold=0.2", "stage1.cam_weight=0"),
        ("stage1.threshold=0.2", "stage1.cam_weight=1"),
        ("stage1.threshold=0.5",),
        ("stage1.threshold=0.2", "stage1.cam_weight=0.9", "stage1.negative_floor=1"),
    ]
    params = tune.score_params(("stage1.cam_weight=0.25", "stage1.image_negative=false"))
    assert params.cam_weight == 0.25 and params.image_negative is False
    assert tune.score_params(()) == ScoreParams()


def test_rescore_equals_direct_scoring(tune):
    rng = np.random.default_rng(0)
    labels = np.kron(rng.integers(0, 5, (4, 4)), np.ones((8, 8), dtype=np.int64))
    cells = index_cells(labels)
    cams = rng.random((19, 4, 4))
    probs = rng.random(19)
    base = ScoreParams()
    table = pd.DataFrame(score_cells(cells, cams, probs, base), columns=list(PROB_COLUMNS))
    table.insert(0, "cell_id", cells.ids)
    table.insert(0, "image_id", "img")
    store = {"img": (cell_footprints(cells, (4, 4)), cams, probs)}
    assert np.allclose(tune.rescore(table, store, base)[PROB_COLUMNS], table[PROB_COLUMNS])
    other = ScoreParams(threshold=0.5, cam_weight=0.3, negative_floor=0.2)
    assert np.allclose(tune.rescore(table, store, other)[PROB_COLUMNS], score_cells(cells, cams, probs, other))
