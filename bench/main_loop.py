"""The whole training loop as a user runs it: `main.py` against a diffusers + torch loop.

  python -m bench.main_loop                                  # digits, batch 128, 600 steps
  python -m bench.main_loop --batch=64 --steps=600 --rounds=2

Ours: `python main.py --config=configs/digits.py` in a subprocess, as the README runs it (input
pipeline, the pmapped step, EMA, clu's logging and progress report every 100 steps, an Orbax
checkpoint at the end), with the final sample-quality evaluation and the sample grids off.
Throughput comes from clu's logged `steps_per_sec` after the first report (which includes
compilation). Peer: diffusers' `UNet2DModel` of the same layout (`bench.peers`) in a plain torch
loop over the same scikit-learn digits (numpy shuffle per epoch, uniform t, q_sample, L_simple,
clip_grad_norm_, Adam with warmup, EMA, the loss read back every 100 steps, a `torch.save` at
the end), on all cores; its throughput is over the same steps (100 to the end).

Both run alternately for --rounds rounds in fresh processes on the same allocator choice as
`main.py` makes (tcmalloc when installed, see `diffusion_jax.malloc`); the table gives each
side's best round, its wall time for the whole process, and its peak RSS.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

from bench import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_EVERY = 100


def run_ours(batch: int, steps: int) -> dict:
  """Runs main.py; returns steps/s after the first log report, wall seconds and peak RSS."""
  with tempfile.TemporaryDirectory() as workdir:
    command = [sys.executable, "main.py", "--config=configs/digits.py", f"--workdir={workdir}",
               f"--config.training.batch_size={batch}",
               f"--config.training.num_train_steps={steps}",
               f"--config.training.log_every_steps={LOG_EVERY}",
               f"--config.training.checkpoint_every_steps={steps}",
               "--config.training.sample_every_steps=0",
               "--config.eval.sample_quality_at_end=False"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="1")
    env.pop("XLA_FLAGS", None)
    with tempfile.TemporaryFile("w+") as log:
      start = time.perf_counter()
      proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
      _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
      wall = time.perf_counter() - start
      log.seek(0)
      output = log.read()
  if os.waitstatus_to_exitcode(status):
    raise SystemExit(f"main.py failed:\n{output[-3000:]}")
  rates = [float(r) for r in re.findall(r"steps_per_sec=([0-9.]+)", output)]
  if len(rates) < 2:
    raise SystemExit(f"main.py logged {len(rates)} steps_per_sec values; need at least 2.")
  timed = rates[1:]  # the first report includes compilation
  steps_per_s = len(timed) * LOG_EVERY / sum(LOG_EVERY / r for r in timed)
  peak = usage.ru_maxrss / 1024
  return {"steps_per_s": steps_per_s, "wall_s": wall, "peak_rss_mb": peak}


def run_torch(batch: int, steps: int, threads: int) -> dict:
  """The peer loop (see the module docstring); measured inside its own process."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from bench import peers  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  images = datasets.load_digits().images.astype(np.float32)  # [N, 8, 8], values 0..16
  data = torch.from_numpy(images / 8.0 - 1.0)[:, None]  # [-1, 1], NCHW
  train = peers.torch_train_step(peers.config("digits"), warmup=True)
  rng = np.random.default_rng(0)
  order, cursor = rng.permutation(len(data)), 0
  marks = {}
  for step in range(1, steps + 1):
    if cursor + batch > len(order):
      order, cursor = rng.permutation(len(data)), 0
    x0 = data[torch.from_numpy(order[cursor:cursor + batch])]
    cursor += batch
    loss = train(x0)
    if step % LOG_EVERY == 0:
      print(f"step {step} loss {float(loss.detach()):.4f}", flush=True)  # a host sync, as ours
      marks[step] = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    state = train.state
    torch.save({"params": state["model"].state_dict(), "ema": state["ema"],
                "opt": state["opt"].state_dict()},
               os.path.join(workdir, "checkpoint.pt"))
  timed = steps - LOG_EVERY
  return {"steps_per_s": timed / (marks[steps] - marks[LOG_EVERY]),
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _spawn_torch(args) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  from diffusion_jax import malloc  # pylint: disable=g-import-not-at-top
  library = malloc.find_tcmalloc()
  if library is not None and os.environ.get(malloc.OPT_OUT) != "system":
    env["LD_PRELOAD"] = library  # the allocator main.py picks, for a like-for-like comparison
  start = time.perf_counter()
  row = common.run_worker(
      ["-m", "bench.main_loop", "--worker=torch", f"--batch={args.batch}",
       f"--steps={args.steps}", f"--torch_threads={args.torch_threads}"], env,
      what="torch loop")
  return dict(row, wall_s=time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--worker", choices=["torch"], default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.steps < 2 * LOG_EVERY or args.steps % LOG_EVERY:
    parser.error(f"--steps must be a multiple of {LOG_EVERY}, at least {2 * LOG_EVERY}.")
  if args.worker:
    common.emit_result(run_torch(args.batch, args.steps, args.torch_threads))
    return
  from diffusion_jax import malloc  # pylint: disable=g-import-not-at-top
  ours, peer = [], []
  for _ in range(args.rounds):
    ours.append(run_ours(args.batch, args.steps))
    peer.append(_spawn_torch(args))
  best_ours = max(ours, key=lambda r: r["steps_per_s"])
  best_peer = max(peer, key=lambda r: r["steps_per_s"])
  tcmalloc = malloc.find_tcmalloc() and os.environ.get(malloc.OPT_OUT) != "system"
  print(f"digits, batch {args.batch}, {args.steps} steps, {args.rounds} rounds, both on "
        f"{'tcmalloc' if tcmalloc else 'the system malloc'}, torch threads {args.torch_threads}\n")
  print("| loop | steps/s | ours / torch | whole process s | peak RSS MB |")
  print("|---|---:|---:|---:|---:|")
  for name, row in (("main.py (ours)", best_ours), ("diffusers + torch loop", best_peer)):
    ratio = best_ours["steps_per_s"] / best_peer["steps_per_s"]
    print(f"| {name} | {row['steps_per_s']:.2f} | {ratio if row is best_ours else 1.0:.2f} | "
          f"{row['wall_s']:.1f} | {row['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
  main()
