"""hpa_seg: fast, weight-free cell-instance segmentation of RGBY HPA images.

``segment(rgby, size=512)`` returns ``(cells, nuclei)`` ``uint16`` label maps at the working
scale (nucleus ``i`` inside cell ``i``, every cell holding a nucleus, 0 = background), computed
from the raw channels without any trained weights: nuclei from the blue channel, cells by a
watershed of the red + yellow cytoplasm signal seeded by the nuclei.

Modules: :mod:`hpa_seg.params` (scale-aware parameters), :mod:`hpa_seg.nuclei`,
:mod:`hpa_seg.cells`, :mod:`hpa_seg.postprocess` (numpy in, numpy out), :mod:`hpa_seg.pipeline`
(``segment``), :mod:`hpa_seg.masks` (precomputed masks at the working scale), :mod:`hpa_seg.evaluate`
(instance matching, AP at IoU 0.6), :mod:`hpa_seg.overlay` (pictures), :mod:`hpa_seg.run` (a folder of
images: process pool, resume guard, overlays). Label maps, their resize rule, overlap and matching
come from :mod:`wsss.masks`; nothing in ``wsss`` but the CLI imports ``hpa_seg``. The console
script is ``wsss-segment`` (:mod:`wsss.cli.segment`, a thin parser).
"""

from hpa_seg.params import REFERENCE_SIDE, SegParams
from hpa_seg.pipeline import SegmentationError, segment

__all__ = ["REFERENCE_SIDE", "SegParams", "SegmentationError", "segment"]
