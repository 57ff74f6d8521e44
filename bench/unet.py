"""U-Net speed: our Flax UNet (jit) against diffusers' UNet2DModel (PyTorch), same run, same weights.

  python -m bench.unet                       # configs/cifar10.py (35.7M) and configs/digits.py
  python -m bench.unet --configs=digits --batch=128 --reps=10
  python -m bench.unet --dtypes=float32,bfloat16   # also time our bf16 compute
  python -m bench.unet --xla_cpu_ynnpack=on         # XLA:CPU's YNNPACK fusions (jaxlib's default)

For each config (a file of configs/, `bench.peers`) the diffusers model is built with the same
layout, its random weights are
converted into our parameters (so both networks compute the same function; the max output
difference is printed), and each measurement alternates ours / theirs so that load from other
processes hits both alike. Reported: median wall time per call in ms and ratio = ours / torch
(< 1: we are faster), against the fastest of the torch thread counts tried (on a shared
machine torch's OpenMP threads slow down badly when other processes hold the cores). "fwd" is eval mode without gradients; "fwd+bwd" is a training step's
gradient computation (train mode with the config's dropout, MSE loss against a fixed target,
gradients w.r.t. all parameters; no optimizer update on either side).

Results and their discussion: README.md ("Speed and memory on CPU against PyTorch").
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import xla_flags


def _time(fn, reps):
  out = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def bench_config(name, *, batch, reps, dtypes, torch_threads):
  import torch
  from bench import peers

  cfg = peers.config(name)
  tmodel = peers.diffusers_unet(cfg)
  nparams = sum(p.numel() for p in tmodel.parameters())
  size, channels = cfg.data.image_size, cfg.data.num_channels

  rng = np.random.RandomState(0)
  x = rng.randn(batch, channels, size, size).astype(np.float32)
  target = rng.randn(*x.shape).astype(np.float32)
  t = rng.randint(0, 1000, batch)
  xt, tt, target_t = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(target)
  xj, tj = jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t, jnp.int32)
  target_j = jnp.asarray(target.transpose(0, 2, 3, 1))

  def torch_fwd():
    tmodel.eval()
    with torch.no_grad():
      return tmodel(xt, tt).sample

  def torch_train():
    tmodel.train()
    tmodel.zero_grad(set_to_none=True)
    loss = ((tmodel(xt, tt).sample - target_t) ** 2).mean()
    loss.backward()
    return loss

  rows = []
  for dtype in dtypes:
    model, params = peers.ours_from(tmodel, cfg, dtype=dtype)
    fwd = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))

    def loss_fn(p, x, t, key):
      out = model.apply({"params": p}, x, t, train=True, rngs={"dropout": key})
      return jnp.mean((out - target_j) ** 2)

    grad = jax.jit(jax.value_and_grad(loss_fn))
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    ours_out = fwd(params, xj, tj).block_until_ready()
    compile_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(grad(params, xj, tj, key))
    compile_grad = time.perf_counter() - t0
    ref = torch_fwd().numpy().transpose(0, 2, 3, 1)
    maxdiff = float(np.abs(np.asarray(ours_out) - ref).max())
    torch_train()  # warm-up

    for mode, ours_fn, torch_fn in (
        ("fwd", lambda: fwd(params, xj, tj).block_until_ready(), torch_fwd),
        ("fwd+bwd", lambda: jax.block_until_ready(grad(params, xj, tj, key)), torch_train)):
      ours_t, torch_t = [], {n: [] for n in torch_threads}
      for _ in range(reps):  # alternate, so background load hits both alike
        ours_t += _time(ours_fn, 1)
        for n in torch_threads:
          torch.set_num_threads(n)
          torch_t[n] += _time(torch_fn, 1)
      o = statistics.median(ours_t)
      r = {n: statistics.median(v) for n, v in torch_t.items()}
      best = min(r.values())
      rows.append((name, f"{nparams / 1e6:.1f}M", batch, mode, str(jnp.dtype(dtype)), o * 1e3,
                   " / ".join(f"{r[n] * 1e3:.1f}" for n in torch_threads), o / best, maxdiff,
                   compile_fwd if mode == "fwd" else compile_grad))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="cifar10,digits", help="files of configs/")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--dtypes", default="float32")
  parser.add_argument("--torch_threads", default=f"1,{os.cpu_count()}",
                      help="torch intra-op thread counts to time; the ratio uses the fastest")
  parser.add_argument("--xla_cpu_ynnpack", choices=("on", "off"), default="off",
                      help="XLA:CPU's YNNPACK fusions (diffusion_jax.xla_flags): off as the "
                      "configs set it, or on (jaxlib's default)")
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = xla_flags.with_config_flags(  # before the first computation
      os.environ.get("XLA_FLAGS", ""), ynnpack=args.xla_cpu_ynnpack == "on")

  import torch
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), cpus={os.cpu_count()}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  head = ("config", "params", "batch", "mode", "ours dtype", "ours ms",
          f"torch ms ({args.torch_threads.replace(',', ' / ')} thr)", "ours/best torch",
          "max|diff|", "ours compile s")
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head), flush=True)
  for name in args.configs.split(","):
    rows = bench_config(name, batch=args.batch, reps=args.reps,
                        dtypes=args.dtypes.split(","),
                        torch_threads=[int(n) for n in args.torch_threads.split(",")])
    for r in rows:
      print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.1f} | {r[6]} | "
            f"{r[7]:.2f} | {r[8]:.1e} | {r[9]:.1f} |", flush=True)


if __name__ == "__main__":
  main()
