"""Counts copy ops (and their bytes) in the compiled speculative loop on small, inside while bodies."""
import re
import jax, jax.numpy as jnp
from flax import nnx
import dsv4
from dsv4.io.target import load_target
from dsv4.inference import speculative as sp
from dsv4.inference.acceptance import lossless_accept
from dsv4.inference.draft_state import adapter_for
from dsv4.inference.generate import pad_prompts

target = load_target("/work/main/assets/targets/small")
d = dsv4.load_drafter("/work/main/assets/drafters/small-dspark", target=target)
module, cfg, frozen = sp._unwrap(target, d)
g = 7
adapter = adapter_for(module, g)
prompts = [list(range(3, 131))]
padded, lengths = pad_prompts(prompts, sp.prompt_width(target.config, prompts, 64, g, 32))
tg, tp = nnx.split(target); dg, dp = nnx.split(module)
lowered = sp._speculate.lower(tg, tp, dg, dp, frozen, jnp.asarray(padded), jnp.asarray(lengths), jnp.uint32(0), jnp.int32(-1),
                              adapter=adapter, accept=lossless_accept, gamma=g, max_new_tokens=64,
                              max_len=sp.max_len_for([padded.shape[1]], 64, g), temperature=0.0, top_k=0, top_p=1.0)
txt = lowered.compile().as_text()
open("/tmp/spec_small.hlo", "w").write(txt)
sizes = {"f32": 4, "s32": 4, "bf16": 2, "pred": 1, "u32": 4, "f16": 2, "s8": 1, "u8": 1}
tot = 0; n = 0; big = []
for line in txt.splitlines():
  m = re.search(r"= (\w+)\[([\d,]*)\]\{[^}]*\} copy\(", line)
  if m:
    dt, dims = m.group(1), m.group(2)
    elems = 1
    for x in dims.split(","):
      if x: elems *= int(x)
    b = elems * sizes.get(dt, 4); tot += b; n += 1
    big.append((b, line.strip()[:160]))
print("copies", n, "bytes", tot)
for b, l in sorted(big, reverse=True)[:12]:
  print(b, l)
