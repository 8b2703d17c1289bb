"""`train_drafter`'s loop on a dense target export (transformers layout, model_type llama): the target is found by
config.json's model_type, its features feed the drafter online, and `dsv4.load_drafter` binds the trained drafter
back to the dense target."""

import json

import numpy as np
import pytest
from flax import nnx

import dsv4
from dsv4.configs import load_config
from dsv4.io.dense_hf import save_dense_pretrained
from dsv4.model import DenseTransformer
from dsv4.model.dense_config import dense_config_from_hf
from dsv4.training import distill_loop

DENSE = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
             rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


@pytest.mark.slow
def test_train_drafter_on_a_dense_export(tmp_path, tiny_corpus):
  target_dir = save_dense_pretrained(DenseTransformer(dense_config_from_hf(DENSE), rngs=nnx.Rngs(0)),
                                     tmp_path / "target")
  config = load_config("configs/drafter/dspark.py:tiny")
  config.target.path, config.target.config = str(target_dir), ""
  config.drafter.target_layer_ids = (0, 1)
  config.data.corpus_dir, config.data.seq_len = str(tiny_corpus), 128
  config.train.update(steps=4, checkpoint_every=4, eval_every=4, eval_batches=1, log_every=1, batch_size=8)
  result = distill_loop.run(config, tmp_path / "drafter")
  assert np.isfinite(result["loss"]) and result["step"] == 4
  loaded = dsv4.load_drafter(tmp_path / "drafter")
  assert isinstance(loaded.target, DenseTransformer)
  assert loaded.frozen.lm_head_DV is None  # tied head
  meta = json.loads((target_dir / "config.json").read_text())
  assert meta["model_type"] == "llama"
