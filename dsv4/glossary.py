"""The shape letters of the whole package: an array's name ends in one letter per axis (`logits_BTV`, `k_LBSJK`).

Each letter has one meaning everywhere. A module docstring may say which config field sets a size (e.g. "G =
block_size"), never give a letter another meaning.

  B  batch: sequences, or packed rows of several documents
  T  tokens of a row: the query / position axis of a forward
  S  key positions: a decode cache's or a context's length (the keys a query may see)
  D  model width (hidden_size; a drafter's own width inside the drafter)
  V  vocabulary
  L  layers: a stack of per-layer things (tapped layers' outputs, per-layer expert ids, drafter layers' K/V)
  H  query heads                         J  key/value heads (GQA: H = J·R)
  K  head dim of queries and keys        I  inner width of an MLP, an expert or an indexer head
  E  routed experts                      C  compressed KV entries (CSA / HCA)
  W  sliding window                      N  mHC residual streams (hc_mult)
  A  blocks (anchors) per row            G  slots per block (γ = block_size)
  M  slots of all blocks, B·A·G          P  prompt positions (padded prompts)
  R  rows of a layout (tiled expert rows, GQA group size)
  X  several axes flattened into one, said where it is formed (e.g. X = B·T, or the T·k (token, expert) pairs)
  t  rows per tile of the tiled expert kernel (lower case: a static tile size, not a data axis)
  d  a width local to one function (compressed or per-head), said where it is used

Second meanings still in the code, to be renamed when those files are next edited (each listed here so that none
is added):
  K  also the experts chosen per token (top-k) in routing: model/moe.py, parallel/expert_parallel.py,
     kernels/tiled_moe.py, TargetOutput.experts_LBTK
  N  also the tokens of one `extend` step in model/decode.py (DecodeOutput.logits_BNV, ...)
  G  also the tiles of the tiled expert kernel (kernels/tiled_moe.py)
"""
