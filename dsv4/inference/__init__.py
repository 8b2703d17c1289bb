"""Sampling, generation and (later) the speculative loop, calibration and scheduling."""
