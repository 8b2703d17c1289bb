"""Evaluating drafters on prompt sets: the harness behind `scripts/evaluate.py` (prompt sets, several drafters ×
γ × temperature on identical prompts and seeds, speedup through dsv4.benchmarking, τ beside the trainer's
τ_prob), its reports (table, JSON, CSV, TensorBoard, plots), transformers peers and the demo's speculative stage.

Above inference (the loop it measures), data (prompts, tokenizers) and training (the TensorBoard writer); nothing
below imports it."""
