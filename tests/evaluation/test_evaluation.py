"""scripts/evaluate.py's library on the tiny target with a drafter built here: the files it writes, τ against the
loop's own stats recomputed by hand, prompt sets from a real jsonl file and cut from code, and bad input refused
before any compute. The end-to-end run compiles AR, the loop at two temperatures and the round's parts (minutes on
2 shared cores), so its tests are in the slow tier."""

import csv
import json
import os

import ml_collections
import numpy as np
import pytest

import dsv4
from dsv4.data.tokenizer import train_bpe
from dsv4.errors import ConfigError, DataError
from dsv4.evaluation import eval_report
from dsv4.evaluation.harness import evaluate
from dsv4.evaluation.prompt_sets import function_cuts, load_prompt_set, renderer
from dsv4.io.drafter_export import save_drafter
from tests.inference.spec_fixtures import ROOT, tiny_drafter, tiny_target

HUMANEVAL = os.path.join(ROOT, "..", "shared", "datasets", "humaneval.jsonl")  # ../shared beside the clone
needs_datasets = pytest.mark.skipif(not os.path.exists(HUMANEVAL), reason=f"{HUMANEVAL} not on this machine")


@pytest.fixture(scope="module")
def tokenizer():
  with open(HUMANEVAL) as f:
    texts = [json.loads(line)["turns"][0] for line in f]
  return train_bpe(texts, vocab_size=tiny_target().config.vocab_size)


@pytest.fixture(scope="module")
def drafter_dir(tmp_path_factory):
  target = tiny_target()
  return str(save_drafter(tmp_path_factory.mktemp("d") / "dspark", tiny_drafter("dspark"), "tiny-in-test",
                          target.config, meta={"tau_prob": 1.5}))


def config_for(drafter_dir, out_dir, **over):
  from dsv4.configs import load_config
  c = load_config(os.path.join(ROOT, "configs/eval/small.py:tiny"))
  c.drafters = (("dspark", drafter_dir),)
  c.prompt_sets = ml_collections.ConfigDict({"humaneval": dict(
      name="humaneval", kind="jsonl", path=HUMANEVAL, field="turns", split="", max_prompts=2, seed=0,
      max_prompt_tokens=24)})
  c.out_dir = str(out_dir)
  c.timing.on_high_load = "ignore"
  for k, v in over.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope="module")
def run(drafter_dir, tokenizer, tmp_path_factory):
  out = tmp_path_factory.mktemp("eval")
  config = config_for(drafter_dir, out)
  lines = []
  results = evaluate(config, target=tiny_target(), tokenizer=tokenizer, log=lines.append)
  paths = eval_report.write_all(results, out, log=lines.append)
  return config, results, paths, eval_report.final_line(results)


