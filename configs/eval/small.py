"""Evaluation of drafters on the committed `small` target: `scripts/evaluate.py --config configs/eval/small.py`.

Variants: (none) the shipped DSpark drafter on held-out corpus code prompts, T = 0 and T = 1, speedup timed at
T = 0; `:all` every drafter kind side by side on the same prompts and seeds (the recorded table,
experiments/eval_small): the shipped DSpark, DFlash with both objectives, EAGLE-3, MTP-k (chained, γ = 7) and
MTP-1, each trained with the same budget (400 steps of 8 × 512 tokens, `drafter_scales.py`'s `small`), with
DSpark also at γ = 4 and 2 for the best γ on this CPU; `:tiny` one prompt set of 2 short prompts, few new tokens,
for tests (they set target and drafters).
Override any field on the command line, e.g. `--config.drafters='(("dspark","/work/runs/dspark-small"),)'` or
`--config.prompt_sets.code.max_prompts=8`.
"""

from pathlib import Path

import ml_collections

ROOT = Path(__file__).resolve().parents[2]  # shipped assets resolve against the repository: any folder works


_TRAIN = ("python scripts/train_drafter.py --config configs/drafter/{cfg} --workdir runs/{run} "
          "--results experiments/{exp}")
# name → (checkpoint, command that trains it): the drafters of `:all`, besides the shipped DSpark
TRAINED = {
    "dflash": ("dflash-small", "dflash.py:small"),
    "dflash_target": ("dflash-target-small", "dflash.py:small,target"),
    "eagle3": ("eagle3-small", "eagle3.py:small"),
    "mtp_k": ("mtp-small", "mtp.py:small"),
    "mtp_1": ("mtp1-small", "mtp.py:small --config.drafter.block_size=1"),
}


def prompt_set(**kw):
  base = dict(name="", kind="corpus", path="data/stdlib_corpus", field="turns", split="", max_prompts=4, seed=0,
              max_prompt_tokens=128)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.target = str(ROOT / "assets/targets/small")
  c.drafters = (("dspark", str(ROOT / "assets/drafters/small-dspark")),)
  c.prompt_sets = ml_collections.ConfigDict({"code": prompt_set(name="code")})
  c.max_new_tokens = 64
  # None: each drafter's trained γ; a mapping gives a drafter its own sweep
  c.block_sizes = ml_collections.ConfigDict({"dspark": (None, 4, 2)}) if arg == "all" else (None,)
  c.temperatures = (0.0, 1.0)    # T = 1 is what the trainer's τ_prob predicts
  c.top_p = 1.0
  c.top_k = 0
  c.seed = 0
  c.batch_size = 1               # speculative decoding is judged at batch 1
  c.prepend_bos = False          # corpus cuts and held-out text start mid-document
  c.stop_at_eos = True
  c.out_dir = "runs/eval-small"
  c.timing = ml_collections.ConfigDict(dict(enabled=True, temperatures=(0.0,), repeats=5, warmup=1,
                                            on_high_load="warn", component_iters=8,
                                            settle_s=60.0))  # wait out the load of the run's own compiles
  # transformers' greedy generate and prompt-lookup decoding on the same weights, timed in the same run (T = 0)
  c.peers = ml_collections.ConfigDict(dict(enabled=True, prompt_lookup_num_tokens=4))
  if arg == "all":
    c.drafters = c.drafters + tuple((name, str(ROOT / "runs" / run)) for name, (run, _) in TRAINED.items())
    c.drafter_commands = {name: _TRAIN.format(cfg=cfg, run=run, exp="train_drafter_" + run.replace("-", "_"))
                          for name, (run, cfg) in TRAINED.items()}
    c.prompt_sets.code.max_prompts = 8
    c.prompt_bucket = 32         # the 8 prompts' lengths share a few compiled loops
    c.timing.repeats = 7         # sub-second decodes: one slow repetition in 5 once put every pair's range over 1
    c.out_dir = "runs/eval-small-all"
  elif arg == "tiny":
    c.peers.enabled = False
    c.target = ""
    c.drafters = ()
    c.prompt_sets = ml_collections.ConfigDict({"code": prompt_set(name="code", max_prompts=2, max_prompt_tokens=24)})
    c.max_new_tokens = 12
    c.temperatures = (0.0, 1.0)
    c.timing.component_iters = 2
    c.out_dir = "runs/eval-tiny"
  elif arg is not None:
    raise ValueError(f"configs/eval/small.py: unknown variant {arg!r}; use no variant, :all or :tiny.")
  return c
