"""HF → dsv4 (orbax) → HF reproduces every tensor exactly; transformers loads our export; bad checkpoints
fail with one error naming every offending tensor or the file."""

import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes  # noqa: F401
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import dsv4
from dsv4.errors import CheckpointError
from tests.io import hf_reference as ref

ROOT = Path(__file__).resolve().parents[2]


def read_all(directory: Path) -> dict[str, np.ndarray]:
  out = {}
  for f in sorted(directory.glob("*.safetensors")):
    with safe_open(f, "np") as st:
      out.update({k: st.get_tensor(k) for k in st.keys()})
  return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf")
  ref.build("hc2_e8k2", seed=3).save_pretrained(path)
  return path


def convert(*args):
  out = subprocess.run([sys.executable, str(ROOT / "scripts/convert_checkpoint.py"), *map(str, args)],
                       capture_output=True, text=True, check=True, cwd=ROOT)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_roundtrip_reproduces_every_tensor(hf_dir, tmp_path):
  src = tmp_path / "src"  # the shared export plus a tokenizer.json, which must travel with the weights both ways
  src.mkdir()
  for f in hf_dir.iterdir():
    (src / f.name).write_bytes(f.read_bytes())
  tokenizer = json.dumps({"version": "1.0", "marker": "roundtrip"})
  (src / "tokenizer.json").write_text(tokenizer)
  convert("--src", src, "--dst", tmp_path / "ours")
  summary = convert("--src", tmp_path / "ours", "--dst", tmp_path / "back", "--to-hf")
  assert summary["direction"] == "dsv4->hf"
  assert (tmp_path / "ours" / "tokenizer.json").read_text() == tokenizer
  assert (tmp_path / "back" / "tokenizer.json").read_text() == tokenizer
  want, got = read_all(hf_dir), read_all(tmp_path / "back")
  assert sorted(got) == sorted(want)
  for name in want:
    assert got[name].dtype == want[name].dtype, name
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_transformers_loads_our_export(hf_dir, tmp_path):
  from transformers import DeepseekV4ForCausalLM
  ours = dsv4.from_pretrained(hf_dir)
  dsv4.io.hf.save_pretrained(ours, tmp_path / "export")
  reloaded = DeepseekV4ForCausalLM.from_pretrained(tmp_path / "export").eval()
  ids = np.random.default_rng(1).integers(0, 512, (1, 160))
  want = ref.logits(reloaded, ids)
  got = np.asarray(ours(jnp.asarray(ids, jnp.int32)))
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_mismatch_lists_every_offending_tensor(hf_dir, tmp_path):
  tensors = read_all(hf_dir)
  del tensors["model.layers.1.attn.wkv.weight"]
  tensors["model.layers.0.attn.bogus.weight"] = np.zeros((2, 2), np.float32)
  tensors["model.norm.weight"] = np.zeros((7,), np.float32)
  bad = tmp_path / "bad"
  bad.mkdir()
  save_file(tensors, bad / "model.safetensors")
  (bad / "config.json").write_text((hf_dir / "config.json").read_text())
  with pytest.raises(CheckpointError) as e:
    dsv4.from_pretrained(bad)
  msg = str(e.value)
  for name in ("layers.1.attn.wkv.weight", "layers.0.attn.bogus.weight", "norm.weight: checkpoint (7,)"):
    assert name in msg, msg


def test_truncated_file_is_named(hf_dir, tmp_path):
  bad = tmp_path / "trunc"
  bad.mkdir()
  data = (hf_dir / "model.safetensors").read_bytes()
  (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
  (bad / "config.json").write_text((hf_dir / "config.json").read_text())
  with pytest.raises(CheckpointError, match="model.safetensors"):
    dsv4.from_pretrained(bad)


def test_missing_config_and_existing_destination(hf_dir, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
  with pytest.raises(CheckpointError, match="config.json"):
    dsv4.from_pretrained(empty)
  out = subprocess.run([sys.executable, str(ROOT / "scripts/convert_checkpoint.py"), "--src", str(hf_dir), "--dst",
                        str(empty)], capture_output=True, text=True, cwd=ROOT)
  assert out.returncode != 0 and "exists" in out.stderr
  assert (empty / "model.safetensors").exists()  # nothing already written is lost


def test_a_bf16_source_keeps_its_dtype_both_ways_unless_asked(tmp_path):
  """The committed small target is stored in bf16 (19 MB): the round trip writes bf16 again, equal tensor for
  tensor, not float32 at twice the size; --dtype asks for another storage dtype."""
  src = ROOT / "assets/targets/small"
  convert("--src", src, "--dst", tmp_path / "ours")
  convert("--src", tmp_path / "ours", "--dst", tmp_path / "back", "--to-hf")
  want, got = read_all(src), read_all(tmp_path / "back")
  assert sorted(got) == sorted(want)
  for name in want:  # bf16 weights; the routing biases float32 and the hash table int64, as exported
    assert got[name].dtype == want[name].dtype, (name, got[name].dtype, want[name].dtype)
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  assert sum(w.dtype == ml_dtypes.bfloat16 for w in want.values()) > 0.9 * len(want)
  size = lambda d: sum(f.stat().st_size for f in d.glob("*.safetensors"))  # noqa: E731
  assert size(tmp_path / "back") < 1.01 * size(src)
  convert("--src", tmp_path / "ours", "--dst", tmp_path / "f32", "--to-hf", "--dtype", "float32")
  wide = read_all(tmp_path / "f32")
  for name in want:
    assert wide[name].dtype == (np.float32 if want[name].dtype == ml_dtypes.bfloat16 else want[name].dtype), name
    np.testing.assert_array_equal(wide[name], want[name].astype(wide[name].dtype), err_msg=name)
