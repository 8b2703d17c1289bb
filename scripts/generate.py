"""Generate with a dsv4 target: batched prompts, whole decode loop in one jit.

  python scripts/generate.py --model hf_dir --prompt "def fib(n):" --max_new_tokens 64
  python scripts/generate.py --checkpoint runs/ckpt --prompt_ids "1,2,3;4,5" --temperature 0.8 --top_p 0.95
  python scripts/generate.py --config configs/target/tiny.py --prompt_ids "5,6,7"      # random weights

Text prompts need a tokenizer: `--tokenizer path/tokenizer.json`, or a tokenizer.json inside --model/--checkpoint.
Ends with one JSON line: {"outputs": [[ids...], ...], "texts": [...] | null, "seconds": float}.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dsv4  # noqa: E402
from dsv4.parallel import distributed  # noqa: E402


def load_model(args):
  if args.model:
    return dsv4.from_pretrained(args.model)
  if args.checkpoint:
    from dsv4.io.checkpoint import load_model as load_ckpt
    return load_ckpt(args.checkpoint)
  from flax import nnx

  from dsv4.configs import load_config, model_config
  return dsv4.Transformer(model_config(load_config(args.config)), rngs=nnx.Rngs(args.seed))


def find_tokenizer(args):
  if args.tokenizer:
    return Path(args.tokenizer)
  for d in (args.model, args.checkpoint):
    if d and (Path(d) / "tokenizer.json").exists():
      return Path(d) / "tokenizer.json"
  return None


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--model", help="transformers-format directory (config.json + safetensors)")
  src.add_argument("--checkpoint", help="dsv4 (orbax) model checkpoint directory")
  src.add_argument("--config", help="target config file[:variant]; random weights")
  prompts = p.add_mutually_exclusive_group(required=True)
  prompts.add_argument("--prompt", action="append", help="text prompt (repeatable); needs a tokenizer")
  prompts.add_argument("--prompt_ids", help="token ids: '1,2,3;4,5' is two prompts")
  p.add_argument("--tokenizer", help="tokenizer.json (HF tokenizers)")
  p.add_argument("--max_new_tokens", type=int, default=32)
  p.add_argument("--temperature", type=float, default=0.0)
  p.add_argument("--top_p", type=float, default=1.0)
  p.add_argument("--top_k", type=int, default=0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eos_id", type=int, default=None)
  args = distributed.parse_args(p, argv)

  tok_path = find_tokenizer(args)
  tokenizer = None
  if tok_path is not None:
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(tok_path))
  if args.prompt:
    if tokenizer is None:
      p.error("--prompt needs a tokenizer: pass --tokenizer path/tokenizer.json (or use --prompt_ids)")
    ids = [tokenizer.encode(text).ids for text in args.prompt]
  else:
    try:
      ids = [[int(t) for t in part.split(",") if t.strip()] for part in args.prompt_ids.split(";")]
    except ValueError:
      p.error(f"--prompt_ids {args.prompt_ids!r}: expected comma-separated integers, prompts separated by ';'")
  try:
    model = load_model(args)
    t0 = time.time()
    outputs = dsv4.generate(model, ids, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, eos_id=args.eos_id)
  except (ValueError, FileNotFoundError) as e:  # bad prompts, configs, checkpoints: one clear line, no traceback
    p.error(str(e))
  seconds = time.time() - t0
  texts = [tokenizer.decode(o) for o in outputs] if tokenizer is not None else None
  if not distributed.is_main():
    return
  for i, o in enumerate(outputs):
    print(f"[{i}] {texts[i] if texts else o}")
  print(json.dumps({"outputs": outputs, "texts": texts, "seconds": round(seconds, 3)}))


if __name__ == "__main__":
  main()
