"""Sampling, AR generation (`generate`) and the speculative loop (`speculative`: draft → verify → accept in one
jit, with the lossless acceptance rules in `acceptance` and each drafter kind's state in `draft_state`)."""
