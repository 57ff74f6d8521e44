"""Trains the fixed digits classifier whose features define the digits Frechet distance.

  python -m diffusion_jax.evaluation.train_digits_classifier [--out PATH]

Deterministic: full-batch AdamW on the whole digits train split (1442 images, pixel rule and
split of `diffusion_jax.datasets.digits`), PRNGKey(0) initialization, a fixed number of steps; no
data-order randomness. On one machine the same command writes the same weights (XLA CPU is
deterministic). The shipped `digits_classifier.npz` was written by this script with the
defaults, which then printed the numbers quoted in `digits_fd`'s docstring.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax.evaluation import digits_fd

NUM_STEPS = 600
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-4


def train(num_steps: int = NUM_STEPS, seed: int = 0):
  """Returns the trained classifier params (full-batch AdamW, cross-entropy)."""
  images, labels = digits_fd.real_digits("train")
  x, y = jnp.asarray(images), jnp.asarray(labels)
  model = digits_fd.DigitsClassifier()
  params = model.init(jax.random.PRNGKey(seed), x[:1])["params"]
  tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
  opt_state = tx.init(params)

  def loss_fn(p):
    logits, _ = model.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  for i in range(num_steps):
    params, opt_state, loss = step(params, opt_state)
    if i % 100 == 0 or i == num_steps - 1:
      print(f"step {i:4d}  train loss {float(loss):.4f}")
  return params


def accuracy(params, split: str) -> float:
  images, labels = digits_fd.real_digits(split)
  logits, _ = digits_fd.digits_logits_and_features(images, params=params)
  return float(np.mean(np.argmax(logits, axis=1) == labels))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=digits_fd.WEIGHTS_PATH, help="where to write the .npz")
  args = parser.parse_args()
  params = train()
  digits_fd.save_params(params, args.out)
  params = digits_fd.load_params(args.out)  # What users get: the float32 .npz.
  print(f"wrote {args.out}")
  print(f"train accuracy {accuracy(params, 'train'):.4f}  test accuracy "
        f"{accuracy(params, 'test'):.4f}")
  if args.out == digits_fd.WEIGHTS_PATH:
    train_images, _ = digits_fd.real_digits("train")
    noise = np.random.default_rng(0).uniform(-1, 1, train_images.shape).astype(np.float32)
    print(f"FD(real train vs test) {digits_fd.digits_frechet_distance(train_images):.3f}")
    print(f"FD(uniform noise [1442] vs test) {digits_fd.digits_frechet_distance(noise):.3f}")


if __name__ == "__main__":
  main()
