"""Test setup: 8 fake CPU devices, so pmap and sharding code runs without accelerators.

The flag must be set before jax is imported anywhere, which is why it lives here.
"""
import os
import tempfile

# Also the configs' CPU kernels (`diffusion_jax.xla_flags`: no YNNPACK fusions), so that tests
# running main.py in-process compile what `python main.py` compiles.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type="
).strip()
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One persistent compilation cache for the run, shared by both pytest-xdist workers and by every
# `main.py` subprocess that inherits this environment: a program compiled by one test (the tiny
# train step, its samplers) is loaded, not recompiled, by the next. Keyed by JAX on the program,
# the compiler options, XLA_FLAGS and the devices. A size bound turns on JAX's file lock around
# its reads and writes, so no process reads an entry another is still writing.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "diffusion_jax_test_compile_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 2**30))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_platforms", "cpu")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops JAX's compiled programs after each test file. Every XLA:CPU executable keeps a few
  memory mappings of its machine code; a worker that kept all of the suite's reached ~55,000 of
  the kernel's 65,530 (vm.max_map_count) and crashed in a later compile."""
  yield
  jax.clear_caches()
