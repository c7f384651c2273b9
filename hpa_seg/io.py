"""Label-map files of the segmentation: the ``.npz`` format of :mod:`wsss.masks.files`.

The format is shared by every stage, so it lives in the mask layer; the names are re-exported
here because the segmentation writes these files.
"""

from wsss.masks.files import LabelMaps, encode_label_maps, load_label_maps, save_label_maps

__all__ = ["LabelMaps", "encode_label_maps", "load_label_maps", "save_label_maps"]
