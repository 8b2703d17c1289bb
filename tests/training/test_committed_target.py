"""The committed demo target (assets/targets/small): it loads through `dsv4.from_pretrained`, matches the `small`
config and its size budget, and on held-out standard-library modules — read and tokenised here, independently of
the export script — its cross-entropy is at most 55 % of the unigram entropy of those same tokens."""

import collections
import json
import math
import sysconfig
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.configs import load_config, model_config
from dsv4.data.corpus import module_name, split_of, stdlib_files
from dsv4.data.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / "assets" / "targets" / "small"
ROWS, SEQ = 16, 512


@pytest.fixture(scope="module")
def provenance():
  return json.loads((TARGET / "provenance.json").read_text())


def test_the_committed_target_is_the_small_config_within_its_size_budget(provenance):
  import dsv4
  model = dsv4.from_pretrained(TARGET)
  want = model_config(load_config(str(REPO / "configs/target/small.py")))
  assert model.config == want
  weights = sum(p.stat().st_size for p in TARGET.glob("*.safetensors"))
  assert weights <= 32 * 2**20
  assert weights == provenance["weights_bytes"]
  assert load_tokenizer(TARGET).get_vocab_size() <= want.vocab_size


def test_held_out_cross_entropy_is_within_55_percent_of_unigram_entropy():
  import dsv4
  root = Path(sysconfig.get_paths()["stdlib"])
  files = [p for p in stdlib_files(root) if split_of(module_name(p)) == "validation"]
  tokenizer = load_tokenizer(TARGET)
  texts = []
  for rel in files:
    try:
      texts.append((root / rel).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
      continue
  ids = [np.asarray(e.ids, np.int32) for e in tokenizer.encode_batch(texts)]
  counts = collections.Counter(np.concatenate(ids).tolist())
  total = sum(counts.values())
  entropy = -sum(c / total * math.log(c / total) for c in counts.values())
  # Rows: the opening SEQ tokens of the first ROWS modules long enough to fill one (each from position 0).
  rows = np.stack([d[:SEQ] for d in ids if len(d) >= SEQ][:ROWS])
  graphdef, state = nnx.split(dsv4.from_pretrained(TARGET))
  logits = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.asarray(rows))
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  ce = float(-jnp.mean(jnp.take_along_axis(logp, jnp.asarray(rows[:, 1:, None]), axis=-1)))
  print(f"held-out CE {ce:.3f} nats over {rows.shape[0]}x{SEQ - 1} tokens; validation unigram entropy {entropy:.3f}")
  assert ce <= 0.55 * entropy
