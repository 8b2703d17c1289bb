"""Every test runs on 8 fake CPU devices; the flag must be set before JAX initialises its backend."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Test workers compile the same small models; share compiled executables across them and across runs.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
