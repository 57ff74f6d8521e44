"""Launch one training run as N processes on this machine, and compare it with one process.

  python -m bench.multihost                                  # 1 x 2 devices vs 2 x 1, tiny
  python -m bench.multihost --layouts=1x4,2x2,4x1 --steps=20 --config=configs/digits.py

Each layout PxD starts P processes of
  python main.py --config=CONFIG --workdir=ROOT/PxD --jax_distributed \\
      --coordinator_address=localhost:PORT --num_processes=P --process_id=i
with D fake CPU devices each (XLA_FLAGS=--xla_force_host_platform_device_count=D; CPU
collectives over gloo). The table gives the wall time and the largest difference of the final
EMA parameters from the first layout's: the same global batch, per-example randomness and
gradient average make them equal up to float rounding of the cross-device sum
(tests/multihost_test.py checks the same with dropout on).

The same main.py command runs on real hardware:
- a TPU pod slice: on every host, `python main.py --config=... --workdir=gs://... --jax_distributed`
  (e.g. `gcloud compute tpus tpu-vm ssh NAME --worker=all --command="..."`); JAX finds its peers;
- several GPU hosts: one process per host (or per GPU) with --jax_distributed and, outside
  SLURM/Open MPI (which JAX detects), --coordinator_address=HOST0:PORT --num_processes=N
  --process_id=i; the workdir must be shared storage;
- one machine with several GPUs: a single process sees them all (no flag needed).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_layout(processes: int, devices: int, args) -> dict:
  workdir = os.path.join(args.workdir_root, f"{processes}x{devices}")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  port = _free_port()
  command = [sys.executable, "main.py", f"--config={args.config}", f"--workdir={workdir}",
             f"--config.training.num_train_steps={args.steps}",
             f"--config.training.checkpoint_every_steps={args.steps}",
             "--config.training.sample_every_steps=0", *args.overrides]
  if processes > 1:
    command += ["--jax_distributed", f"--coordinator_address=localhost:{port}",
                f"--num_processes={processes}"]
  start = time.time()
  procs = [subprocess.Popen(command + ([f"--process_id={i}"] if processes > 1 else []),
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True) for i in range(processes)]
  errors = [p.communicate()[1] for p in procs]
  for p, err in zip(procs, errors):
    if p.returncode:
      raise RuntimeError(f"{processes}x{devices} failed:\n{err[-3000:]}")
  from diffusion_jax import checkpointing  # pylint: disable=g-import-not-at-top
  ema, _ = checkpointing.restore_ema_params(workdir, args.steps)
  return {"layout": f"{processes} x {devices}", "seconds": time.time() - start, "ema": ema}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/tiny.py")
  parser.add_argument("--layouts", default="1x2,2x1", help="PxD: processes x devices each")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--workdir_root", default="/tmp/diffusion_jax_multihost")
  parser.add_argument("overrides", nargs="*", help="extra --config.x=y flags")
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  print("| processes x devices | wall s (incl. start-up) | max abs EMA difference to the first |")
  print("|---|---|---|")
  first = None
  for layout in args.layouts.split(","):
    processes, devices = (int(n) for n in layout.split("x"))
    r = run_layout(processes, devices, args)
    first = first or r["ema"]
    diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                            r["ema"], first)))
    print(f"| {r['layout']} | {r['seconds']:.1f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
  main()
