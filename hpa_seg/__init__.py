"""hpa_seg: fast, weight-free cell-instance segmentation of RGBY HPA images."""
