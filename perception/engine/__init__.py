"""Training engine: cached data index, augmentation, the training loop (AMP, DDP), checkpoints."""
