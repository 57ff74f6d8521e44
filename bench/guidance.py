"""Guidance on the exact oracle: class purity and spread of guided samples against the scale.

  python -m bench.guidance                                  # ~1 minute on 2 cores
  python -m bench.guidance --scales=0,1,2,4,10 --per_class=4000

Data: a 2-D mixture of three overlapping Gaussians, one per class (means 0.4 (cos, sin) of 0,
120 and 240 degrees, stds 0.25 / 0.2 / 0.3, weights 0.5 / 0.3 / 0.2), T = 1000 linear. The
unconditional model is the exact E[eps | x_t], the classifier the exact p(y | x_t), and the
classifier-free model the exact E[eps | x_t, y] with the null label K, so every difference
between the rows is the guidance itself (and the sampler's discretization, the same in a column).

purity: the fraction of samples of class y whose Bayes class under the clean data, argmax_k
  w_k N(x; mu_k, s_k^2 I), is y, averaged over the classes; the true p(x | y) gives the "exact"
  row. spread: the per-dimension standard deviation of each class's samples, averaged over the
  classes (exact: the mean of the stds). Scale 0 is unguided (the unconditional mixture, so its
  purity is the class weight).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import guidance, schedules
from diffusion_jax.gaussian_mixture import GaussianMixture
from diffusion_jax.samplers import ancestral, ddim

T = 1000
ANGLES = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
MEANS = 0.4 * np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=-1)
WEIGHTS, STDS = np.array([0.5, 0.3, 0.2]), np.array([0.25, 0.2, 0.3])


def purity_spread(x: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
  """(class-averaged purity, class-averaged per-dimension std) of samples x [N, 2]."""
  resid = x[:, None, :] - MEANS[None]
  log_joint = np.log(WEIGHTS) - np.sum(resid**2, -1) / (2 * STDS**2) - 2 * np.log(STDS)
  classes = range(len(WEIGHTS))
  purity = np.mean([np.mean(log_joint[labels == k].argmax(-1) == k) for k in classes])
  spread = np.mean([x[labels == k].std(0).mean() for k in classes])
  return float(purity), float(spread)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--scales", default="0,1,2,4,10")
  parser.add_argument("--per_class", type=int, default=2000)
  parser.add_argument("--ddim_steps", type=int, default=100)
  args = parser.parse_args()
  scales = [float(s) for s in args.scales.split(",")]
  k = len(WEIGHTS)
  sched = schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear", T))
  mixture = GaussianMixture.create(WEIGHTS, MEANS, STDS)
  eps_fn, cls_fn, cond_fn = (mixture.eps_model_fn(sched), mixture.class_logits_fn(sched),
                             mixture.cond_eps_model_fn(sched))
  # Every (class, scale) pair in one batch: per-example labels and scales.
  labels = jnp.tile(jnp.repeat(jnp.arange(k, dtype=jnp.int32), args.per_class), len(scales))
  scale = jnp.repeat(jnp.asarray(scales, jnp.float32), k * args.per_class)
  shape, key = (labels.shape[0], 2), jax.random.PRNGKey(0)
  ddim_run = lambda fn: ddim.ddim_sample_loop(fn, sched, shape, key, num_steps=args.ddim_steps,
                                              clip_denoised=False)
  methods = {
      "classifier, eps form (Alg. 2), DDIM": lambda: ddim_run(
          guidance.classifier_guidance(eps_fn, cls_fn, sched, labels, scale=scale, form="eps")),
      "classifier, mean shift (Alg. 1), ancestral": lambda: ancestral.p_sample_loop(
          guidance.classifier_guidance(eps_fn, cls_fn, sched, labels, scale=scale, form="mean_shift"),
          sched, shape, key, clip_denoised=False),
      "classifier-free, DDIM": lambda: ddim_run(
          guidance.classifier_free_guidance(cond_fn, labels, scale=scale, null_label=k)),
  }
  x_true, y_true = mixture.sample(jax.random.PRNGKey(1), 200_000)
  exact = purity_spread(np.asarray(x_true), np.asarray(y_true))
  rows = {}
  for name, run in methods.items():
    start = time.time()
    x = np.asarray(jax.jit(run)()).reshape(len(scales), -1, 2)
    y = np.asarray(labels).reshape(len(scales), -1)
    rows[name] = [purity_spread(x[i], y[i]) for i in range(len(scales))]
    print(f"# {name}: {time.time() - start:.1f} s", flush=True)
  print(f"\nT = {T} linear, {args.per_class} samples per class and scale, DDIM {args.ddim_steps} steps; "
        f"exact p(x | y): purity {exact[0]:.3f}, spread {exact[1]:.3f}\n")
  print("| guidance, sampler | " + " | ".join(f"s = {s:g}" for s in scales) + " |")
  print("|---|" + "---|" * len(scales))
  for name, stats in rows.items():
    print(f"| {name}: purity | " + " | ".join(f"{p:.3f}" for p, _ in stats) + " |")
    print(f"| {name}: spread | " + " | ".join(f"{s:.3f}" for _, s in stats) + " |")


if __name__ == "__main__":
  main()
