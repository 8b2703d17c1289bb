"""Evaluating drafters: acceptance (τ, survival, conditional acceptance) and wall-clock speedup over dsv4's AR, on
prompt sets, for several drafters side by side, over block sizes γ and temperatures.

A run (`evaluate(config)`, driven by `scripts/evaluate.py --config configs/eval/NAME.py`):
  1. checks everything before computing: the target and drafter paths, the prompt sets (paths, fields), every
     temperature ≥ 0, every γ ≤ each drafter's trained block size;
  2. acceptance: for each prompt set × temperature × drafter × γ, `speculative_generate` over the set's prompts
     (batches of `batch_size`, the same prompts and seed for every drafter; prompt buffers padded to a multiple of
     `prompt_bucket` so that real prompts of many lengths share a few compiled loops), its per-round record pooled
     per set into `dsv4.inference.metrics.AcceptanceStats` (DESIGN.md's definitions). At T = 0 the output is also
     compared with `dsv4.generate`'s token for token (`matches_ar`);
  3. speedup at `timing.temperatures`: AR and every drafter × γ decoding the whole set, interleaved in one
     `dsv4.benchmarking.time_interleaved` call (≥ 5 repetitions after warm-up, median with spread; a ratio inside
     the noise is refused and reported as such);
  4. loop efficiency: the round's parts (`dsv4.inference.round_parts`) timed in the same interleaved call as the
     decodes (timed apart, the machine's drift between two calls was as large as the loop's own cost on a fast
     target), each at `timing.component_iters` and COMPONENT_LONG times as many iterations, its time per
     iteration the difference (a call's own dispatch cancels); then measured speedup / (τ · T_AR-step /
     (T_draft + T_verify)).
  5. τ against τ_prob: the trainer's held-out τ_prob (checkpoint metadata, for the drafter's trained γ; a T = 1
     quantity) beside the measured τ at T = 1 and the same γ, where the run has that cell.
Outputs (`dsv4.evaluation.eval_report`): console table, results.json, results.csv, TensorBoard scalars, PNG plots,
and a final JSON line per drafter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsv4.benchmarking import Refused, time_interleaved
from dsv4.errors import ConfigError
from dsv4.evaluation.prompt_sets import PromptSet, load_prompt_set, renderer, set_spec
from dsv4.inference.metrics import AcceptanceStats, loop_efficiency, macro_average, predicted_speedup

COMPONENT_LONG = 4  # the round's parts are timed at component_iters and 4 × component_iters iterations
AR_STEP = "shared"  # the prefix of the AR-step timers, which every row of a set shares


@dataclass
class Drafter:
  """One drafter of the run: its name, what `speculative_generate` takes, trained γ, and the trainer's τ_prob."""
  name: str
  model: object
  block_size: int
  tau_prob: float | None
  path: str


def _number(x, what: str) -> float:
  if isinstance(x, bool) or not isinstance(x, int | float) or not np.isfinite(x):
    raise ConfigError(f"{what} must be a number, got {x!r}.")
  return float(x)


def check_config(config) -> None:
  """Refuses bad input before anything is loaded or compiled, naming the field and what to do."""
  temps = tuple(config.temperatures)
  if not temps:
    raise ConfigError("config.temperatures is empty; give at least one temperature (0.0 is greedy).")
  for t in temps + tuple(config.timing.temperatures):
    if _number(t, "config.temperatures / config.timing.temperatures entry") < 0:
      raise ConfigError(f"temperature must be ≥ 0 (0 is greedy), got {t} in config.temperatures or "
                        "config.timing.temperatures.")
  missing = [t for t in config.timing.temperatures if t not in temps]
  if config.timing.enabled and missing:
    raise ConfigError(f"config.timing.temperatures {missing} are not in config.temperatures {temps}; the speedup is "
                      "timed on the decodes whose acceptance is measured.")
  sweeps = config.block_sizes.values() if _per_drafter(config.block_sizes) else [config.block_sizes]
  for g in (g for sweep in sweeps for g in sweep):
    if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
      raise ConfigError(f"config.block_sizes entries must be integers ≥ 1 (or None: the drafter's own), got {g!r}.")
  b = config.get("prompt_bucket")
  if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
    raise ConfigError(f"config.prompt_bucket must be an integer ≥ 1 (or None), got {b!r}.")
  if not isinstance(config.max_new_tokens, int) or config.max_new_tokens < 2:
    raise ConfigError(f"config.max_new_tokens must be an integer ≥ 2, got {config.max_new_tokens!r}.")
  if not config.prompt_sets:
    raise ConfigError("config.prompt_sets is empty; add a set (kind jsonl / hf / corpus).")
  for name, spec in config.prompt_sets.items():
    set_spec({**dict(spec), "name": spec.get("name") or name})
  if not config.drafters:
    raise ConfigError("config.drafters is empty; give (name, checkpoint path) pairs.")
  names = {spec.get("name") or name for name, spec in config.prompt_sets.items()}
  unknown = [s for s in ((config.get("peers") or {}).get("sets") or ()) if s not in names]
  if unknown:
    raise ConfigError(f"config.peers.sets names {unknown}, which are not prompt sets of this run {sorted(names)}.")


