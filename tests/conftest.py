"""Test setup: 8 fake CPU devices, so pmap and sharding code runs without accelerators.

The flag must be set before jax is imported anywhere, which is why it lives here.
"""
import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One persistent compilation cache for the run, shared by both pytest-xdist workers and by every
# `main.py` subprocess that inherits this environment: a program compiled by one test (the tiny
# train step, its samplers) is loaded, not recompiled, by the next. Keyed by JAX on the program,
# the compiler options and the devices, so a cached executable is the one a compile would give.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "diffusion_jax_test_compile_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
