"""Per-device memory of a target on a mesh, and whether it fits an accelerator; nothing is allocated.

  python scripts/plan_mesh.py --config configs/target/v4_pro.py:bf16 --mesh expert=64,fsdp=4 --device h200 \
      --job serve --batch 64 --seq 8192
  python scripts/plan_mesh.py --config configs/target/v4_flash.py:bf16 --device h200 --job train_drafter --search
  python scripts/plan_mesh.py --config configs/target/v4_flash.py:bf16 --job train_drafter \
      --drafter configs/drafter/dspark.py:v4_flash --mesh expert=8,fsdp=8 --batch 8

Parameters and the decode cache go through the rules (the config's `rules` section over DEFAULT_RULES) on an
abstract mesh of any size; activations are the estimate documented in dsv4/planning/plan.py. With --drafter, a
train_drafter plan adds the drafter's parameters, AdamW state, batch and activations (dsv4/planning/plan_drafter.py;
scripts/aot_drafter_step.py compares them with XLA's compiled step). `--search` tries
power-of-two meshes in order of device count and reports the first that fits.
Prints a table, then one JSON line.
"""

import itertools
import json
import math
import sys

from absl import flags
from ml_collections import config_flags

from dsv4 import cli
from dsv4.configs import load_config, model_config
from dsv4.errors import ConfigError, Dsv4Error, ShardingError
from dsv4.model.param_count import abstract_model
from dsv4.parallel.mesh import MESH_AXES, abstract_mesh, parse_sizes
from dsv4.parallel.rules import parse_rules, rules_from_config, rules_with
from dsv4.planning import plan as plan_lib
from dsv4.training.distill_config import drafter_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "target config: path/to/file.py[:variant]")
flags.mark_flag_as_required("config")
_MESH = flags.DEFINE_string("mesh", "", "axis sizes, e.g. expert=64,fsdp=4 (missing axes are 1; -1 needs "
                            "--n_devices); default: the config's `mesh` section, else one device")
_RULES = flags.DEFINE_string("rules", "", "rule overrides, e.g. cache_batch=data+fsdp,kv=none (over the config's)")
_N_DEVICES = flags.DEFINE_integer("n_devices", None, "total devices (fills a -1 size; checks the product)")
_DEVICE = flags.DEFINE_enum("device", "h200", sorted(plan_lib.DEVICES), "accelerator to fit")
_JOB = flags.DEFINE_enum("job", "serve", plan_lib.JOBS, "serve: params + decode cache + prefill chunk; "
                         "train_drafter: frozen target params + whole-sequence forward + taps")
_BATCH = flags.DEFINE_integer("batch", 8, "global batch (sequences)")
_SEQ = flags.DEFINE_integer("seq", 4096, "sequence length (serve: decode cache length)")
_CHUNK = flags.DEFINE_integer("prefill_chunk", 512, "serve: tokens per sequence per prefill extend")
_TAPS = flags.DEFINE_integer("taps", 5, "train_drafter: target layers tapped for the drafter (DSpark: 5)")
_HEADROOM = flags.DEFINE_float("headroom", 0.1, "fraction of device memory kept free (XLA workspace, fragmentation)")
_DRAFTER = flags.DEFINE_string("drafter", "", "train_drafter: the drafter config (configs/drafter/*.py:scale) whose "
                               "parameters, optimizer state, batch and activations are added; its taps set --taps")
_SEARCH = flags.DEFINE_boolean("search", False, "find the smallest power-of-two mesh that fits")
_MAX_DEVICES = flags.DEFINE_integer("max_devices", 4096, "--search: largest mesh tried")


def gb(n: int) -> str:
  return f"{n / 1e9:,.2f} GB"


