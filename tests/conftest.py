"""Test setup: 8 fake CPU devices, so pmap and sharding code runs without accelerators.

The flag must be set before jax is imported anywhere, which is why it lives here.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
