"""The target interface: what drafters, feature extraction, generation and the speculative loop read from a
target model, whatever its family (DeepSeek-V4 `Transformer`, dense `DenseTransformer`).

  config                  vocab_size, hidden_size, num_hidden_layers, max_position_embeddings, dtype, family
  forward(ids_BT, tap_layers=(), positions_BT=None, segment_ids_BT=None) -> TargetOutput
                          logits [B, T, V] float32, final-normed hidden [B, T, D] (logits = head(hidden)), and the
                          hidden state after each tapped layer [B, T, L, D]; packed rows pass per-document
                          positions and segment ids (no attention across documents)
  embed_tokens(ids) / head(hidden)
                          the embedding lookup and the float32 LM head; `embed` [V, D] and `lm_head` [D, V] are
                          the arrays behind them (`lm_head` None when the head is tied to the embedding), which
                          `dsv4.drafters.context.FrozenTarget` reads
  init_state(batch, max_len) -> state
  extend(state, tokens_BN, n_valid_B=None, tap_layers=()) -> (out, state)
                          out.logits_BNV, out.final_hidden_BND, out.taps_BNLD; a state is a dataclass with
                          `lengths_B`, rolled back by `dsv4.model.decode.rollback(state, lengths_B)` (a length
                          change, exact)

Parameters carry logical axis names of the one rules table (dsv4.parallel.rules), so `state_shardings` shards any
target; `dsv4.io.family.count_params` counts any target through its family. A family's V4-only features (MTP
module, mHC streams) are absent from this interface: `config.family` says which family a target is, and the
paths needing V4 internals check it once, where they validate their configuration.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from dsv4.model.transformer import TargetOutput


@runtime_checkable
class TargetConfig(Protocol):
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  max_position_embeddings: int
  dtype: str
  family: str

  def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class FeatureTarget(Protocol):
  """A target that gives training features (online or offline) and feeds a drafter's frozen embedding/head."""

  config: Any
  embed: Any
  lm_head: Any

  def embed_tokens(self, ids_BT): ...

  def head(self, hidden_BTD): ...

  def forward(self, input_ids_BT, *, tap_layers: tuple[int, ...] = (), positions_BT=None,
              segment_ids_BT=None) -> TargetOutput: ...


@runtime_checkable
class Target(FeatureTarget, Protocol):
  """A target that also decodes incrementally (generation, speculative verification)."""

  def init_state(self, batch: int, max_len: int): ...

  def extend(self, state, tokens_BN, n_valid_B=None, tap_layers: tuple[int, ...] = ()): ...


__all__ = ["FeatureTarget", "Target", "TargetConfig", "TargetOutput"]
