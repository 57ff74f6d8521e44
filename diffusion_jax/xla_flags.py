"""The XLA flags a config asks for, set in XLA_FLAGS before JAX creates its backend.

XLA reads XLA_FLAGS once, when JAX creates its first backend (the first array or compile, not
`import jax`), so `main.py` calls `apply` before that; in a notebook, call it (or set
XLA_FLAGS) before the first computation. A flag already in XLA_FLAGS is left as the user gave it.

`config.xla_cpu_ynnpack = False` (the default) turns off XLA:CPU's YNNPACK library fusions
(jaxlib 0.10's default for convolutions, dots and the elementwise ops around them), so that XLA's
own fused loops and Eigen's convolutions run instead: on 2 cores the train step was faster
without YNNPACK for the digits model (1.38x at batch 128) and for the CIFAR-10 model (1.31x at
batch 8: 0.59 against 0.45 steps/s; 0.73 against 0.49 in a later session),
`python -m bench.train_step --xla_cpu_ynnpack=on|off` (README). True keeps jaxlib's choice. The flag is XLA:CPU's only.
"""

from __future__ import annotations

import os

from absl import logging
import ml_collections

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def with_config_flags(xla_flags: str, *, ynnpack: bool) -> str:
  """`xla_flags` plus the flags the config asks for; a flag the user gave is kept as given."""
  if ynnpack or YNN_FUSION_FLAG in xla_flags:
    return xla_flags
  return f"{xla_flags} {YNN_FUSION_FLAG}=".strip()  # empty list: no YNNPACK fusion at all


def apply(config: ml_collections.ConfigDict) -> None:
  """Sets os.environ["XLA_FLAGS"] for `config`; call it before JAX's first computation.

  Once the backend exists, XLA no longer reads XLA_FLAGS, so this only warns and leaves the
  variable as it is: JAX's persistent compilation cache keys executables on it, and a key that
  names flags the compiler never saw would hand this process's executables to processes that
  run with those flags.
  """
  current = os.environ.get("XLA_FLAGS", "")
  wanted = with_config_flags(current, ynnpack=config.xla_cpu_ynnpack)
  if wanted == current:
    return
  if _backend_exists():
    logging.warning("XLA flags %r not applied: JAX's backend already exists; set XLA_FLAGS "
                    "before the first computation.", wanted[len(current):].strip())
    return
  os.environ["XLA_FLAGS"] = wanted


def _backend_exists() -> bool:
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top  (no public API for it)
  return xla_bridge.backends_are_initialized()
