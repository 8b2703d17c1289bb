"""Self-prompting (Magpie): an instruct model writes the user queries it will later be distilled on.

  python scripts/self_prompt.py --model smollm2-135m-instruct --out data/smollm2/self_prompts --num_prompts 2048 \\
      --eval_sets=../shared/datasets/{gsm8k,math500,humaneval,mbpp,mt-bench}.jsonl

Writes OUT/prompts.jsonl (chat rows for `regenerate.py --prompts OUT/prompts.jsonl --prompt_field messages`) and
OUT/provenance.json; see dsv4/data/self_prompt.py for what is kept and dsv4/data/self_prompt_run.py for the layout.
Queries sharing an exact text or a word 8-gram with any --eval_sets prompt are dropped and the rest reported.
Ctrl-C or SIGTERM keeps the sampled batches; re-running the same command resumes. Ends with one JSON line
{"out", "rows", "dropped", "seconds"}.
"""

import json
import signal
import sys

from absl import flags

from dsv4 import cli

_MODEL = flags.DEFINE_string("model", None, "a .gguf file or an installed model's name (smollm2-135m-instruct)")
_OUT = flags.DEFINE_string("out", None, "output directory")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 2048, "queries to keep")
_BATCH = flags.DEFINE_integer("batch_size", 32, "queries sampled per batch")
_MAX_QUERY = flags.DEFINE_integer("max_query_tokens", 64, "longest query sampled, in tokens")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "sampling temperature")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_EVAL_SETS = flags.DEFINE_multi_string("eval_sets", [], "an evaluation prompt set (jsonl with `turns`) to keep out; "
                                       "one flag per set: --eval_sets=DIR/{gsm8k,mbpp}.jsonl expands to two in bash")
flags.mark_flags_as_required(["model", "out"])


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; give each evaluation set its own --eval_sets "
             "(--eval_sets=DIR/{gsm8k,mbpp}.jsonl expands to two in bash)")
  model_name, out, eval_sets = _MODEL.value, _OUT.value, _EVAL_SETS.value
  from dsv4.data.self_prompt_run import QuerySampler, check_inputs, self_prompt
  from dsv4.errors import Dsv4Error
  from dsv4.io.gguf import from_pretrained, load_tokenizer

  def stop(signum, frame):
    raise KeyboardInterrupt

  signal.signal(signal.SIGTERM, stop)
  try:
    sampler = QuerySampler(num_prompts=_NUM_PROMPTS.value, batch_size=_BATCH.value,
                           max_query_tokens=_MAX_QUERY.value, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
                           seed=_SEED.value)
    check_inputs(out, sampler, eval_sets)  # before the model loads
    tokenizer = load_tokenizer(model_name)
    model = from_pretrained(model_name)
    prov = self_prompt(model, tokenizer, out, sampler, eval_sets=eval_sets, model_name=model_name,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
  except (Dsv4Error, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit(f"interrupted: the sampled batches are kept in {out}/.partial.jsonl; re-run the same command to "
             "resume")
  print(json.dumps({"out": out, "rows": prov["rows"], "dropped": prov["dropped"],
                    "seconds": prov["seconds_this_call"]}))


if __name__ == "__main__":
  cli.run(main)
