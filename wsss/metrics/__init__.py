"""Scores: image-level (:mod:`wsss.metrics.image`) and per-cell metrics."""
