"""A GGUF file (or a known model name) written as a transformers model directory: config.json, float32
safetensors in transformers' names and layout (llama.cpp's Q/K permutation undone), tokenizer.json and
tokenizer_config.json with the chat template. `dsv4.from_pretrained`, `transformers.AutoModelForCausalLM` and
`scripts/generate.py --model DIR --prompt …` all load the result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dsv4.io.gguf import load_gguf
from dsv4.io.gguf_models import resolve
from dsv4.io.safetensors_dir import write_shards, written_whole


def gguf_to_hf_dir(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> Path:
  """Writes the directory into a temporary sibling and renames it into place (no half-written output)."""
  if Path(dst).exists() and not overwrite:  # before the (long) read of the GGUF
    raise FileExistsError(f"{dst}: exists; pass overwrite=True (or --overwrite) to replace it.")
  config, tensors, tokenizer = load_gguf(resolve(src))
  with written_whole(dst, overwrite) as tmp:
    write_shards(tensors, tmp)
    (tmp / "config.json").write_text(json.dumps({**config, "dtype": "float32"}, indent=2))
    if tokenizer is not None:
      tokenizer.tokenizer.save(str(tmp / "tokenizer.json"))
      tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": tokenizer.add_bos,
                 "bos_token": tokenizer.token(tokenizer.bos_id), "eos_token": tokenizer.token(tokenizer.eos_id),
                 "pad_token": tokenizer.token(tokenizer.pad_id), "chat_template": tokenizer.chat_template}
      (tmp / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in tok_cfg.items() if v is not None},
                                                            indent=2))
  return Path(dst)
