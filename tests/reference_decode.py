"""The independent reference that cached decoding is checked against: greedy tokens from a full forward over the
whole sequence so far (no cache, no decode state), one token at a time, stopping at EOS."""

import functools

import jax
import numpy as np
from flax import nnx


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, ids_BT):
  return nnx.merge(graphdef, state)(ids_BT)


def full_forward_greedy(model, prompt, max_new: int, eos, width: int) -> list[int]:
  """The new tokens. Every forward reads a buffer of `width` tokens, so it compiles once; the right padding is
  invisible to a causal model."""
  graphdef, state = nnx.split(model)
  seq = list(prompt)
  assert len(seq) + max_new <= width
  for _ in range(max_new):
    buf = np.zeros((1, width), np.int32)
    buf[0, :len(seq)] = seq
    seq.append(int(np.argmax(np.asarray(_logits(graphdef, state, buf))[0, len(seq) - 1])))
    if seq[-1] == eos:
      break
  return seq[len(prompt):]
