"""Benchmark: FID Inception features/s, our Flax port vs torch-fidelity's PyTorch port.

Both networks hold the same random weights (converted from the torch model, no download) and
see the same uint8 batch (32x32 by default, so the TF1 resize to 299 is included), on the same
machine in the same run. Prints a table with features/s and the ratio, plus the max deviation
of pool3 between the two (a sanity check that the same computation is timed).

  python bench/inception.py --batch_size=8 --iters=3 --image_size=32

Needs torch and `pip install --no-deps torch-fidelity==0.4.0` (requirements-test.txt).
"""
import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from diffusion_jax.evaluation import inception  # noqa: E402
import inception_test  # noqa: E402  (the torch-fidelity loader shared with the tests)
import torch  # noqa: E402


def _time(fn, iters):
  fn()  # warm-up (and compile)
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times), float(np.median(times))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--image_size", type=int, default=32)
  args = parser.parse_args()

  model = inception_test.torch_fidelity_random_model()
  variables = jax.device_put(inception.convert_torch_state_dict(model.state_dict()))
  images = np.random.default_rng(0).integers(
      0, 256, size=(args.batch_size, args.image_size, args.image_size, 3), dtype=np.uint8)
  images_t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  rows = []
  with torch.no_grad():
    ref = model(images_t)[0].numpy()
    t_torch = _time(lambda: model(images_t), args.iters)
  rows.append(("torch-fidelity (PyTorch %s)" % torch.__version__, t_torch, None))
  for name, prec in (("flax, precision=HIGHEST", jax.lax.Precision.HIGHEST),
                     ("flax, precision=DEFAULT", jax.lax.Precision.DEFAULT)):
    fn = jax.jit(lambda v, x, p=prec: inception.inception_forward(v, x, precision=p))
    x = jax.device_put(images)
    out = np.asarray(fn(variables, x)["pool3"])
    err = np.abs(out - ref).max() / np.abs(ref).max()
    rows.append((name, _time(lambda: jax.block_until_ready(fn(variables, x)), args.iters), err))

  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} (jax {jax.__version__}), "
        f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
        f"{args.image_size}x{args.image_size} uint8 -> 299, best/median of {args.iters}")
  print(f"| {'implementation':32s} | features/s (best) | features/s (median) | vs torch | "
        f"pool3 max rel. dev. |")
  print("|" + "---|" * 5)
  base = args.batch_size / t_torch[0]
  for name, (best, med), err in rows:
    fps = args.batch_size / best
    print(f"| {name:32s} | {fps:17.2f} | {args.batch_size / med:19.2f} | {fps / base:7.2f}x | "
          f"{'-' if err is None else f'{err:.1e}':>18s} |")


if __name__ == "__main__":
  main()
