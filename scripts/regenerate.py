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

import argparse
import json
import signal
import sys
from pathlib import Path


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--target", required=True, help="exported target directory (config.json + safetensors, or a dsv4 "
                 "checkpoint with dsv4_config.json), a .gguf file, or an installed model's name "
                 "(smollm2-135m-instruct)")
  p.add_argument("--out", required=True, help="dataset directory; this call writes OUT/<split>")
  p.add_argument("--split", default="train", help="split to read prompts from and to write (train, validation, ...)")
  p.add_argument("--prompts", default="stdlib", help="'stdlib', a local dataset path, or a hub dataset name")
  p.add_argument("--prompt_field", default="text", help="column with the text (or chat `messages`) of each row")
  p.add_argument("--num_prompts", type=int, default=64)
  p.add_argument("--prompt_tokens", type=int, default=64, help="prompt = first N tokens of a text row (0: whole row)")
  p.add_argument("--prompt_seed", type=int, default=0, help="seed of the order prompts are picked in")
  p.add_argument("--max_new_tokens", type=int, default=128)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--top_p", type=float, default=1.0)
  p.add_argument("--top_k", type=int, default=0)
  p.add_argument("--seed", type=int, default=0, help="sampling seed")
  p.add_argument("--batch_size", type=int, default=16, help="prompts per decode batch (fixed: one compile)")
  p.add_argument("--tokenizer", help="tokenizer.json (default: the one in --target)")
  p.add_argument("--corpus_dir", help="embedded corpus directory for --prompts stdlib (default data/stdlib_corpus)")
  p.add_argument("--pad_multiple", type=int, default=64, help="pad prompts to a multiple of this (fewer compiles)")
  p.add_argument("--overwrite", action="store_true", help="replace OUT/<split> if it exists")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  return p, p.parse_args(argv)


def main(argv=None):
  p, args = parse(argv)
  from dsv4.data.regenerate import Sampler, regenerate

  sampler = Sampler(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                    top_k=args.top_k, seed=args.seed, batch_size=args.batch_size)
  command = " ".join(["python"] + [sys.argv[0]] + (sys.argv[1:] if argv is None else list(argv)))
  received = []

  def stop(signum, frame):  # SIGTERM like Ctrl-C: finished batches are on disk already
    received.append(signum)
    raise KeyboardInterrupt

  previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    manifest = regenerate(args.target, args.out, split=args.split, prompts=args.prompts,
                          prompt_field=args.prompt_field, num_prompts=args.num_prompts,
                          prompt_tokens=args.prompt_tokens or None, sampler=sampler, prompt_seed=args.prompt_seed,
                          tokenizer=args.tokenizer, corpus_dir=args.corpus_dir, overwrite=args.overwrite,
                          pad_multiple=args.pad_multiple,
                          progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr),
                          extra={"command": command})
  except (ValueError, OSError) as e:  # DataError and bad checkpoints: one clear line, nothing written
    p.error(str(e))
  except KeyboardInterrupt:  # regenerate has said what it kept
    sys.exit(128 + (received[0] if received else signal.SIGINT))
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  out = Path(args.out).absolute()
  print(json.dumps({"out": str(out), "split": args.split, "path": str(out / args.split), "rows": manifest["rows"],
                    "response_tokens": manifest["response_tokens"], "seconds": manifest["seconds"]}))
  return manifest


if __name__ == "__main__":
  main()
