"""Quantized native checkpoints (FP8/FP4 weights + scales) load into our float model: every parameter equals the
float64 decode of what is on disk (tests/io/quant_reference.py) cast to its dtype; scales are consumed; a missing
scale or a scale of the wrong grid is one error naming both tensors; slices at any boundary equal the whole read;
unquantized tensors read exactly as safetensors reads them."""

import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

import dsv4
from dsv4.errors import CheckpointError
from dsv4.io import names as names_lib
from dsv4.io.native_checkpoint import NativeCheckpoint
from tests.io import quant_reference as ref

CFG = ref.tiny_config()


@pytest.fixture(scope="module")
def native():
  return ref.random_native(CFG)


@pytest.fixture(scope="module")
def qdir(native, tmp_path_factory):
  path = tmp_path_factory.mktemp("quantized")
  return path, ref.write_model_dir(CFG, native, path)


def params(m) -> dict:
  return {tuple(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(m))}


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_loads_the_float64_decode(qdir, native, param_dtype):
  path, decoded = qdir
  loaded = dsv4.from_pretrained(path, param_dtype=param_dtype)
  got = params(loaded)
  for spec in names_lib.specs(loaded.config):
    want = spec.to_ours([decoded[n] for n in spec.names]).astype(got[spec.path].dtype)
    np.testing.assert_array_equal(got[spec.path], want, err_msg=str(spec.path))
    # The quantized path ran: experts (FP4) and kernels (FP8) differ from the float tensors they were made from.
    if spec.path[-1] in ("w_gate", "lm_head") or spec.path[-2:] == ("q_a_proj", "kernel"):
      original = spec.to_ours([native[n] for n in spec.names]).astype(want.dtype)
      assert not np.array_equal(want, original), spec.path
  assert got[("layers", 0, "attn", "q_a_proj", "kernel")].dtype == np.dtype(param_dtype)


def test_hf_prefixed_names_and_scales_are_consumed(qdir, tmp_path, native):
  ref.write_model_dir(CFG, native, tmp_path, n_files=1, prefix="model.")
  ckpt = NativeCheckpoint(tmp_path)
  assert not [k for k in ckpt.keys() if k.endswith((".scale", "_scale_inv"))]
  assert ckpt.shape("model.layers.0.ffn.experts.1.w1.weight") == (16, 160)  # logical, not the packed [16, 80]
  a, b = params(dsv4.from_pretrained(tmp_path)), params(dsv4.from_pretrained(qdir[0]))
  for p in a:
    np.testing.assert_array_equal(a[p], b[p], err_msg=str(p))


def test_slices_at_any_boundary(qdir):
  ckpt = NativeCheckpoint(qdir[0])
  rng = np.random.default_rng(0)
  names = ["layers.0.ffn.experts.2.w1.weight",  # FP4 int8-packed
           "layers.1.ffn.experts.0.w2.weight",  # FP4 as safetensors F4
           "head.weight", "layers.0.attn.wq_a.weight",  # FP8, ue8m0 / float32 scales
           "layers.0.hc_attn_fn"]  # unquantized
  for name in names:
    full = ckpt.read(name)
    for _ in range(20):
      (r0, r1), (c0, c1) = (sorted(rng.choice(n + 1, 2, replace=False)) for n in full.shape)
      np.testing.assert_array_equal(ckpt.read(name, (slice(r0, r1), slice(c0, c1))), full[r0:r1, c0:c1],
                                    err_msg=f"{name}[{r0}:{r1}, {c0}:{c1}]")


def test_unquantized_reads_match_safetensors(tmp_path):
  rng = np.random.default_rng(1)
  tensors = {"a": rng.normal(size=(3, 5)).astype(np.float32), "b": rng.normal(size=(7,)).astype(ml_dtypes.bfloat16),
             "c": rng.integers(0, 9, (4, 2)), "d": np.zeros((0, 3), np.float32)}
  ref.save(tensors, tmp_path, n_files=2)
  ours = NativeCheckpoint(tmp_path)
  theirs = {}
  for f in sorted(tmp_path.glob("*.safetensors")):
    with safe_open(f, "np") as st:
      theirs.update({k: st.get_tensor(k) for k in st.keys()})
  assert sorted(ours.keys()) == sorted(theirs)
  for k in tensors:
    a, b = ours.get(k), theirs[k]
    assert a.dtype == b.dtype and a.shape == b.shape == ours.shape(k), k
    np.testing.assert_array_equal(a, b)


def _write(tmp_path, tensors):
  ref.save(tensors, tmp_path)
  return tmp_path


def test_missing_scale_names_both(tmp_path):
  w = np.ones((4, 4), ml_dtypes.float8_e4m3fn)
  path = _write(tmp_path, {"layers.0.attn.wq_a.weight": w, "x.weight": ref.F4(np.zeros((2, 2), np.uint8))})
  with pytest.raises(CheckpointError) as e:
    NativeCheckpoint(path)  # the pairs are checked when the directory is opened, before any config is read
  msg = str(e.value)
  assert "2 quantized tensor problem" in msg
  for name in ("layers.0.attn.wq_a.weight", "layers.0.attn.wq_a.scale", "layers.0.attn.wq_a.weight_scale_inv",
               "x.weight", "x.scale"):
    assert name in msg, msg


def test_wrong_scale_grid_names_both(tmp_path):
  e8m0 = ml_dtypes.float8_e8m0fnu
  path = _write(tmp_path, {
      "a.weight": np.ones((300, 200), ml_dtypes.float8_e4m3fn), "a.scale": np.ones((2, 2), e8m0),
      "b.w1.weight": np.ones((4, 35), np.int8), "b.w1.scale": np.ones((4, 2), e8m0),
      "c.weight": np.ones((4, 4), np.float32), "c.weight_scale_inv": np.ones((1, 1), np.float32),
      "d.weight": np.ones((4, 4), ml_dtypes.float8_e4m3fn), "d.scale": np.ones((1, 1), np.uint8)})
  with pytest.raises(CheckpointError) as e:
    NativeCheckpoint(path)
  msg = str(e.value)
  assert "scale a.scale [2, 2] does not match a.weight [300, 200] (fp8_e4m3): expected the 128×128 block grid " \
         "[3, 2]" in msg, msg
  assert "b.w1.scale [4, 2] does not match b.w1.weight [4, 70] (fp4_e2m1): expected the 1×32 block grid [4, 3]" \
      in msg, msg
  assert "c.weight (F32 [4, 4]) has a scale c.weight_scale_inv" in msg, msg
  assert "scale d.scale of d.weight has dtype U8" in msg, msg


def test_truncated_file_is_named(qdir, tmp_path):
  src = qdir[0]
  for f in src.iterdir():
    data = f.read_bytes()
    (tmp_path / f.name).write_bytes(data[:len(data) - 10] if f.name.startswith("model-00002") else data)
  with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors.*truncated"):
    NativeCheckpoint(tmp_path)
