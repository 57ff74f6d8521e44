"""Train-step throughput: our pmapped step vs the same-config PyTorch peer, same machine and run.

  python -m bench.train_step                          # digits (batch 64) and cifar10 (batch 8)
  python -m bench.train_step --configs=digits --steps=100 --rounds=3
  python -m bench.train_step --configs=digits --batch=128 --n_jitted_steps=4 [--rolled]
  python -m bench.train_step --configs=digits --xla_cpu_ynnpack=on   # jaxlib's CPU default
  python -m bench.train_step --malloc=tcmalloc        # both sides on tcmalloc (diffusion_jax.malloc)
  python -m bench.train_step --configs=digits --batch=128 --threads=1   # one thread each

Ours: `train.make_train_step` (U-Net forward/backward, L_simple, pmean, global-norm clipping,
Adam with warmup, EMA) pmapped over one CPU device. Peer: diffusers' `UNet2DModel` with the same
layout (`bench.peers`), the same loss on q_sample'd inputs, clip_grad_norm_,
torch.optim.Adam and an EMA update. Both see one fixed in-memory batch (no input pipeline) and
use the machine's cores, or --threads threads each (torch.set_num_threads; for ours XLA:CPU's
PJRT_NPROC, the size of its thread pools: 1 runs every operation on the calling thread). Ours
compiles with the config's XLA flags (`diffusion_jax.xla_flags`), as `main.py` does.

Each framework runs in its own subprocess (so its peak RSS is its own), alternating
ours / peer for --rounds rounds so that load from other processes hits both alike; a round
times --windows windows of --steps steps after a warm-up (compilation excluded) and keeps the
fastest window. The table gives the best round: steps/s, images/s, CPU seconds per step
(process time, robust to other processes' load), peak RSS, and ours / peer throughput.
--malloc picks the allocator of both workers: the system's (glibc) or tcmalloc, preloaded.

Peak RSS includes each runtime's fixed cost. "runtime RSS" is that cost alone: the peak RSS of a
worker that imports the same modules and runs one tiny computation (JAX: a jitted add; torch: a
1-channel conv), so "RSS - runtime" is what the step itself adds.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

from bench import common

BATCH = {"digits": 64, "cifar10": 8}


def _timed_windows(step, steps: int, windows: int, sync) -> tuple[float, float]:
  """Best (wall seconds, process CPU seconds) per step over `windows` windows."""
  best = (float("inf"), float("inf"))
  for _ in range(windows):
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
      step()
    sync()
    sample = ((time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps)
    best = min(best, sample)
  return best


def run_jax(name: str, batch: int, steps: int, windows: int, n_jitted_steps: int = 1,
            rolled: bool = False, ynnpack: str = "config") -> dict:
  from bench import peers

  config = peers.config(name)
  config.training.batch_size = batch
  common.apply_xla_flags(config, ynnpack)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from diffusion_jax import parallel, train  # pylint: disable=g-import-not-at-top

  mesh = parallel.make_mesh(jax.local_devices()[:1])
  _, step_fn, state, host_batch = common.train_setup(config, mesh)
  k = n_jitted_steps  # k steps per dispatch on k copies of the batch; timed per step
  p_step = train.pmap_train_step(
      train.make_multi_step(step_fn, k, unroll=False if rolled else None), mesh)
  batch_data = parallel.shard(train.stack_batches([host_batch] * k) if k > 1 else host_batch,
                              mesh)
  holder = {"state": state, "metrics": None}

  def step():
    holder["state"], holder["metrics"] = p_step(holder["state"], batch_data)

  start = time.perf_counter()
  step()
  jax.block_until_ready(holder["metrics"])
  compile_s = time.perf_counter() - start
  for _ in range(-(-3 // k)):
    step()
  wall, cpu = _timed_windows(step, max(1, steps // k), windows,
                             lambda: jax.block_until_ready(holder["state"].params))
  return {"wall_s": wall / k, "cpu_s": cpu / k, "compile_s": compile_s,
          "loss": float(np.asarray(holder["metrics"]["loss"]).reshape(-1)[-1]),
          "ynnpack": config.xla_cpu_ynnpack}


def run_torch(name: str, batch: int, steps: int, windows: int, threads: int) -> dict:
  import torch
  from bench import peers

  torch.set_num_threads(threads)
  config = peers.config(name)
  size, ch = config.data.image_size, config.data.num_channels
  train = peers.torch_train_step(config)
  x0 = torch.rand(batch, ch, size, size) * 2 - 1
  holder = {}

  def step():
    holder["loss"] = train(x0)

  start = time.perf_counter()
  step()
  compile_s = time.perf_counter() - start
  for _ in range(3):
    step()
  wall, cpu = _timed_windows(step, steps, windows, lambda: None)
  return {"wall_s": wall, "cpu_s": cpu, "compile_s": compile_s,
          "loss": float(holder["loss"].detach())}


def runtime_only(framework: str) -> dict:
  """The runtime's fixed cost: the imports of the worker and one tiny computation."""
  if framework == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    from diffusion_jax import parallel, train  # noqa: F401  pylint: disable=g-import-not-at-top
    jax.block_until_ready(jax.jit(lambda x: x + 1)(jax.numpy.ones(8)))
  else:
    import torch  # pylint: disable=g-import-not-at-top
    from bench import peers  # noqa: F401  pylint: disable=g-import-not-at-top
    torch.nn.functional.conv2d(torch.ones(1, 1, 8, 8), torch.ones(1, 1, 3, 3))
  return {}


