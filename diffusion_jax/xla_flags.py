"""The XLA flags a config asks for, set in XLA_FLAGS before JAX creates its backend.

XLA reads XLA_FLAGS once, when JAX creates its first backend (the first array or compile, not
`import jax`), so `main.py` calls `apply` before that; in a notebook, call it (or set
XLA_FLAGS) before the first computation. A flag already in XLA_FLAGS is left as the user gave it.

`config.xla_cpu_ynnpack = False` turns off XLA:CPU's YNNPACK library fusions (jaxlib 0.10's
default for convolutions, dots and the elementwise ops around them), so that XLA's own fused
loops and Eigen's convolutions run instead. On the 8x8 digits U-Net that made the train step
1.38x faster on 2 cores; on the CIFAR-10 model at batch 8 the two were even
(`python -m bench.train_step --xla_cpu_ynnpack=on|off`, README). The flag is XLA:CPU's only.
"""

from __future__ import annotations

import os

import ml_collections

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def with_config_flags(xla_flags: str, *, ynnpack: bool) -> str:
  """`xla_flags` plus the flags the config asks for; a flag the user gave is kept as given."""
  if ynnpack or YNN_FUSION_FLAG in xla_flags:
    return xla_flags
  return f"{xla_flags} {YNN_FUSION_FLAG}=".strip()  # empty list: no YNNPACK fusion at all


def apply(config: ml_collections.ConfigDict) -> None:
  """Sets os.environ["XLA_FLAGS"] for `config`; call it before JAX's first computation."""
  os.environ["XLA_FLAGS"] = with_config_flags(os.environ.get("XLA_FLAGS", ""),
                                              ynnpack=config.xla_cpu_ynnpack)
