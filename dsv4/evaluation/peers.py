"""transformers peers on the same weights, timed beside dsv4 AR and dsv4 speculative decoding in an evaluation.

The target is read by transformers from a transformers-format directory: `config.target` when it is one, as the
committed targets are; a GGUF target (a .gguf file or an installed model name such as smollm2-135m-instruct) is
dequantised into a temporary directory by `dsv4.io.gguf_convert.gguf_to_hf_dir`, the same float32 weights dsv4
loads; any other target is exported there with `dsv4.io.hf.save_pretrained`. The model is loaded once per run, in
float32. Two peers:
  hf_greedy        `generate(do_sample=False)`: transformers' own AR decoding;
  hf_prompt_lookup `generate(do_sample=False, prompt_lookup_num_tokens=k)`: n-gram drafts copied from the prompt,
                   verified by the same model (lossless, so its output is its greedy output). transformers refuses
                   it for models with recurrent state (DeepseekV4's compressors); the run then records why.
Each decodes every prompt of the set, one at a time (batch 1), stopping where dsv4 stops: at the EOS id dsv4 uses
(a chat model's end of turn) or after max_new_tokens (min_new_tokens too when there is no EOS, so lengths match).
Peers run in this process with torch limited to JAX's thread budget (`dsv4.benchmarking.torch_threads`) while JAX
is idle.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def load_peer_model(target, target_path: str | None):
  """transformers' model of `target`'s weights, in float32 (temporary directories removed once loaded)."""
  import torch
  from transformers import AutoModelForCausalLM

  from dsv4.io.target import is_gguf
  if target_path and (Path(target_path) / "config.json").is_file():
    return AutoModelForCausalLM.from_pretrained(target_path, dtype=torch.float32).eval()
  with tempfile.TemporaryDirectory(prefix="dsv4-peer-") as tmp:
    out = Path(tmp) / "target"
    if target_path and is_gguf(target_path):
      from dsv4.io.gguf_convert import gguf_to_hf_dir
      gguf_to_hf_dir(target_path, out)
    else:
      from dsv4.io.hf import save_pretrained
      save_pretrained(target, out)
    return AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()


def peer_decoders(model, prompts: list[list[int]], max_new_tokens: int, lookup_tokens: int = 0,
                  eos_id: int | None = None) -> tuple[dict, dict]:
  """({"hf_greedy": fn, ["hf_prompt_lookup": fn]}, {peer: why it cannot run}): each fn decodes every prompt and
  returns the token lists (EOS included when hit, as dsv4's). Prompt lookup is listed as unsupported where
  transformers refuses it for the model."""
  import torch

  from dsv4.benchmarking import torch_threads
  stop = dict(eos_token_id=None, min_new_tokens=max_new_tokens) if eos_id is None else dict(eos_token_id=eos_id)

  def decoder(**kw):
    def run():
      outs = []
      with torch_threads(), torch.no_grad():
        for p in prompts:
          ids = torch.tensor([p])
          out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               do_sample=False, pad_token_id=0, **stop, **kw)
          outs.append(out[0, len(p):].tolist())
      return outs
    return run

  peers, unsupported = {"hf_greedy": decoder()}, {}
  if lookup_tokens:
    try:  # transformers refuses assisted generation for models with recurrent state (DeepseekV4: compressor state)
      with torch.no_grad():
        model.generate(torch.tensor([prompts[0][:2]]), max_new_tokens=1, do_sample=False, pad_token_id=0,
                       prompt_lookup_num_tokens=lookup_tokens)
      peers["hf_prompt_lookup"] = decoder(prompt_lookup_num_tokens=lookup_tokens)
    except ValueError as e:
      unsupported["hf_prompt_lookup"] = f"transformers refused it: {e}"
  return peers, unsupported
