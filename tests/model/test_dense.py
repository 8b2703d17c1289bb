"""The dense family against transformers: random small Llama-3 (llama3 RoPE scaling), Llama with tied embeddings,
Qwen2 (q/k/v bias) and Qwen3 (q/k norm) models saved by `save_pretrained`, loaded by `dsv4.from_pretrained`,
give the same logits and hidden states; cached decode and packed rows equal the full forward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dsv4
from dsv4.model.decode import rollback
from dsv4.model.dense import DenseTransformer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1,
             eos_token_id=2)
KINDS = {
    # Llama 3.1: llama3 frequency rescaling with a short original context so every ramp region is used.
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=32))),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=100000.0, tie_word_embeddings=True)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1000000.0, tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(rope_theta=1000000.0, tie_word_embeddings=True)),
}


def randomize(model, seed: int):
  """Every parameter random (transformers initialises biases to 0 and norms to 1, which would hide mistakes)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      p.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.15 * noise)


@functools.cache
def saved(kind: str, root: str) -> str:
  cfg_cls, model_cls, extra = KINDS[kind]
  config = getattr(transformers, cfg_cls)(**SMALL, **extra)
  torch.manual_seed(0)
  model = getattr(transformers, model_cls)(config).eval()
  randomize(model, seed=len(kind))
  path = f"{root}/{kind}"
  model.save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("dense_hf"))


def jit_forward(model):
  """`forward` jitted over the model's state (eager dispatch of every small op is slow on a busy CPU)."""
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda st, x, **kw: nnx.merge(graphdef, st).forward(x, **kw), static_argnames=("tap_layers",))
  return lambda x, **kw: run(state, x, **kw)


def ids(batch=2, T=40, seed=0):
  return np.random.default_rng(seed).integers(0, SMALL["vocab_size"], size=(batch, T)).astype(np.int32)


def reference(path, ids_BT):
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  with torch.no_grad():
    out = model(torch.from_numpy(ids_BT.astype(np.int64)), output_hidden_states=True)
  return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


@pytest.mark.parametrize("kind", list(KINDS))
def test_logits_and_taps_equal_transformers(kind, root):
  path = saved(kind, root)
  model = dsv4.from_pretrained(path)
  assert isinstance(model, DenseTransformer)
  assert model.config.tie_word_embeddings == KINDS[kind][2]["tie_word_embeddings"]
  assert (model.lm_head is None) == model.config.tie_word_embeddings
  x = ids()
  want_logits, want_hidden = reference(path, x)
  out = jit_forward(model)(jnp.asarray(x), tap_layers=(0, 1))
  tol = 1e-4 * np.abs(want_logits).max()
  np.testing.assert_allclose(np.asarray(out.logits_BTV), want_logits, atol=tol, rtol=0)
  # hidden_states[i + 1] is the residual stream after layer i; transformers' last entry is after the final norm.
  for slot, layer in enumerate((0, 1)):
    want = want_hidden[layer + 1]
    np.testing.assert_allclose(np.asarray(out.taps_BTLD[:, :, slot]), want, atol=1e-4 * np.abs(want).max(), rtol=0)
  np.testing.assert_allclose(np.asarray(model.head(out.final_hidden_BTD)), np.asarray(out.logits_BTV), rtol=0,
                             atol=1e-6 * np.abs(want_logits).max())


def test_llama3_scaling_changes_the_logits(root):
  """The comparison above can fail on RoPE scaling: without it the llama3 model's logits differ visibly."""
  model = dsv4.from_pretrained(saved("llama3", root))
  plain = dsv4.from_pretrained(saved("llama3", root))
  assert model.config.rope_scaling is not None
  for layer in plain.layers:
    layer.self_attn.inv_freq = tuple(float(f) for f in
                                     1.0 / 500000.0 ** (np.arange(0, 16, 2, dtype=np.float32) / 16))
  x = jnp.asarray(ids())
  a, b = np.asarray(model(x)), np.asarray(plain(x))
  assert np.abs(a - b).max() > 100 * 1e-4 * np.abs(a).max()


