"""Read a llama.cpp GGUF file into a transformers-style config dict and tensors in transformers' names and layout.

A GGUF holds metadata (key → value) and tensors, each stored in a ggml type (float or block-quantised). This
module reads both through the `gguf` package's `GGUFReader` (a memory map, so nothing is read until asked) and:

- checks the whole file before any compute: the architecture is one we build, every tensor's type has a
  dequantiser, the file is as long as its header says (a truncated download is named as such);
- maps metadata (`llama.embedding_length`, `llama.attention.head_count_kv`, …) to the keys of a transformers
  `config.json`, and tensor names (`blk.3.attn_q.weight`) to transformers' (`model.layers.3.self_attn.q_proj.weight`);
- dequantises one tensor at a time to float32 (dsv4.io.gguf_quant), reversing ggml's dimension order
  (ggml lists the fastest dimension first) and checking every value is finite;
- undoes llama.cpp's Q/K row permutation for the llama architecture: its converter reorders each head's rows from
  transformers' rotate-half RoPE layout (first half, second half) to ggml's interleaved pairs.

A model with no `output.weight` ties its head to `token_embd.weight`.
"""

from __future__ import annotations

import functools
import os
import re
import struct
from pathlib import Path

import numpy as np

from dsv4.errors import CheckpointError
from dsv4.io import gguf_quant
from dsv4.io.gguf_tokenizer import GGUFTokenizer, tokenizer_from_reader

# general.architecture → transformers model_type. Only llama's converter permutes Q/K rows.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
_PERMUTED_QK = {"llama"}

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")


class GGUFError(CheckpointError):
  """A GGUF file we cannot load; the message names the file and what is wrong."""


def hf_name(gguf_name: str) -> str | None:
  """transformers' name for a GGUF tensor name, or None when it has none."""
  if gguf_name in _TOP_NAMES:
    return _TOP_NAMES[gguf_name]
  m = _LAYER_RE.fullmatch(gguf_name)
  if m and m.group(2) in _LAYER_NAMES:
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
  return None