def bucket(config) -> int:
  """Prompt buffers padded to a multiple of this (config.prompt_bucket, default 1): every decode loop compiles once
  per prompt length otherwise, which dominates a run over real prompt sets."""
  return config.get("prompt_bucket") or 1


def _per_drafter(block_sizes) -> bool:
  return hasattr(block_sizes, "items")  # a dict or ConfigDict: drafter name → block sizes


def gammas_for(config, drafter: Drafter) -> list[int]:
  """The block sizes this drafter runs: config.block_sizes (None = its trained γ), each ≤ its trained γ; a mapping
  gives each drafter its own sweep (a drafter it does not name runs its trained γ)."""
  out = []
  sweep = config.block_sizes
  if _per_drafter(sweep):
    sweep = sweep.get(drafter.name, (None,))
  for g in sweep:
    g = drafter.block_size if g is None else g
    if g > drafter.block_size:
      raise ConfigError(f"config.block_sizes has {g} but drafter {drafter.name!r} ({drafter.path}) was trained with "
                        f"block_size {drafter.block_size}: it cannot draft more. Use block sizes ≤ "
                        f"{drafter.block_size} (or None for its own).")
    if g not in out:
      out.append(g)
  return out


def check_drafter_paths(config) -> None:
  """Refuses missing drafter checkpoints, all of them in one message, each with the command that makes it
  (`config.drafter_commands`, when the config names one)."""
  commands = dict(config.get("drafter_commands") or {})
  missing = [(name, path) for name, path in config.drafters if not Path(path).exists()]
  if missing:
    lines = [f"  {name}: {path} — make it with: {commands[name]}" if name in commands else
             f"  {name}: {path} — give a train_drafter.py workdir, a step directory or an export "
             "(scripts/export_drafter.py)" for name, path in missing]
    raise ConfigError("drafter checkpoints that do not exist:\n" + "\n".join(lines) + "\nor leave them out: "
                      "--config.drafters='((\"NAME\", \"PATH\"), ...)'.")


def load_drafters(config, target) -> list[Drafter]:
  import dsv4
  check_drafter_paths(config)
  out = []
  for name, path in config.drafters:
    d = dsv4.load_drafter(Path(path).absolute(), target=target)  # orbax restores absolute paths only
    out.append(Drafter(name, d, d.config.block_size, d.meta.get("tau_prob"), str(path)))
  return out


def load_tokenizer_for(target_path):
  """The target's tokenizer: a GGUF model's own (its vocabulary, special ids and chat template), else the
  tokenizer.json an export ships beside its weights."""
  from dsv4.io.target import is_gguf, tokenizer_path
  if is_gguf(target_path):
    from dsv4.io.gguf import load_tokenizer
    return load_tokenizer(target_path)
  from dsv4.data.tokenizer import load_tokenizer
  tok_path = tokenizer_path(target_path)
  if tok_path is None:
    raise ConfigError(f"{target_path}: no tokenizer.json beside the target; prompts cannot be encoded.")
  return load_tokenizer(tok_path)


