"""Agreement with HPA-Cell-Segmentation reference masks on the real sample images (skips without data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpa_seg import segment
from hpa_seg.evaluate import agreement
from wsss.masks import read_label_file, resize_labels
from wsss.data.io import list_image_ids, read_rgby

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def test_agreement_with_reference_masks_at_512(hpa_sample: Path) -> None:
    rows = []
    for image_id in list_image_ids(hpa_sample / "images"):
        rgby = read_rgby(hpa_sample / "images", image_id)
        ref = read_label_file(hpa_sample / "masks" / f"{image_id}_predictedmask.png")
        cells, nuclei = segment(rgby, 512)
        assert set(np.unique(cells)) == set(np.unique(nuclei))
        rows.append(agreement(resize_labels(cells, *ref.shape), ref))
    assert len(rows) == 3
    tp = sum(a.tp for a in rows)
    fp = sum(a.fp for a in rows)
    fn = sum(a.fn for a in rows)
    # measured 45 of 47 reference cells matched; a modest bar that still catches a broken pipeline
    assert tp / (tp + fp + fn) >= 0.75
    assert min(a.recall for a in rows) >= 0.6
