"""The demo's marking of accepted drafts follows the loop's per-round record, and an exported drafter loads with
the trained parameters (cast to bf16) and the trainer's τ_prob in its provenance."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dsv4
from dsv4.evaluation.spec_demo import marked_pieces
from dsv4.io.drafter_export import export_drafter, save_drafter
from tests.inference.spec_fixtures import tiny_drafter, tiny_target


def test_marked_pieces_follow_the_round_record():
  out = [10, 11, 12, 13, 14, 15, 16]
  # first token; round 1 accepts 2 drafts + the target's token; round 2 accepts none + the target's token;
  # round 3 accepts 2 and ends on an EOS draft (no bonus)
  stats = {"round_accepted": np.array([2, 0, 2]), "round_bonus": np.array([1, 1, 0])}
  assert marked_pieces(out, stats) == [([10], False), ([11, 12], True), ([13], False), ([14], False),
                                       ([15, 16], True)]
  with pytest.raises(ValueError, match="covers"):
    marked_pieces(out + [17], stats)


def test_export_keeps_the_parameters_in_bf16(tmp_path, monkeypatch):
  target = tiny_target()
  module = tiny_drafter("dspark")
  src = save_drafter(tmp_path / "trained", module, "tiny-in-test", target.config, step=7,
                     meta={"tau_prob": 2.5, "commit": "abc", "seconds": 12.5,
                           "config": {"data": {"source": "data/x", "seq_len": 64, "seed": 3}}})
  record = export_drafter(src, tmp_path / "export")
  assert record["step"] == 7 and record["tau_prob"] == 2.5 and record["dtype"] == "bfloat16"
  assert record["data"] == {"source": "data/x", "seq_len": 64} and record["train_seconds"] == 12.5
  assert json.loads((tmp_path / "export" / "provenance.json").read_text())["trained_by"]["commit"] == "abc"
  loaded = dsv4.load_drafter(tmp_path / "export", target=target)
  want = jax.tree.leaves(nnx.state(module, nnx.Param))
  got = jax.tree.leaves(nnx.state(loaded.model, nnx.Param))
  assert len(want) == len(got)
  for w, g in zip(want, got, strict=True):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(jnp.asarray(w, jnp.bfloat16), np.float32))
  with pytest.raises(FileExistsError):
    export_drafter(src, tmp_path / "export")
  monkeypatch.chdir(tmp_path)  # relative paths, as the script's users type them (orbax wants absolute ones)
  assert export_drafter("trained", "export-relative")["step"] == 7