def _worker(args) -> None:
  if args.worker.endswith("_runtime"):
    out = runtime_only(args.worker.split("_")[0])
  elif args.worker == "jax":
    out = run_jax(args.configs, args.batch, args.steps, args.windows, args.n_jitted_steps,
                  args.rolled, args.xla_cpu_ynnpack)
  else:
    out = run_torch(args.configs, args.batch, args.steps, args.windows, args.torch_threads)
  out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  common.emit_result(out)


def _spawn(framework: str, name: str, batch: int, args) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)  # one CPU device and the config's flags, as `python main.py` sees
  env.pop("LD_PRELOAD", None)
  env.pop("PJRT_NPROC", None)
  if args.threads:
    env["PJRT_NPROC"] = str(args.threads)  # XLA:CPU's thread-pool size (jaxlib 0.10)
  if args.malloc == "tcmalloc":
    env["LD_PRELOAD"] = _tcmalloc()
  return common.run_worker(
      ["-m", "bench.train_step", f"--worker={framework}", f"--configs={name}", f"--batch={batch}",
       f"--steps={args.steps}", f"--windows={args.windows}",
       f"--n_jitted_steps={args.n_jitted_steps}", *(["--rolled"] if args.rolled else []),
       f"--xla_cpu_ynnpack={args.xla_cpu_ynnpack}",
       f"--torch_threads={args.threads or args.torch_threads}"], env, what=f"{framework} worker")


def _tcmalloc() -> str:
  from diffusion_jax import malloc  # pylint: disable=g-import-not-at-top
  library = malloc.find_tcmalloc()
  if library is None:
    raise SystemExit("--malloc=tcmalloc: tcmalloc is not installed (apt install "
                     "libtcmalloc-minimal4).")
  return library


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="digits,cifar10")
  parser.add_argument("--batch", type=int, default=0, help="0 = digits 64, cifar10 8")
  parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--threads", type=int, default=0,
                      help="both sides on this many threads (0: torch --torch_threads, ours all "
                      "cores)")
  parser.add_argument("--n_jitted_steps", type=int, default=1,
                      help="ours: steps per dispatch (train.make_multi_step); timed per step")
  parser.add_argument("--rolled", action="store_true",
                      help="with --n_jitted_steps > 1: a rolled scan, also on CPU")
  parser.add_argument("--xla_cpu_ynnpack", choices=common.YNNPACK_CHOICES, default="config",
                      help="ours: XLA:CPU's YNNPACK fusions as the config sets them "
                      "(diffusion_jax.xla_flags), or on / off")
  parser.add_argument("--malloc", choices=["system", "tcmalloc"], default="system",
                      help="both workers' allocator: the system's or tcmalloc (LD_PRELOAD)")
  parser.add_argument("--worker", choices=["jax", "torch", "jax_runtime", "torch_runtime"],
                      default=None)
  args = parser.parse_args()
  if args.worker:
    _worker(args)
    return

  runtime = {f: _spawn(f"{f}_runtime", "digits", 1, args)["peak_rss_mb"] for f in ("jax", "torch")}
  rows = []
  for name in args.configs.split(","):
    batch = args.batch or BATCH.get(name, 8)
    best = {}
    for _ in range(args.rounds):
      for framework in ("jax", "torch"):
        r = _spawn(framework, name, batch, args)
        print(f"  {name} {framework}: {batch / r['wall_s']:.1f} img/s, "
              f"{r['cpu_s'] * 1e3:.0f} ms CPU/step, RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        if framework not in best or r["wall_s"] < best[framework]["wall_s"]:
          best[framework] = r
    rows.append((name, batch, best["jax"], best["torch"]))

  threads = args.threads or f"torch {args.torch_threads}, ours all cores"
  print(f"\nmalloc: {args.malloc}; threads: {threads}; runtime RSS (imports + a tiny computation): "
        f"jax {runtime['jax']:.0f} MB, torch {runtime['torch']:.0f} MB")
  print(f"{'config':8} {'batch':>5} {'impl':24} {'steps/s':>8} {'img/s':>8} {'CPU ms/step':>11} "
        f"{'peak RSS MB':>11} {'RSS - runtime':>13} {'1st step s':>10} {'ours/peer':>9}")
  for name, batch, ours, peer in rows:
    ours_label = ("ours" + (f", k={args.n_jitted_steps}" if args.n_jitted_steps > 1 else "")
                  + (" rolled" if args.rolled else "")
                  + (", YNNPACK" if ours["ynnpack"] else ", no YNNPACK"))
    for label, r, base in ((ours_label, ours, runtime["jax"]),
                           ("diffusers + torch", peer, runtime["torch"])):
      ratio = f"{peer['wall_s'] / ours['wall_s']:.2f}x" if r is ours else ""
      print(f"{name:8} {batch:5d} {label:24} {1 / r['wall_s']:8.2f} {batch / r['wall_s']:8.1f} "
            f"{r['cpu_s'] * 1e3:11.1f} {r['peak_rss_mb']:11.0f} {r['peak_rss_mb'] - base:13.0f} "
            f"{r['compile_s']:10.1f} {ratio:>9}")


if __name__ == "__main__":
  main()
