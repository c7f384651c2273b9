"""The same precomputed masks give the same label maps through ``wsss-segment`` and ``wsss-infer``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsss.cli import segment as segment_cli
from wsss.data.io import list_image_ids
from wsss.infer.sources import MaskSource
from wsss.masks import load_label_maps

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def test_segment_and_infer_masks_give_identical_label_maps(hpa_sample: Path, tmp_path: Path) -> None:
    images, masks = hpa_sample / "images", hpa_sample / "masks"
    ids = list_image_ids(images)
    assert ids, "hpa_sample holds images"
    seg_out = tmp_path / "segment"
    assert segment_cli.main([str(images), str(seg_out), "--size", "512", "--quiet", "--masks", str(masks)]) == 0
    source = MaskSource(masks, tmp_path / "infer", working_size=512)
    for image_id in ids:
        seg = load_label_maps(seg_out / f"{image_id}.npz")
        inf = source.load(image_id, (seg.orig_height, seg.orig_width))
        assert seg.cells.shape == inf.cells.shape == (512, 512)
        assert seg.num_cells > 0
        assert np.array_equal(seg.cells, inf.cells), f"{image_id}: wsss-segment and wsss-infer maps differ"
