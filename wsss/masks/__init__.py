"""The cell-mask layer: the one contract every stage shares, the cell label map.

A leaf package (it imports nothing from the other stages, only :mod:`wsss.fileio`):

* :mod:`wsss.masks.labels`: the single nearest-neighbour resize rule (:func:`resize_labels`),
  renumbering, border flags, fitting precomputed maps to a working size;
* :mod:`wsss.masks.files`: label-map I/O (the ``.npz`` format, PNG, TIFF, NPY and colour-coded
  maps) and precomputed-mask discovery (one set of accepted file names);
* :mod:`wsss.masks.cells`: :class:`CellIndex`, :class:`CellMasks`, the overlap kernel, IoU and
  the greedy matcher;
* :mod:`wsss.masks.rle`: the COCO RLE codec of submission masks.
"""

from wsss.masks.cells import (
    BINCOUNT_MAX_SAMPLES,
    CellIndex,
    CellMasks,
    cell_masks_from_label_map,
    cell_masks_from_strings,
    full_size_overlap,
    greedy_match,
    index_cells,
    label_iou,
    label_overlap,
    pairwise_iou,
    refined_grid_size,
    rows_cell_masks,
    rows_mask_source,
)
from wsss.masks.files import (
    CELL_SUFFIXES,
    LABEL_EXTENSIONS,
    NUCLEI_SUFFIXES,
    REQUIRED_KEYS,
    LabelMaps,
    encode_label_maps,
    find_mask_files,
    is_label_map_file,
    load_label_maps,
    read_label_file,
    read_label_image,
    read_precomputed,
    save_label_maps,
)
from wsss.masks.labels import (
    MaskError,
    align_nuclei_ids,
    apply_lut,
    border_flags,
    fit_label_maps,
    label_areas,
    nearest_index,
    relabel_sequential,
    resize_labels,
    working_shape,
)
from wsss.masks.rle import (
    coco_string_to_counts,
    decode_binary_mask,
    encode_binary_mask,
    encode_label_map,
    label_map_counts,
    label_map_rles,
    mask_string_to_rle,
    naive_encode_label_map,
    rle_counts_to_string,
)

__all__ = [
    "BINCOUNT_MAX_SAMPLES", "CELL_SUFFIXES", "LABEL_EXTENSIONS", "NUCLEI_SUFFIXES", "REQUIRED_KEYS",
    "CellIndex", "CellMasks", "LabelMaps", "MaskError",
    "align_nuclei_ids", "apply_lut", "border_flags", "cell_masks_from_label_map", "cell_masks_from_strings",
    "coco_string_to_counts", "decode_binary_mask", "encode_binary_mask", "encode_label_map", "encode_label_maps",
    "find_mask_files", "fit_label_maps", "full_size_overlap", "greedy_match", "index_cells", "is_label_map_file",
    "label_areas", "label_iou", "label_map_counts", "label_map_rles", "label_overlap", "load_label_maps", "mask_string_to_rle",
    "naive_encode_label_map", "nearest_index", "pairwise_iou", "read_label_file", "read_label_image",
    "read_precomputed", "refined_grid_size", "relabel_sequential", "resize_labels", "rle_counts_to_string",
    "rows_cell_masks", "rows_mask_source", "save_label_maps", "working_shape",
]
