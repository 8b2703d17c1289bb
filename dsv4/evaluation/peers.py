"""transformers peers on the same weights, timed beside dsv4 AR and dsv4 speculative decoding in an evaluation.

The target is read by transformers from a transformers-format directory (`config.target` when it is one, as the
committed targets are; otherwise exported there first with `dsv4.io.hf.save_pretrained`). Two peers:
  hf_greedy        `generate(do_sample=False)`: transformers' own AR decoding;
  hf_prompt_lookup `generate(do_sample=False, prompt_lookup_num_tokens=k)`: n-gram drafts copied from the prompt,
                   verified by the same model (lossless, so its output is its greedy output). transformers refuses
                   it for models with recurrent state (DeepseekV4's compressors); the run then records why.
Each decodes every prompt of the set, one at a time (batch 1), exactly max_new_tokens tokens (min_new_tokens too,
EOS off, so lengths match dsv4's when dsv4 runs to the same length). Peers run in this process with torch limited to
JAX's thread budget (`dsv4.benchmarking.torch_threads`) while JAX is idle.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def hf_dir(target, target_path: str | None) -> str:
  """A transformers-format directory holding `target`'s weights."""
  if target_path and (Path(target_path) / "config.json").is_file():
    return str(target_path)
  from dsv4.io.hf import save_pretrained
  out = Path(tempfile.mkdtemp(prefix="dsv4-peer-")) / "target"
  save_pretrained(target, out)
  return str(out)


def peer_decoders(model_dir: str, prompts: list[list[int]], max_new_tokens: int,
                  lookup_tokens: int = 0) -> tuple[dict, dict]:
  """({"hf_greedy": fn, ["hf_prompt_lookup": fn]}, {peer: why it cannot run}): each fn decodes every prompt and
  returns the token lists. Prompt lookup is listed as unsupported where transformers refuses it for the model."""
  import torch
  from transformers import AutoModelForCausalLM

  from dsv4.benchmarking import torch_threads
  model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

  def decoder(**kw):
    def run():
      outs = []
      with torch_threads(), torch.no_grad():
        for p in prompts:
          ids = torch.tensor([p])
          out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               min_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                               pad_token_id=0, **kw)
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