def eos_for(target, tokenizer) -> int | None:
  """Where outputs stop: the tokenizer's own EOS when it declares one (a GGUF chat model's end of turn,
  SmolLM2's `<|im_end|>`), else the target config's."""
  eos = getattr(tokenizer, "eos_id", None)
  return target.config.eos_token_id if eos is None else int(eos)


def load_sets(config, tokenizer, bos_id) -> list[PromptSet]:
  render = renderer(tokenizer, bos_id)
  return [load_prompt_set({**dict(spec), "name": spec.get("name") or name}, render)
          for name, spec in config.prompt_sets.items()]


def _batches(prompts, size):
  size = size or len(prompts)
  return [prompts[i:i + size] for i in range(0, len(prompts), size)]


def decoders(target, drafter, prompts, config, temperature: float, gamma: int | None, eos_id: int | None):
  """A no-argument callable decoding every prompt (AR when `drafter` is None) → (outputs, stats list)."""
  import dsv4
  kw = dict(temperature=temperature, top_p=config.top_p, top_k=config.top_k, seed=config.seed, eos_id=eos_id,
            prompt_bucket=bucket(config))
  batches = _batches(prompts, config.batch_size)

  def run():
    outs, stats = [], []
    for batch in batches:
      if drafter is None:
        outs += dsv4.generate(target, batch, config.max_new_tokens, **kw)
      else:
        o, s = dsv4.speculative_generate(target, drafter, batch, config.max_new_tokens, block_size=gamma, **kw)
        outs += o
        stats.append(s)
    return outs, stats
  return run


def acceptance(stats_list: list[dict]) -> AcceptanceStats:
  """Rounds of every batch of a set, pooled (τ pools all rounds of all prompts)."""
  return AcceptanceStats.from_rounds([s["round_accepted"] for s in stats_list],
                                     [s["round_proposed"] for s in stats_list],
                                     [s["round_bonus"] for s in stats_list])


def _cell(x):
  """JSON of an Estimate or a refusal."""
  return {"refused": str(x), "short": x.short} if isinstance(x, Refused) else x.to_dict()


def evaluate(config, *, log: Callable[[str], None] = print, target=None, tokenizer=None) -> dict:
  """The run described in the module docstring; returns the results dict (see eval_report for the files)."""
  check_config(config)
  check_drafter_paths(config)
  from dsv4.io.target import is_gguf, load_target
  if target is None:
    if not is_gguf(config.target) and not Path(config.target).exists():
      raise ConfigError(f"config.target {config.target!r} does not exist; give a target export directory, e.g. "
                        "assets/targets/small, a .gguf file or an installed model name (smollm2-135m-instruct).")
    target = load_target(config.target)
  if tokenizer is None:
    tokenizer = load_tokenizer_for(config.target)
  drafters = load_drafters(config, target)
  gammas = {d.name: gammas_for(config, d) for d in drafters}
  sets = load_sets(config, tokenizer, target.config.bos_token_id if config.prepend_bos else None)
  eos = eos_for(target, tokenizer) if config.stop_at_eos else None
  cells, timing = [], []
  interrupted = None
  try:
    _run_sets(sets, drafters, gammas, target, config, eos, log, cells, timing)
  except KeyboardInterrupt:  # keep what is measured: every finished cell and timed set is written
    interrupted = (f"interrupted (Ctrl-C): {len(cells)} acceptance cells and {len(timing)} timed sets were finished "
                   "and are kept; re-run the same command for the whole table")
    log(interrupted)
  from dsv4.training.provenance import provenance
  results = {"target": str(config.target), "provenance": provenance(), "cells": cells, "timing": timing,
             "drafters": {d.name: {"path": d.path, "trained_block_size": d.block_size, "tau_prob": d.tau_prob}
                          for d in drafters},
             "sets": {ps.name: {"prompts": len(ps.prompts), "sources": ps.sources} for ps in sets},
             "summary": summary(config, drafters, gammas, cells, timing)}
  return results | ({"interrupted": interrupted} if interrupted else {})


