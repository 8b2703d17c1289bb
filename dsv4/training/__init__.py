"""Training: the pretraining and distillation steps and loops, checkpointing, TensorBoard logs, progress bars, and
a target trained on demand (target_source). One module per concern, imported directly. Above model, drafters, io
and data in the layering; only dsv4.planning imports it."""
