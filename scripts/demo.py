"""`make demo`: the end-to-end DSpark demo (target → drafter → speculative decoding) lands with later work.

For now it says what it will do and shows the part that exists: the V4-style target, built from the
`tiny` config, running a forward pass on the CPU.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from dsv4.configs import load_config, model_config  # noqa: E402
from dsv4.model import Transformer  # noqa: E402
from dsv4.model.transformer import jit_forward  # noqa: E402

PLAN = """The full demo will: build the embedded stdlib corpus and tokenizer, load the committed `small` V4-style
target, distil a DSpark drafter from it, and report accepted length τ and speedup over autoregressive decoding.
Available now: the target model. Running the tiny target once:"""


def main():
  print(PLAN)
  cfg = model_config(load_config("configs/target/tiny.py"))
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 160)), jnp.int32)
  t0 = time.time()
  out = jit_forward(model, tap_layers=(1, 2), with_mtp=True)(ids)
  out.logits_BTV.block_until_ready()
  print(f"logits {out.logits_BTV.shape}, taps {out.taps_BTLD.shape}, MTP logits {out.mtp_logits_KBTV.shape} "
        f"in {time.time() - t0:.1f}s (incl. compile)")
  print(json.dumps({"status": "target-only", "logits_shape": list(out.logits_BTV.shape),
                    "finite": bool(jnp.isfinite(out.logits_BTV).all())}))


if __name__ == "__main__":
  main()