def table(p: dict) -> str:
  rows = [("parameters (incl. MTP)", p["params_bytes"] - p["frozen_bytes"]), ("frozen state", p["frozen_bytes"]),
          ("drafter parameters", p["drafter_params_bytes"]), ("optimizer state", p["optimizer_bytes"]),
          ("batch", p["batch_bytes"]), ("KV / decode cache", p["kv_bytes"]),
          ("activations (estimate)", p["activation_bytes"]), ("total per device", p["bytes_per_device"])]
  mesh = " × ".join(f"{a}={p['mesh'][a]}" for a in MESH_AXES)
  lines = [f"job {p['job']}, batch {p['batch']}, seq {p['seq']}, mesh {mesh} ({p['n_devices']} devices)",
           f"{'per device':<26}{'bytes':>16}", *(f"{k:<26}{gb(v):>16}" for k, v in rows),
           f"largest parameter shard: {p['largest_param']} {gb(p['largest_param_bytes'])}", "",
           f"{'device':<22}{'usable':>14}  fits"]
  for name, cap in plan_lib.DEVICES.values():
    usable = cap * (1 - _HEADROOM.value)
    mark = " <-" if name == p["device"] else ""
    lines.append(f"{name:<22}{gb(usable):>14}  {'yes' if p['bytes_per_device'] <= usable else 'no'}{mark}")
  return "\n".join(lines + [f"note: {n}" for n in p["notes"]])


def candidates(max_devices: int):
  """Power-of-two meshes {data, fsdp, expert, tensor ≤ 8} by device count; then more expert, less tensor, more
  fsdp (fsdp splits parameters and the batch, data only the batch and the cache)."""
  pows = [2**i for i in range(int(max_devices).bit_length())]
  meshes = [dict(zip(MESH_AXES, m, strict=True)) for m in itertools.product(pows, pows, pows, (1, 2, 4, 8))
            if math.prod(m) <= max_devices]
  return sorted(meshes, key=lambda m: (math.prod(m.values()), -m["expert"], m["tensor"], -m["fsdp"]))


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  spec = flags.FLAGS["config"].serialize().partition("=")[2]
  try:
    cfg = model_config(_CONFIG.value, where=f"{spec}: model")
    rules = rules_with(parse_rules(_RULES.value), base=rules_from_config(_CONFIG.value))
    sizes = parse_sizes(_MESH.value) if _MESH.value else dict(_CONFIG.value.get("mesh", None) or {})
    drafter, taps = None, _TAPS.value
    if _DRAFTER.value:
      if _JOB.value != "train_drafter":
        raise ConfigError(f"--drafter sizes a drafter in training: use it with --job train_drafter, not {_JOB.value}.")
      dconfig = load_config(_DRAFTER.value)
      dcfg = drafter_config(dconfig, where=f"{_DRAFTER.value}: drafter")
      dcfg.check_against_target(cfg)
      drafter, taps = (dcfg, dconfig.train, int(dconfig.data.max_blocks)), dcfg.num_taps
  except (Dsv4Error, OSError) as e:
    sys.exit(f"error: {e}")
  groups = plan_lib.param_groups(abstract_model(cfg))
  kw = dict(job=_JOB.value, device=_DEVICE.value, batch=_BATCH.value, seq=_SEQ.value, headroom=_HEADROOM.value,
            prefill_chunk=_CHUNK.value, taps=taps, groups=groups, drafter=drafter)
  if _SEARCH.value:
    result, tried = None, 0
    for sizes in candidates(_MAX_DEVICES.value):
      mesh = abstract_mesh(sizes)
      try:
        p = plan_lib.plan(cfg, mesh, rules, **kw)
      except ShardingError:  # this mesh does not divide some dimension (or the batch)
        continue
      tried += 1
      if p["fits"]:
        result = p
        break
    if result is None:
      sys.exit(f"error: no mesh of up to {_MAX_DEVICES.value} devices fits ({tried} tried); raise --max_devices, "
               "lower --batch/--seq, or pick a larger device.")
  else:
    n_devices = _N_DEVICES.value
    if n_devices is None and -1 in sizes.values():  # a "fill" axis with nothing to fill: plan the fixed axes alone
      n_devices = math.prod(v for k, v in sizes.items() if v != -1 and not k.startswith("dcn_"))
      print(f"note: no --n_devices; a -1 (fill) axis takes size 1, planning {n_devices} device(s)")
    try:
      result = plan_lib.plan(cfg, abstract_mesh(sizes, n_devices), rules, **kw)
    except Dsv4Error as e:
      sys.exit(f"error: {e}")
  print(f"config {spec}")
  print(table(result))
  print(json.dumps({**result, "config": spec}))


if __name__ == "__main__":
  cli.run(main)