def _run_sets(sets, drafters, gammas, target, config, eos, log, cells: list, timing: list) -> None:
  """Fills `cells` (acceptance per set × drafter × γ × T) and `timing` (per timed set) as each is finished."""
  peer_model = None  # the transformers model, loaded once for every set
  for ps in sets:
    log(f"prompt set {ps.name}: {len(ps.prompts)} prompts, {min(map(len, ps.prompts))}–"
        f"{max(map(len, ps.prompts))} tokens")
    for temp in config.temperatures:
      ar = decoders(target, None, ps.prompts, config, temp, None, eos)
      ar_out, _ = ar()
      variants = {"ar": ar}
      for d in drafters:
        for g in gammas[d.name]:
          run = decoders(target, d.model, ps.prompts, config, temp, g, eos)
          out, stats = run()
          acc = acceptance(stats)
          cell = {"set": ps.name, "drafter": d.name, "block_size": g, "temperature": temp, **acc.to_dict(),
                  "tokens": sum(map(len, out)), "prompts": len(ps.prompts)}
          if temp == 0:
            cell["matches_ar"] = out == ar_out
          cells.append(cell)
          log(f"  T={temp} {d.name} γ={g}: τ {acc.tau:.3f} over {acc.rounds} rounds")
          variants[f"{d.name}@{g}"] = run
      if config.timing.enabled and temp in config.timing.temperatures:
        peers, unsupported = {}, {}
        if temp == 0 and config.get("peers") and config.peers.enabled and (  # the peers decode greedily
            not config.peers.get("sets") or ps.name in config.peers.sets):  # transformers is slow: maybe a few sets
          from dsv4.evaluation.peers import load_peer_model, peer_decoders
          peer_model = peer_model or load_peer_model(target, config.target)
          peers, unsupported = peer_decoders(peer_model, ps.prompts, config.max_new_tokens,
                                             config.peers.prompt_lookup_num_tokens, eos_id=eos)
        timed = _time_set(ps, temp, {**variants, **peers}, drafters, gammas, cells, target, config, log, peers,
                          ar_out)
        timing.append(timed | {"peers_unsupported": unsupported})


def _time_set(ps, temp, variants, drafters, gammas, cells, target, config, log, peers, ar_out) -> dict:
  """Speedups of every drafter × γ over AR (and over each transformers peer) on this set, and their loop efficiency
  from the round's parts."""
  from dsv4.inference.round_parts import per_iteration, round_part_timers
  iters = (config.timing.component_iters, COMPONENT_LONG * config.timing.component_iters)
  parts = {}  # the round's parts, timed in the same interleaved call as the decodes: no drift between the two
  for d in drafters:
    for g in gammas[d.name]:
      timers = round_part_timers(target, d.model, ps.prompts[0], g, config.max_new_tokens, temperature=temp,
                                 top_k=config.top_k, top_p=config.top_p, iters=iters, prompt_bucket=bucket(config))
      parts |= {f"{d.name}@{g}/{k}": fn for k, fn in timers.items() if not k.startswith("ar_step/")}
      # the AR step is the same work for every drafter and γ: timed once, every row's prediction uses it (timed
      # per row, one run's rows measured it 0.88–1.21 ms, noise that moved their loop efficiency by as much)
      if not any(k.startswith(AR_STEP + "/") for k in parts):
        parts |= {f"{AR_STEP}/{k}": fn for k, fn in timers.items() if k.startswith("ar_step/")}
  log(f"  timing {ps.name} at T={temp}: {len(variants)} variants and {len(parts)} round parts × "
      f"{config.timing.repeats} repetitions")
  t = time_interleaved(variants | parts, config.timing.repeats, warmup=config.timing.warmup,
                       on_high_load=config.timing.on_high_load, settle_s=config.timing.get("settle_s", 0.0))
  tokens = next(c["tokens"] for c in cells if c["set"] == ps.name and c["temperature"] == temp)
  out = {"set": ps.name, "temperature": temp, "load": t.load_line(), "seconds": t.to_dict()["seconds"], "rows": [],
         "peers": {}}
  for p, fn in peers.items():  # a peer stops where dsv4 does (EOS, or max_new_tokens), so its output is comparable
    peer_out = fn()
    out["peers"][p] = {"tokens_per_s": sum(map(len, peer_out)) / t.estimate(p).value,
                       "ar_speedup_over_peer": _ratio(t, p, "ar"), "matches_ar": peer_out == ar_out}
  for d in drafters:
    for g in gammas[d.name]:
      name = f"{d.name}@{g}"
      cell = next(c for c in cells if c["set"] == ps.name and c["drafter"] == d.name and c["block_size"] == g
                  and c["temperature"] == temp)
      try:
        sp = t.speedup("ar", name)
      except Refused as e:
        sp = e
      comp = per_iteration(t, AR_STEP, *iters, parts=("ar_step",)) | per_iteration(t, name, *iters,
                                                                                   parts=("draft", "verify"))
      refused = next((v for v in (sp, *comp.values()) if isinstance(v, Refused)), None)
      pred = None if refused else predicted_speedup(cell["tau"], comp["ar_step"], comp["draft"], comp["verify"])
      eff = refused or loop_efficiency(sp, cell["tau"], comp["ar_step"], comp["draft"], comp["verify"])
      row = {"drafter": d.name, "block_size": g, "speedup": _cell(sp), "loop_efficiency": _cell(eff),
             "predicted_speedup": pred, "tokens_per_s_ar": tokens / t.estimate("ar").value,
             "tokens_per_s_spec": tokens / t.estimate(name).value,
             "components_s": {k: _cell(v) for k, v in comp.items()},
             "speedup_over_peers": {p: _ratio(t, p, name) for p in peers}}
      out["rows"].append(row)
      log(f"    {name}: speedup {'refused' if isinstance(sp, Refused) else sp.fmt()}, predicted "
          f"{'refused' if pred is None else f'{pred:.3f}'}")
  return out