@pytest.mark.slow
@needs_datasets
def test_writes_every_output(run):
  config, results, paths, final = run
  for key in ("json", "csv", "conditional_png", "tau_png", "speedup_png", "md"):
    assert paths[key].stat().st_size > 0, key
  md = paths["md"].read_text()
  assert "Command: `python" in md and "| set | drafter |" in md and "![speedup_png](speedup.png)" in md
  assert final in md and "Load while timing: humaneval (T = 0)" in md
  with open(paths["conditional_png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert any(p.name.startswith("events.out.tfevents") for p in paths["tensorboard"].iterdir())
  saved = json.loads(paths["json"].read_text())
  rows = list(csv.DictReader(paths["csv"].open()))
  assert len(rows) == len(saved["cells"]) == 2  # one set × one drafter × one γ × two temperatures
  line = json.loads(final)
  assert set(line["drafters"]["dspark"]) >= {"tau", "speedup", "loop_efficiency", "tau_prob"}
  assert line["drafters"]["dspark"]["tau_prob"] == 1.5
  timing = saved["timing"][0]["rows"][0]
  assert set(timing["components_s"]) == {"ar_step", "draft", "verify"}
  # every part timed at two iteration counts (their difference is the time per iteration), the AR step once per set
  row = f"dspark@{timing['block_size']}"
  assert {k for k in saved["timing"][0]["seconds"] if "/" in k} == {
      "shared/ar_step/2", "shared/ar_step/8", f"{row}/draft/2", f"{row}/draft/8", f"{row}/verify/2", f"{row}/verify/8"}
  assert ("refused" in timing["speedup"]) or timing["speedup"]["n"] >= 5
  greedy = next(c for c in saved["cells"] if c["temperature"] == 0.0)
  assert greedy["matches_ar"] is True  # lossless: greedy speculative output is AR's


@pytest.mark.slow
@needs_datasets
def test_tau_equals_the_loops_own_stats(run, tokenizer, drafter_dir):
  config, results, _, _ = run
  target = tiny_target()
  ps = load_prompt_set(dict(config.prompt_sets.humaneval), renderer(tokenizer))
  drafter = dsv4.load_drafter(drafter_dir, target=target)
  for temp in (0.0, 1.0):
    num = den = 0
    for p in ps.prompts:  # batch_size 1, as the config asks
      _, st = dsv4.speculative_generate(target, drafter, [p], config.max_new_tokens, temperature=temp,
                                        seed=config.seed, eos_id=target.config.eos_token_id)
      num += int(np.sum(st["round_accepted"]) + np.sum(st["round_bonus"]))
      den += int(st["rounds"])
    cell = next(c for c in results["cells"] if c["temperature"] == temp)
    assert cell["tau"] == pytest.approx(num / den, abs=1e-12)
    assert cell["rounds"] == den


@needs_datasets
def test_real_jsonl_prompt_set(tokenizer):
  with open(HUMANEVAL) as f:
    first_turns = [json.loads(line)["turns"][0] for line in f]
  ps = load_prompt_set(dict(name="he", kind="jsonl", path=HUMANEVAL, max_prompts=3, seed=1), renderer(tokenizer))
  assert len(ps.prompts) == 3
  for p, src in zip(ps.prompts, ps.sources, strict=True):
    assert p == tokenizer.encode(first_turns[int(src.split("#")[1])]).ids
  again = load_prompt_set(dict(name="he", kind="jsonl", path=HUMANEVAL, max_prompts=3, seed=1), renderer(tokenizer))
  assert again.prompts == ps.prompts  # the per-set seed fixes the sample


def test_function_cuts_stop_after_header_and_docstring():
  src = ('import os\n\n\ndef f(x):\n    """Doc\n    more."""\n    return x\n\n\ndef g(y): return y\n\n\n'
         'class A:\n    def m(self,\n          z):\n        # note\n        return z\n')
  cuts = function_cuts(src)
  assert [src[:c].rsplit("\n", 2)[-2] for c in cuts] == ['    more."""', "          z):"]
  assert src[cuts[0]:].startswith("    return x")
  assert function_cuts("def broken(:\n") == []


@needs_datasets
def test_bad_input_is_refused_before_compute(drafter_dir, tokenizer, tmp_path, monkeypatch):
  import dsv4.evaluation.harness as ev

  def no_compute(*a, **k):
    raise AssertionError("decoding started before the input was checked")
  monkeypatch.setattr(ev, "decoders", no_compute)
  target = tiny_target()

  def refused(err, match, **over):
    with pytest.raises(err, match=match):
      evaluate(config_for(drafter_dir, tmp_path, **over), target=target, tokenizer=tokenizer, log=lambda s: None)

  refused(ConfigError, "temperature must be ≥ 0", temperatures=(0.0, -0.5))
  refused(ConfigError, "trained with block_size", block_sizes=(99,))
  missing = ml_collections.ConfigDict({"x": dict(name="x", kind="jsonl", path=str(tmp_path / "nope.jsonl"))})
  refused(DataError, "does not exist", prompt_sets=missing)
  hub = ml_collections.ConfigDict({"x": dict(name="x", kind="hf", path="openai/openai_humaneval")})
  refused(DataError, "need the network", prompt_sets=hub)
  wrong_field = ml_collections.ConfigDict({"x": dict(name="x", kind="jsonl", path=HUMANEVAL, field="prompt")})
  refused(DataError, "no field 'prompt'", prompt_sets=wrong_field)
  refused(ConfigError, "do not exist", drafters=(("d", str(tmp_path / "no-drafter")),))


def test_transformers_peers_decode_what_dsv4_ar_decodes(tmp_path):
  """The peers read the same weights: transformers' greedy generate gives dsv4.generate's greedy tokens on the tiny
  target; its prompt-lookup decoding (lossless: the same tokens) where transformers runs it, which it refuses for
  DeepseekV4 (a model with recurrent state), and the refusal is recorded."""
  from dsv4.evaluation.peers import load_peer_model, peer_decoders
  target = tiny_target()
  rng = np.random.default_rng(0)
  base = rng.integers(3, target.config.vocab_size, 6).tolist()
  prompts = [base * 3, rng.integers(3, target.config.vocab_size, 11).tolist()]  # repeats give lookup something
  peers, unsupported = peer_decoders(load_peer_model(target, None), prompts, 8, lookup_tokens=3)
  want = [dsv4.generate(target, [p], 8)[0] for p in prompts]
  assert peers["hf_greedy"]() == want
  if "hf_prompt_lookup" in peers:
    assert peers["hf_prompt_lookup"]() == want
  else:
    assert "stateful" in unsupported["hf_prompt_lookup"]


@pytest.mark.slow
@needs_datasets
def test_ctrl_c_keeps_the_finished_cells(drafter_dir, tokenizer, tmp_path, monkeypatch):
  """Ctrl-C in the second cell (T = 1) ends the run with the first cell (T = 0) measured, summarised, written and
  marked interrupted, instead of a traceback that loses it."""
  from dsv4.evaluation import harness
  calls, real = [], harness.acceptance

  def interrupt_second(stats):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(stats)
  monkeypatch.setattr(harness, "acceptance", interrupt_second)
  config = config_for(drafter_dir, tmp_path, max_new_tokens=8)
  config.timing.enabled = False
  results = evaluate(config, target=tiny_target(), tokenizer=tokenizer, log=lambda s: None)
  assert [c["temperature"] for c in results["cells"]] == [0.0] and results["cells"][0]["matches_ar"] is True
  assert "interrupted" in results["interrupted"] and "1 acceptance cells" in results["interrupted"]
  assert results["summary"]["dspark"]["tau"] == results["cells"][0]["tau"]
  paths = eval_report.write_all(results, tmp_path, log=lambda s: None)
  assert json.loads(paths["json"].read_text())["interrupted"] == results["interrupted"]
  assert results["interrupted"] in paths["md"].read_text()
  assert json.loads(eval_report.final_line(results))["interrupted"] == results["interrupted"]


def test_every_drafter_of_the_small_table_names_a_command_that_trains_it(tmp_path):
  """`configs/eval/small.py:all` on a clone without runs/: one refusal before compute naming every missing drafter
  with its training command, and each command's config loads (its overrides applied as the script would)."""
  from dsv4.configs import load_config
  from dsv4.evaluation.harness import check_drafter_paths
  c = load_config(os.path.join(ROOT, "configs/eval/small.py:all"))
  assert os.path.isdir(dict(c.drafters)["dspark"])  # the shipped one
  c.drafters = tuple((name, str(tmp_path / name)) for name, _ in c.drafters)
  with pytest.raises(ConfigError) as e:
    check_drafter_paths(c)
  trained = [name for name, _ in c.drafters if name in c.drafter_commands]
  assert len(trained) == 5
  for name in trained:
    command = c.drafter_commands[name].split()
    assert command[:2] == ["python", "scripts/train_drafter.py"]
    assert f"{name}: {tmp_path / name} — make it with: {c.drafter_commands[name]}" in str(e.value)
    config = load_config(os.path.join(ROOT, command[command.index("--config") + 1]))
    for arg in command:
      if arg.startswith("--config."):
        key, value = arg[len("--config."):].split("=")
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
          node = node[p]
        node[leaf] = type(node[leaf])(value)
    assert config.drafter.block_size == (1 if name == "mtp_1" else 7)


def test_ctrl_c_before_the_first_cell_still_writes_the_report(tmp_path):
  """An evaluation interrupted before any acceptance cell finished (what `evaluate` returns then: no cells, no
  timing, an empty summary) writes its files and says it was interrupted; the plots of no cells are left out
  instead of matplotlib failing on a figure of 0 panels."""
  interrupted = ("interrupted (Ctrl-C): 0 acceptance cells and 0 timed sets were finished and are kept; re-run the "
                 "same command for the whole table")
  results = {"target": "assets/targets/small", "provenance": {}, "cells": [], "timing": [],
             "drafters": {"dspark": {"path": "d", "trained_block_size": 7, "tau_prob": 2.0}},
             "sets": {"code": {"prompts": 4, "sources": []}}, "summary": {}, "interrupted": interrupted}
  paths = eval_report.write_all(results, tmp_path, log=lambda s: None)
  assert json.loads(paths["json"].read_text())["interrupted"] == interrupted
  assert interrupted in paths["md"].read_text()
  assert "conditional_png" not in paths and not (tmp_path / "conditional_acceptance.png").exists()
  assert "conditional_acceptance.png" not in paths["md"].read_text()
