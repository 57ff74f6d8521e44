"""diffusion_jax.xla_flags: the config's XLA flags reach XLA:CPU's compiler (checked on the
compiled HLO of a fresh process, where they can take effect) and never override the user's."""

import os
import subprocess
import sys

import pytest

from configs import cifar10, digits, tiny
from diffusion_jax import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_YNN = xla_flags.YNN_FUSION_FLAG + "="


def test_configs_turn_ynnpack_off_and_keep_the_users_flags():
  assert not any(c.get_config().xla_cpu_ynnpack for c in (cifar10, digits, tiny))
  assert xla_flags.with_config_flags("", ynnpack=False) == NO_YNN
  assert xla_flags.with_config_flags("--a=1", ynnpack=False) == f"--a=1 {NO_YNN}"
  assert xla_flags.with_config_flags("--a=1", ynnpack=True) == "--a=1"
  own = f"{xla_flags.YNN_FUSION_FLAG}=individual_dot"  # the user's choice wins
  assert xla_flags.with_config_flags(own, ynnpack=False) == own
  assert xla_flags.with_config_flags(NO_YNN, ynnpack=False) == NO_YNN  # applied twice: once


# After `import jax` and a config load (as in main.py), before the first computation.
_COMPILE_A_CONV = """
import jax, jax.numpy as jnp
from configs import {config}
from diffusion_jax import xla_flags
config = {config}.get_config()
config.xla_cpu_ynnpack = {ynnpack}
xla_flags.apply(config)
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
x, w = jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
print("YNN" if "ynn" in jax.jit(conv).lower(x, w).compile().as_text() else "NO_YNN")
"""


@pytest.mark.parametrize("config, ynnpack, expected", [("digits", False, "NO_YNN"),
                                                       ("cifar10", True, "YNN")])
def test_the_flag_reaches_the_cpu_compiler(config, ynnpack, expected):
  """False compiles the convolution without YNNPACK, True with it (jaxlib's default: if a
  jaxlib drops YNNPACK, the True case fails and the setting is to be revisited)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", _COMPILE_A_CONV.format(config=config, ynnpack=ynnpack)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300, check=True)
  assert out.stdout.split()[-1] == expected, out.stdout + out.stderr


def test_apply_after_the_backend_exists_leaves_xla_flags_alone(monkeypatch):
  """Too late to take effect, and JAX's compilation cache keys executables on XLA_FLAGS: a
  changed variable would file this process's executables under flags they were not built with."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(jax.numpy.ones(2) + 1)  # the backend exists
  monkeypatch.setenv("XLA_FLAGS", "--a=1")
  config = digits.get_config()
  xla_flags.apply(config)
  assert os.environ["XLA_FLAGS"] == "--a=1"
