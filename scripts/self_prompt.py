"""Self-prompting (Magpie): an instruct model writes the user queries it will later be distilled on.

  python scripts/self_prompt.py --model smollm2-135m-instruct --out data/smollm2/self_prompts --num_prompts 2048 \\
      --eval_sets ../shared/datasets/{gsm8k,math500,humaneval,mbpp,mt-bench}.jsonl

Writes OUT/prompts.jsonl (chat rows for `regenerate.py --prompts OUT/prompts.jsonl --prompt_field messages`) and
OUT/provenance.json; see dsv4/data/self_prompt.py for what is kept and dsv4/data/self_prompt_run.py for the layout.
Queries sharing an exact text or a word 8-gram with any --eval_sets prompt are dropped and the rest reported.
Ctrl-C or SIGTERM keeps the sampled batches; re-running the same command resumes. Ends with one JSON line
{"out", "rows", "dropped", "seconds"}.
"""

import argparse
import json
import signal
import sys


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", required=True, help="a .gguf file or an installed model's name (smollm2-135m-instruct)")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--num_prompts", type=int, default=2048)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--max_query_tokens", type=int, default=64)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--top_p", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eval_sets", nargs="*", default=[], help="evaluation prompt sets (jsonl with `turns`) to keep out")
  args = p.parse_args(argv)
  from dsv4.data.self_prompt_run import QuerySampler, check_inputs, self_prompt
  from dsv4.errors import Dsv4Error
  from dsv4.io.gguf import from_pretrained, load_tokenizer

  def stop(signum, frame):
    raise KeyboardInterrupt

  signal.signal(signal.SIGTERM, stop)
  try:
    sampler = QuerySampler(num_prompts=args.num_prompts, batch_size=args.batch_size,
                           max_query_tokens=args.max_query_tokens, temperature=args.temperature, top_p=args.top_p,
                           seed=args.seed)
    check_inputs(args.out, sampler, args.eval_sets)  # before the model loads
    tokenizer = load_tokenizer(args.model)
    model = from_pretrained(args.model)
    prov = self_prompt(model, tokenizer, args.out, sampler, eval_sets=args.eval_sets, model_name=args.model,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
  except (Dsv4Error, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit(f"interrupted: the sampled batches are kept in {args.out}/.partial.jsonl; re-run the same command to "
             "resume")
  print(json.dumps({"out": args.out, "rows": prov["rows"], "dropped": prov["dropped"],
                    "seconds": prov["seconds_this_call"]}))


if __name__ == "__main__":
  main()