def unpermute_qk(w_RC: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's Q/K permutation: within each head, ggml row 2i (2i+1) goes back to row i (i + d/2).

  The converter viewed each head's d rows as [2, d/2] (transformers' halves) and transposed them to [d/2, 2]
  (ggml's interleaved pairs); here the [d/2, 2] view is transposed back. Works for weights [R, C] and biases [R].
  """
  rows = w_RC.shape[0]
  if rows % (2 * n_heads):
    raise GGUFError(f"cannot unpermute {rows} rows into {n_heads} heads of even size")
  half = rows // n_heads // 2
  return w_RC.reshape(n_heads, half, 2, *w_RC.shape[1:]).swapaxes(1, 2).reshape(w_RC.shape)


# --- reading the header ----------------------------------------------------------------------------------------

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _needed_bytes(path: Path) -> int | None:
  """The file length the header asks for (end of the last tensor's data); None when the header itself ends early.

  Used only to explain a file GGUFReader could not open: a short header walk with `struct`.
  """
  from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
  with open(path, "rb") as f:
    def read(fmt):
      size = struct.calcsize(fmt)
      b = f.read(size)
      if len(b) < size:
        raise EOFError
      return struct.unpack(fmt, b)[0]

    def skip_value(vtype):
      if vtype == 8:
        f.seek(read("<Q"), 1)
      elif vtype == 9:
        sub, n = read("<I"), read("<Q")
        if sub in _SCALAR:
          f.seek(n * struct.calcsize(_SCALAR[sub]), 1)
        else:
          for _ in range(n):
            skip_value(sub)
      else:
        read(_SCALAR[vtype])

    try:
      if f.read(4) != b"GGUF":
        return None
      read("<I")
      n_tensors, n_kv = read("<Q"), read("<Q")
      alignment = 32
      for _ in range(n_kv):
        key = f.read(read("<Q")).decode("utf-8", "replace")
        vtype = read("<I")
        if key == "general.alignment" and vtype == 4:
          alignment = read("<I")
        else:
          skip_value(vtype)
      end = 0
      for _ in range(n_tensors):
        f.seek(read("<Q"), 1)
        n_values = int(np.prod([read("<Q") for _ in range(read("<I"))]))
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(read("<I"))]
        end = max(end, read("<Q") + n_values // block * size)
      start = -(-f.tell() // alignment) * alignment
      return start + end
    except (EOFError, ValueError, KeyError):
      return None


def open_reader(path: str | os.PathLike):
  """A GGUFReader over `path`, with a truncated or non-GGUF file reported as such before anything is computed."""
  from gguf import GGUFReader
  path = Path(path)
  if not path.is_file():
    raise GGUFError(f"{path}: no such file.")
  size = path.stat().st_size
  with open(path, "rb") as f:
    if f.read(4) != b"GGUF":
      raise GGUFError(f"{path}: not a GGUF file (it does not start with the magic bytes 'GGUF').")
  try:
    reader = GGUFReader(path)
  except Exception as e:  # the reader fails with reshape/dtype errors on a short file
    needed = _needed_bytes(path)
    if needed is None or needed > size:
      wants = "its header is cut short" if needed is None else f"its header describes {needed} bytes"
      raise GGUFError(f"{path}: truncated GGUF: the file has {size} bytes but {wants}. Re-download or "
                      "reinstall it.") from e
    raise GGUFError(f"{path}: cannot be read as GGUF ({type(e).__name__}: {e}).") from e
  for t in reader.tensors:
    if t.data_offset + t.n_bytes > size:
      raise GGUFError(f"{path}: truncated GGUF: tensor {t.name} ends at byte {t.data_offset + t.n_bytes}, "
                      f"the file has {size} bytes. Re-download or reinstall it.")
  return reader


def metadata(reader) -> dict:
  """Every metadata key except the tokenizer's long arrays (read separately by dsv4.io.gguf_tokenizer)."""
  out = {}
  for key, field in reader.fields.items():
    if key.startswith("GGUF.") or key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.scores",
                                          "tokenizer.ggml.token_type"):
      continue
    out[key] = field.contents()
  return out


def config_dict(meta: dict, tensor_names: list[str], path: str) -> dict:
  """A transformers `config.json` dict from GGUF metadata (keys `{arch}.…`)."""
  arch = meta.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise GGUFError(f"{path}: general.architecture is {arch!r}; dsv4 loads GGUF files of {sorted(ARCHITECTURES)}.")

  def need(key):
    full = f"{arch}.{key}"
    if full not in meta:
      raise GGUFError(f"{path}: metadata key {full} is missing; a {arch} GGUF must have it.")
    return meta[full]

  if "rope_freqs.weight" in tensor_names or f"{arch}.rope.scaling.type" in meta:
    raise GGUFError(f"{path}: RoPE frequency scaling stored in the GGUF (rope_freqs / {arch}.rope.scaling.*) is not "
                    "supported; load this model from its transformers directory (config.json) instead.")
  hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
  head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
  n_vocab = meta.get(f"{arch}.vocab_size")
  if n_vocab is None:  # older files only have the token list's length
    n_vocab = meta.get("tokenizer.ggml.tokens.count")
  if n_vocab is None:
    raise GGUFError(f"{path}: neither {arch}.vocab_size nor tokenizer.ggml.tokens gives the vocabulary size.")
  arch_name = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[arch]
  theta = float(meta.get(f"{arch}.rope.freq_base", 10000.0))
  d = {
      "model_type": ARCHITECTURES[arch], "architectures": [arch_name], "vocab_size": int(n_vocab),
      "hidden_size": hidden, "intermediate_size": int(need("feed_forward_length")),
      "num_hidden_layers": int(need("block_count")), "num_attention_heads": heads,
      "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv", heads)), "head_dim": head_dim,
      "max_position_embeddings": int(need("context_length")),
      "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
      "rope_theta": theta, "rope_parameters": {"rope_type": "default", "rope_theta": theta},
      "hidden_act": "silu", "tie_word_embeddings": "output.weight" not in tensor_names,
      "attention_bias": arch == "llama" and "blk.0.attn_q.bias" in tensor_names, "mlp_bias": False,
  }
  for key, tok_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                       ("pad_token_id", "padding_token_id")):
    if f"tokenizer.ggml.{tok_key}" in meta:
      d[key] = int(meta[f"tokenizer.ggml.{tok_key}"])
  return d


def check_tensors(reader, path: str) -> None:
  """Every tensor has a transformers name and a type we dequantise: one error listing all that do not."""
  bad_type = [f"{t.name} ({t.tensor_type.name})" for t in reader.tensors
              if int(t.tensor_type) not in gguf_quant.SUPPORTED]
  if bad_type:
    raise GGUFError(f"{path}: unsupported quantisation type for tensor(s) {', '.join(bad_type[:8])}"
                    f"{' …' if len(bad_type) > 8 else ''}; dsv4 dequantises "
                    f"{', '.join(gguf_quant.TYPE_NAMES[t] for t in sorted(gguf_quant.SUPPORTED))}. Re-quantise the "
                    "model to one of these (llama-quantize) or load its safetensors.")
  unknown = [t.name for t in reader.tensors if hf_name(t.name) is None]
  if unknown:
    raise GGUFError(f"{path}: tensor(s) {', '.join(unknown[:8])} have no transformers counterpart in dsv4's "
                    "name map (dsv4.io.gguf); this GGUF holds parts the dense family does not model.")


