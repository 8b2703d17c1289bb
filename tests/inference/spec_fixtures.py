"""Shared pieces of the speculative-decoding tests: the tiny target and its drafters (random init), and an
oracle adapter that drafts with the target itself so that rounds accept many drafts."""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsv4.configs import load_config, model_config
from dsv4.drafters.build import build_drafter
from dsv4.drafters.dspark import Proposal
from dsv4.model import Transformer
from dsv4.model.decode import rollback
from dsv4.training.distill_config import drafter_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = model_config(load_config(os.path.join(ROOT, "configs/target/tiny.py")))
KINDS = ("dspark", "dflash", "eagle3", "mtp1", "mtpk")


def built(make):
  """`make()` with its parameters initialised in one jitted call (eager init compiles every op separately)."""
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  return nnx.merge(graphdef, jax.jit(lambda: nnx.state(make()))())


def sharp_target(config) -> Transformer:
  """A target with O(1) logits (embedding std 1, head std 2/√D): clear-cut argmaxes, next-token distributions
  spread over the vocabulary rather than near uniform."""
  target = Transformer(config, rngs=nnx.Rngs(0))
  k1, k2 = jax.random.split(jax.random.key(7))
  target.embed[...] = jax.random.normal(k1, target.embed.shape)
  target.lm_head[...] = 2 * jax.random.normal(k2, target.lm_head.shape) / np.sqrt(config.hidden_size)
  return target


@functools.cache
def tiny_target() -> Transformer:
  return built(lambda: Transformer(TINY, rngs=nnx.Rngs(0)))


def drafter_cfg(kind: str):
  """The `tiny` scale of configs/drafter/<kind>.py; mtp1 / mtpk are the MTP config at γ = 1 / the scale's γ."""
  name = {"mtp1": "mtp", "mtpk": "mtp"}.get(kind, kind)
  cfg = drafter_config(load_config(os.path.join(ROOT, f"configs/drafter/{name}.py:tiny")))
  return cfg.replace(block_size=1) if kind == "mtp1" else cfg


@functools.cache
def tiny_drafter(kind: str):
  target = tiny_target()
  return build_drafter(drafter_cfg(kind), target.config, seed=1, target=target)


def prompts_of(lengths, vocab: int, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [rng.integers(1, vocab, n).tolist() for n in lengths]


@dataclasses.dataclass(frozen=True)
class TargetOracle:
  """Drafts with the target itself (greedy, one-token extends on its own cache, as AR decoding runs it), so the
  drafts agree with the target, except the draft for absolute position t whenever t % period is in `wrong`, which
  is replaced by another token (the round then rejects it and everything after it). The loop gets the target as
  its "drafter" module."""

  steps: int
  period: int = 1
  wrong: tuple[int, ...] = ()
  tap_layers: tuple[int, ...] = ()

  def init(self, model, frozen, pre, prompt_BP, prompt_len_B, first_B, max_len):
    return model.extend(model.init_state(prompt_BP.shape[0], max_len), prompt_BP, prompt_len_B)[1]

  def propose(self, model, frozen, state, anchor_B, pos_B, key, temperature, top_k, top_p):
    tok_B, tokens, logits = anchor_B, [], []
    for _ in range(self.steps):
      out, state = model.extend(state, tok_B[:, None])
      tok_B = jnp.argmax(out.logits_BNV[:, 0], axis=-1).astype(jnp.int32)
      tokens.append(tok_B)
      logits.append(out.logits_BNV[:, 0])
    tokens_BG = jnp.stack(tokens, axis=1)
    t_BG = pos_B[:, None] + 1 + jnp.arange(self.steps)
    wrong_BG = jnp.isin(t_BG % self.period, jnp.asarray(self.wrong + (-1,)))
    tokens_BG = jnp.where(wrong_BG, (tokens_BG + 1) % model.config.vocab_size, tokens_BG)
    return Proposal(tokens_BG, jnp.stack(logits, axis=1))

  def commit(self, model, frozen, state, out, fed_BN, emitted_BN, pos_B, a_B):
    state = rollback(state, pos_B)  # rows that finished earlier may have run ahead; realign with the target
    return rollback(model.extend(state, fed_BN)[1], pos_B + a_B + 1)
