"""Training utilities: checkpoints, TensorBoard logs, progress bars; one module per concern, imported directly."""
