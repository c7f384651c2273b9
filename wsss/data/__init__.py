"""Data layer: classes, RGBY reading, the prepared cache, dataset and augmentation, folds, sampling,
and the synthetic HPA-like generator."""