class GGUFFile:
  """An opened, checked GGUF: its transformers config, tensor shapes, and each tensor dequantised on request.

  Opening checks the whole file (length, architecture, metadata, tensor types and names) before any compute;
  `get` dequantises one tensor (float32, transformers' layout, finite values checked), so a loader that asks
  for tensors one by one never holds more than one dequantised tensor beyond the model it builds.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = str(path)
    self.reader = open_reader(path)
    meta = metadata(self.reader)
    if "tokenizer.ggml.tokens" in self.reader.fields:
      meta["tokenizer.ggml.tokens.count"] = len(self.reader.fields["tokenizer.ggml.tokens"].data)
    self.metadata = meta
    self.config = config_dict(meta, [t.name for t in self.reader.tensors], self.path)
    check_tensors(self.reader, self.path)
    self._by_name = {hf_name(t.name): t for t in self.reader.tensors}

  def keys(self) -> list[str]:
    return list(self._by_name)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(int(s) for s in reversed(self._by_name[name].shape.tolist()))  # ggml lists the fastest dim first

  def get(self, name: str) -> np.ndarray:
    t = self._by_name[name]
    arr = gguf_quant.dequantize(np.asarray(t.data), int(t.tensor_type), int(t.n_elements)).reshape(self.shape(name))
    if not np.isfinite(arr).all():
      n_bad = int((~np.isfinite(arr)).sum())
      raise GGUFError(f"{self.path}: tensor {t.name} has {n_bad} non-finite value(s) (NaN/inf); the file is corrupt.")
    if self.config["model_type"] in _PERMUTED_QK and (".attn_q." in t.name or ".attn_k." in t.name):
      heads = self.config["num_attention_heads" if ".attn_q." in t.name else "num_key_value_heads"]
      arr = unpermute_qk(arr, heads)
    return arr

  def tokenizer(self):
    """dsv4.io.gguf_tokenizer.GGUFTokenizer, or None when the file carries no tokenizer metadata."""
    return tokenizer_from_reader(self.reader, self.path) if "tokenizer.ggml.tokens" in self.reader.fields else None


@functools.lru_cache(maxsize=4)
def _opened(path: str, mtime_ns: int, size: int) -> GGUFFile:
  return GGUFFile(path)


def open_gguf(path_or_name: str | os.PathLike) -> GGUFFile:
  """The GGUFFile of a .gguf file or a known model name, parsed once per process (parsing the header and checking
  the file take ~3 s for SmolLM2, and a run asks for the config, the tokenizer and the weights separately); a
  file changed on disk is parsed again."""
  from dsv4.io.gguf_models import resolve
  path = Path(resolve(path_or_name)).resolve()
  stat = path.stat()
  return _opened(str(path), stat.st_mtime_ns, stat.st_size)


def load_tokenizer(path_or_name) -> GGUFTokenizer:
  """The tokenizer of a GGUF file or a known model name (dsv4.io.gguf_models); no tensors are read."""
  f = open_gguf(path_or_name)
  return tokenizer_from_reader(f.reader, f.path)


def load_gguf(path: str | os.PathLike):
  """(config dict, {transformers name: float32 ndarray}, tokenizer) for a GGUF file.

  The tokenizer is a dsv4.io.gguf_tokenizer.GGUFTokenizer, or None when the file carries no tokenizer metadata.
  Everything about the file is checked before the first tensor is dequantised; tensors are dequantised one at a
  time and all returned (use `GGUFFile` directly to build a model without holding them all).
  """
  f = GGUFFile(path)
  tokenizer = f.tokenizer()
  return f.config, {name: f.get(name) for name in f.keys()}, tokenizer


def from_pretrained(path_or_name: str | os.PathLike, dtype: str = "float32", shardings=None, **overrides):
  """A dense target from a .gguf file or a known model name (dsv4.io.gguf_models), weights dequantised to `dtype`
  one tensor at a time and, with `shardings(path, abstract_variable)`, placed on their devices as they are read."""
  from dsv4.io.dense_hf import check_tensors as check_model_tensors
  from dsv4.io.dense_hf import dense_from_get
  from dsv4.model.dense_config import dense_config_from_hf
  f = open_gguf(path_or_name)
  cfg = dense_config_from_hf(f.config, f.path, **{"dtype": dtype, "param_dtype": dtype, **overrides})
  check_model_tensors(cfg, {n: f.shape(n) for n in f.keys()}, f.path)
  return dense_from_get(cfg, f.get, shardings)
