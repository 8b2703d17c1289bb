"""Building blocks shared by the target and the drafters: parameters with logical axes, linear maps,
RMSNorm in fp32, and the clamped SwiGLU MLP.

Parameters carry *logical* axis names (`embed`, `mlp`, `heads`, `exp`, `vocab`, ...) as their NNX
`out_sharding` metadata; one rules table (dsv4.parallel) maps them to mesh axes. Model code never
names a mesh axis. Eager sharding is off so a model can be built with or without a mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.kernels.tiled_moe import clamped_swiglu  # noqa: F401  (importable here as before)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class FrozenState(nnx.Variable):
  """Non-trainable model state (router balancing bias, hash tables): the optimizer never sees it."""


class KeySeq:
  """Parameter keys as fold_in(base, i) with a Python counter.

  Drawing every key from nnx.Rngs mutates its counter variable; under a trace (eval_shape, a sharded jit init)
  each mutation re-inspects the growing trace, which made building V4-Pro abstractly take minutes. Modules only
  call `.params()`, so this is a drop-in for them.
  """

  def __init__(self, key):
    self.key, self.count = key, 0

  def params(self):
    self.count += 1
    return jax.random.fold_in(self.key, self.count)


def param(rngs: nnx.Rngs | KeySeq | None, shape, axes, dtype=jnp.float32, init: str = "normal", std: float = 0.02):
  """A parameter with logical `axes`; `init` is normal(std) | zeros | ones."""
  assert len(axes) == len(shape), (shape, axes)
  if init == "normal":
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == "zeros":
    value = jnp.zeros(shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    raise ValueError(f"unknown init {init!r}")
  return nnx.Param(value.astype(dtype), out_sharding=tuple(axes), eager_sharding=False)


def rms_normalize(x, eps: float):
  """x / rms(x) over the last axis, computed in fp32 and returned in fp32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
  """Weighted RMSNorm; statistics and the weight multiply in fp32, one cast at the end."""

  def __init__(self, dim: int, eps: float, axis_name: str = "norm"):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=(axis_name,), eager_sharding=False)

  def __call__(self, x):
    return (self.weight[...] * rms_normalize(x, self.eps)).astype(x.dtype)


class Linear(nnx.Module):
  """y = x @ kernel, kernel [in, out] with logical axes; no bias (V4 has none)."""

  def __init__(self, d_in: int, d_out: int, axes, *, rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               std: float = 0.02):
    self.kernel = param(rngs, (d_in, d_out), axes, param_dtype, std=std)
    self.dtype = dtype

  def __call__(self, x):
    return jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))


class SwiGLU(nnx.Module):
  """The shared expert: a dense clamped-SwiGLU MLP."""

  def __init__(self, d_model: int, d_ff: int, limit: float, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.gate_proj = Linear(d_model, d_ff, ("embed", "mlp"), **kw)
    self.up_proj = Linear(d_model, d_ff, ("embed", "mlp"), **kw)
    self.down_proj = Linear(d_ff, d_model, ("mlp", "embed"), **kw)
    self.limit = limit

  def __call__(self, x_BTD):
    return self.down_proj(clamped_swiglu(self.gate_proj(x_BTD), self.up_proj(x_BTD), self.limit))
