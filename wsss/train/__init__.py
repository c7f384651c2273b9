"""Training: ComboLoss loop with AMP, checkpoints, DDP and logs (entry point :func:`wsss.train.loop.fit`)."""
