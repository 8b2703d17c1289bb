"""Regenerate distillation data: the target's own responses to a set of prompts, as a tokenised dataset.

  python scripts/regenerate.py --target assets/targets/small --prompts stdlib --split train --num_prompts 64 \\
      --prompt_tokens 64 --max_new_tokens 128 --out data/regen-small
  python scripts/regenerate.py --target assets/targets/small --prompts stdlib --split validation --num_prompts 8 \\
      --prompt_tokens 64 --max_new_tokens 128 --out data/regen-small
  python scripts/regenerate.py --target DIR --prompts chats.jsonl --prompt_field messages --split train --out OUT
  python scripts/regenerate.py --target smollm2-135m-instruct --prompts data/smollm2/self_prompts/prompts.jsonl \\
      --prompt_field messages --split train --num_prompts 1843 --max_new_tokens 256 --out data/smollm2/regen

--prompts: `stdlib` (the embedded corpus, built on first use), a local file/directory (txt, json, jsonl, parquet,
arrow, save_to_disk) or a hub dataset name. Plain-text rows give their first --prompt_tokens tokens as the prompt;
chat rows (`messages`) give every turn before the last assistant reply. Each call writes one split, OUT/<split>
(see dsv4/data/regenerate.py for the exact definitions and the on-disk layout); read it with
`datasets.load_from_disk(OUT)[split]`. Ctrl-C or SIGTERM keeps the finished batches (exit 130 / 143); re-running
the same command resumes after them. Ends with one JSON line {"out", "split", "path", "rows", "response_tokens",
"seconds"}.
"""

import json
import signal
import sys
from pathlib import Path

from absl import flags

from dsv4 import cli

_TARGET = flags.DEFINE_string("target", None, "exported target directory (config.json + safetensors, or a dsv4 "
                              "checkpoint with dsv4_config.json), a .gguf file, or an installed model's name "
                              "(smollm2-135m-instruct)")
_OUT = flags.DEFINE_string("out", None, "dataset directory; this call writes OUT/<split>")
_SPLIT = flags.DEFINE_string("split", "train", "split to read prompts from and to write (train, validation, ...)")
_PROMPTS = flags.DEFINE_string("prompts", "stdlib", "'stdlib', a local dataset path, or a hub dataset name")
_PROMPT_FIELD = flags.DEFINE_string("prompt_field", "text", "column with the text (or chat `messages`) of each row")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 64, "prompts to answer")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 64, "prompt = first N tokens of a text row (0: whole row)")
_PROMPT_SEED = flags.DEFINE_integer("prompt_seed", 0, "seed of the order prompts are picked in")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "longest response, in tokens")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "sampling temperature (0: greedy)")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass")
_TOP_K = flags.DEFINE_integer("top_k", 0, "sample among the k likeliest tokens (0: all)")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_BATCH = flags.DEFINE_integer("batch_size", 16, "prompts per decode batch (fixed: one compile)")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json (default: the one in --target)")
_CORPUS_DIR = flags.DEFINE_string("corpus_dir", None, "embedded corpus directory for --prompts stdlib (default "
                                  "data/stdlib_corpus)")
_PAD = flags.DEFINE_integer("pad_multiple", 64, "pad prompts to a multiple of this (fewer compiles)")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace OUT/<split> if it exists")
_NO_PROGRESS = flags.DEFINE_bool("no_progress", False, "no progress bar")
flags.mark_flags_as_required(["target", "out"])


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag (see --help)")
  from dsv4.data.regenerate import Sampler, regenerate

  sampler = Sampler(max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
                    top_k=_TOP_K.value, seed=_SEED.value, batch_size=_BATCH.value)
  command = " ".join(["python", *sys.argv])
  received = []

  def stop(signum, frame):  # SIGTERM like Ctrl-C: finished batches are on disk already
    received.append(signum)
    raise KeyboardInterrupt

  previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    manifest = regenerate(_TARGET.value, _OUT.value, split=_SPLIT.value, prompts=_PROMPTS.value,
                          prompt_field=_PROMPT_FIELD.value, num_prompts=_NUM_PROMPTS.value,
                          prompt_tokens=_PROMPT_TOKENS.value or None, sampler=sampler, prompt_seed=_PROMPT_SEED.value,
                          tokenizer=_TOKENIZER.value, corpus_dir=_CORPUS_DIR.value, overwrite=_OVERWRITE.value,
                          pad_multiple=_PAD.value,
                          progress=not _NO_PROGRESS.value, log=lambda m: print(m, file=sys.stderr),
                          extra={"command": command})
  except (ValueError, OSError) as e:  # DataError and bad checkpoints: one clear line, nothing written
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:  # regenerate has said what it kept
    sys.exit(128 + (received[0] if received else signal.SIGINT))
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  out = Path(_OUT.value).absolute()
  print(json.dumps({"out": str(out), "split": _SPLIT.value, "path": str(out / _SPLIT.value), "rows": manifest["rows"],
                    "response_tokens": manifest["response_tokens"], "seconds": manifest["seconds"]}))


if __name__ == "__main__":
  cli.run(main)
