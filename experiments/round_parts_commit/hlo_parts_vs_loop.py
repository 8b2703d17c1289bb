import re, collections
import jax, jax.numpy as jnp
from flax import nnx
import dsv4
from dsv4.io.target import load_target
from dsv4.inference import round_parts as rp
from dsv4.inference import speculative as sp
from dsv4.inference.draft_state import adapter_for
from dsv4.inference.generate import pad_prompts
target = load_target("/work/main/assets/targets/small")
d = dsv4.load_drafter("/work/main/assets/drafters/small-dspark", target=target)
module, cfg, frozen = sp._unwrap(target, d)
g = 7; adapter = adapter_for(module, g)
prompt = list(range(3, 131))
width = sp.prompt_width(target.config, [prompt], 64, g, 32)
padded, lengths = pad_prompts([prompt], width)
tg, tp = nnx.split(target); dg, dp = nnx.split(module)
ts, ds, first = rp._start(tg, tp, dg, dp, frozen, jnp.asarray(padded), jnp.asarray(lengths), adapter=adapter, max_len=sp.max_len_for([width], 64, g))
fed = jnp.broadcast_to(first[:, None], (1, g + 1)).astype(jnp.int32)
def count(txt, name):
  comps = {}; cur = None
  for line in txt.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$", line)
    if m: cur = m.group(1); comps[cur] = []; continue
    if cur: comps[cur].append(line)
  bodies = set(re.findall(r"body=%?([\w.\-]+)", txt))
  big = max(bodies, key=lambda b: len(comps.get(b, [])))
  ops = collections.Counter(re.findall(r"\} (\w[\w-]*)\(", "\n".join(comps[big])))
  print(name, "bodies", len(bodies), "largest body", {k: ops[k] for k in ("fusion", "dot", "copy", "while")})
count(rp._drafts.lower(dg, dp, frozen, ds, first, ts.lengths_B, adapter=adapter, iters=8, temperature=0.0, top_k=0, top_p=1.0).compile().as_text(), "draft")
count(rp._verifies.lower(tg, tp, ts, fed, iters=8, taps=adapter.tap_layers).compile().as_text(), "verify")
count(open("/tmp/spec_small.hlo").read(), "loop")