@pytest.mark.parametrize("kind", ["llama3", "qwen3"])
def test_cached_decode_with_rollback_equals_full_forward(kind, root):
  """Prefill of ragged prompts, chunked extends, a rollback of a speculative block, then re-extension with other
  tokens: every committed position's logits equal the whole-sequence forward of the committed tokens."""
  model = dsv4.from_pretrained(saved(kind, root))
  seq = ids(batch=2, T=30, seed=1)
  extend = jax.jit(lambda s, t, n: model.extend(s, t, n, tap_layers=(1,)))
  state = model.init_state(2, 48)
  # Ragged prefill: row 0 commits 7 tokens, row 1 commits 4.
  out, state = extend(state, jnp.asarray(seq[:, :7]), jnp.asarray([7, 4]))
  got = {0: [np.asarray(out.logits_BNV[0, :7])], 1: [np.asarray(out.logits_BNV[1, :4])]}
  lengths = [7, 4]
  # A speculative block of junk tokens, then rolled back.
  junk = np.full((2, 5), 3, np.int32)
  _, state = extend(state, jnp.asarray(junk), jnp.asarray([5, 5]))
  state = rollback(state, jnp.asarray(lengths))
  # Then the true continuation in chunks of 3 (the last chunk partly valid on row 0).
  while min(lengths) < 20:
    chunk = np.stack([seq[b, lengths[b]:lengths[b] + 3] for b in range(2)])
    n = [min(3, 20 - lengths[b]) for b in range(2)]
    out, state = extend(state, jnp.asarray(chunk), jnp.asarray(n))
    for b in range(2):
      got[b].append(np.asarray(out.logits_BNV[b, :n[b]]))
      lengths[b] += n[b]
  assert list(np.asarray(state.lengths_B)) == [20, 20]
  full = np.asarray(jit_forward(model)(jnp.asarray(seq[:, :20])).logits_BTV)
  tol = 1e-4 * np.abs(full).max()
  for b in range(2):
    np.testing.assert_allclose(np.concatenate(got[b]), full[b], atol=tol, rtol=0)


def test_extend_taps_equal_forward_taps(root):
  model = dsv4.from_pretrained(saved("qwen2", root))
  x = jnp.asarray(ids(batch=1, T=12))
  out, _ = model.extend(model.init_state(1, 16), x, tap_layers=(0, 2))
  full = model.forward(x, tap_layers=(0, 2))
  np.testing.assert_allclose(np.asarray(out.taps_BNLD), np.asarray(full.taps_BTLD), atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(out.final_hidden_BND), np.asarray(full.final_hidden_BTD), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["llama3", "qwen2"])
def test_packed_rows_equal_each_document_alone(kind, root):
  model = dsv4.from_pretrained(saved(kind, root))
  forward = jit_forward(model)
  docs = [ids(1, 11, seed=2)[0], ids(1, 17, seed=3)[0], ids(1, 6, seed=4)[0]]
  T = 40
  tokens, seg, pos = np.zeros(T, np.int32), np.zeros(T, np.int32), np.zeros(T, np.int32)
  start = 0
  for i, d in enumerate(docs):
    tokens[start:start + len(d)], seg[start:start + len(d)] = d, i + 1
    pos[start:start + len(d)] = np.arange(len(d))
    start += len(d)
  out = forward(jnp.asarray(tokens[None]), tap_layers=(1,), positions_BT=jnp.asarray(pos[None]),
                      segment_ids_BT=jnp.asarray(seg[None]))
  start = 0
  for d in docs:
    alone = forward(jnp.asarray(d[None]), tap_layers=(1,))
    sl = slice(start, start + len(d))
    tol = 1e-5 * np.abs(np.asarray(alone.logits_BTV)).max()
    np.testing.assert_allclose(np.asarray(out.logits_BTV[0, sl]), np.asarray(alone.logits_BTV[0]), atol=tol, rtol=0)
    np.testing.assert_allclose(np.asarray(out.taps_BTLD[0, sl]), np.asarray(alone.taps_BTLD[0]), atol=1e-5, rtol=0)
    start += len(d)
  # Without the segment mask the second document would see the first: the comparison can fail.
  unmasked = forward(jnp.asarray(tokens[None]), positions_BT=jnp.asarray(pos[None]))
  alone = np.asarray(forward(jnp.asarray(docs[1][None])).logits_BTV)[0]
  assert np.abs(np.asarray(unmasked.logits_BTV[0, 11:28]) - alone).max() > 1e-3 * np.abs(alone).max()
