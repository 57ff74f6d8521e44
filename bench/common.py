"""What the throughput benchmarks share: one worker subprocess per measurement, and our train
step on one fixed in-memory batch (no input pipeline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PREFIX = "RESULT "


def emit_result(row: dict) -> None:
  """Worker side: hands `row` to `run_worker` on stdout."""
  print(_PREFIX + json.dumps(row), flush=True)


def run_worker(args: list[str], env: dict, *, what: str, timeout: Optional[float] = None) -> dict:
  """Runs `python <args>` from the repository root and returns the row it emitted.

  Raises:
    RuntimeError: the worker emitted no row (its stderr tail in the message).
    subprocess.TimeoutExpired: past `timeout` seconds.
  """
  proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                        cwd=ROOT, timeout=timeout)
  for line in proc.stdout.splitlines():
    if line.startswith(_PREFIX):
      return json.loads(line[len(_PREFIX):])
  raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


YNNPACK_CHOICES = ("config", "on", "off")  # a benchmark's --xla_cpu_ynnpack


def apply_xla_flags(config, ynnpack: str = "config") -> None:
  """Sets the XLA flags of `config` (YNNPACK "on" / "off" overriding it) as `main.py` does;
  call it before JAX's first computation."""
  from diffusion_jax import xla_flags  # pylint: disable=g-import-not-at-top
  if ynnpack != "config":
    config.xla_cpu_ynnpack = ynnpack == "on"
  xla_flags.apply(config)


def train_setup(config, mesh):
  """Our trainer's pieces for a benchmark of its step on `mesh`.

  Returns:
    (model, step_fn, replicated state, host batch): `train.make_train_step`'s per-device step,
    the state of `experiment.init_train_state`, and one fixed batch of uniform noise images
    [local_devices, per_device, H, W, C] (labels 0) for `parallel.shard`.
  """
  import jax  # pylint: disable=g-import-not-at-top  (the driver side does not import jax)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from diffusion_jax import experiment, parallel, train, train_state  # pylint: disable=g-import-not-at-top
  model, diffusion_ = experiment.create_model(config), experiment.create_diffusion(config)
  tx = train_state.make_optimizer(config)
  state = parallel.replicate(jax.device_get(experiment.init_train_state(config, model, tx)), mesh)
  layout = parallel.batch_layout(config.training.batch_size, mesh)
  shape = (layout.local_devices, layout.per_device)
  size, ch = config.data.image_size, config.data.num_channels
  image = np.random.default_rng(0).uniform(-1, 1, shape + (size, size, ch)).astype(np.float32)
  batch = {"image": image, "label": np.zeros(shape, np.int32)}
  return model, train.make_train_step(config, model, diffusion_, tx), state, batch