def _ratio(t, slow: str, fast: str) -> dict:
  try:
    return _cell(t.speedup(slow, fast))
  except Refused as e:
    return _cell(e)


def _median(x):
  return None if x is None or "refused" in x else x["median"]


def summary(config, drafters, gammas, cells, timing) -> dict:
  """Per drafter at its first γ: macro-averaged τ (first temperature), speedup and loop efficiency (first timed
  temperature; None when any set's figure was refused), and τ at T = 1 beside the trainer's τ_prob."""
  out = {}
  for d in drafters:
    g = gammas[d.name][0]
    t0 = config.temperatures[0]
    taus = {c["set"]: c["tau"] for c in cells if c["drafter"] == d.name and c["block_size"] == g
            and c["temperature"] == t0}
    if not taus:  # an interrupted run that had not reached this drafter
      continue
    rows = [r for tm in timing for r in tm["rows"] if r["drafter"] == d.name and r["block_size"] == g
            and tm["temperature"] == (config.timing.temperatures[0] if config.timing.temperatures else None)]
    sp = [_median(r["speedup"]) for r in rows]
    ef = [_median(r["loop_efficiency"]) for r in rows]
    t1 = {c["set"]: c["tau"] for c in cells if c["drafter"] == d.name and c["block_size"] == d.block_size
          and c["temperature"] == 1.0}
    out[d.name] = {
        "block_size": g, "temperature": t0, "tau": macro_average(taus),
        "sets": len(taus), "speedup": float(np.mean(sp)) if sp and None not in sp else None,
        "loop_efficiency": float(np.mean(ef)) if ef and None not in ef else None,
        "tau_T1_trained_block": macro_average(t1) if t1 else None, "tau_prob": d.tau_prob,
        "trained_block_size": d.block_size}
  return out


def tau_prob_rows(results: Mapping) -> list[dict]:
  """τ at T = 1 (the drafter's trained γ, per set) beside the trainer's held-out τ_prob, a T = 1 quantity."""
  rows = []
  for name, info in results["drafters"].items():
    for c in results["cells"]:
      if c["drafter"] == name and c["temperature"] == 1.0 and c["block_size"] == info["trained_block_size"]:
        rows.append({"drafter": name, "set": c["set"], "block_size": c["block_size"], "tau_T1": c["tau"],
                     "tau_prob": info["tau_prob"]})
  return rows
