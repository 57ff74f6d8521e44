"""Digits Frechet distance (FD): the sample-quality figure of the 8x8 digits default.

FID's recipe (Heusel et al. 2017, eq. 6) with a feature extractor that fits the data: a small,
FIXED convolutional classifier trained on the digits train split
(`python -m diffusion_jax.evaluation.train_digits_classifier`, deterministic; weights shipped in
`digits_classifier.npz`, 85k parameters, 0.34 MB). Its accuracy: train 1.0000, test 0.9803
(348/355).

What it measures: fit a Gaussian to the 64-d penultimate-layer features (post-ReLU) of the
samples and one to the features of real digits, and return the squared Frechet distance between
the two Gaussians, `||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`, computed by
`diffusion_jax.evaluation.metrics.frechet_distance`. Lower is better; 0 means the first two
moments of the features match. The reference statistics are computed on the fly from
scikit-learn's digits, with the dataset's pixel rule and split (`diffusion_jax.datasets.digits`).

Scale (printed by the training script; reference = test split, 355 images):

  =====================================================  =======
  samples                                                FD
  =====================================================  =======
  real train split (1442 images)                           2.82
  uniform noise in [-1, 1] (1442 images, seed 0)       1984.4
  =====================================================  =======

Like FID, the estimate is biased upward for few samples; compare numbers only at the same N
(1000+ samples is a good default) and the same reference split.
"""
from __future__ import annotations

import functools
import os
from typing import Literal, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffusion_jax.evaluation.metrics import frechet_distance

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_classifier.npz")
FEATURE_DIM = 64


class DigitsClassifier(nn.Module):
  """Small CNN on 8x8x1 images in [-1, 1]: conv32-conv64/2-dense64 (features)-dense10."""

  @nn.compact
  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """[B, 8, 8, 1] -> (logits [B, 10], features [B, 64])."""
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2))(x))  # [B, 4, 4, 64]
    x = x.reshape(x.shape[0], -1)
    features = nn.relu(nn.Dense(FEATURE_DIM)(x))
    return nn.Dense(10)(features), features


def save_params(params, path: str = WEIGHTS_PATH) -> None:
  """Writes the classifier params to `.npz` (keys: '/'-joined module paths)."""
  flat = traverse_util.flatten_dict(params, sep="/")
  np.savez(path, **{k: np.asarray(v, np.float32) for k, v in flat.items()})


@functools.lru_cache(maxsize=1)
def load_params(path: str = WEIGHTS_PATH):
  """Reads the shipped classifier params (a nested dict of float32 arrays)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Digits classifier weights not found at {path}; create them with "
                            "`python -m diffusion_jax.evaluation.train_digits_classifier`.")
  with np.load(path) as f:
    flat = {k: jnp.asarray(f[k]) for k in f.files}
  return traverse_util.unflatten_dict(flat, sep="/")


@jax.jit
def _apply(params, images: jax.Array) -> Tuple[jax.Array, jax.Array]:
  return DigitsClassifier().apply({"params": params}, images)


def _check_images(images, name: str) -> np.ndarray:
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[1:] != (8, 8, 1):
    raise ValueError(f"`{name}` must be [N, 8, 8, 1] images in [-1, 1], got shape "
                     f"{images.shape}.")
  if images.shape[0] == 0 or not np.all(np.isfinite(images)):
    raise ValueError(f"`{name}` must be a non-empty array of finite values.")
  return images


def digits_logits_and_features(images, *, batch_size: int = 1024,
                               params=None) -> Tuple[np.ndarray, np.ndarray]:
  """Class logits [N, 10] and penultimate features [N, 64] of [N, 8, 8, 1] images in [-1, 1]."""
  images = _check_images(images, "images")
  params = load_params() if params is None else params
  logits, feats = [], []
  for s in range(0, images.shape[0], batch_size):
    lg, ft = _apply(params, jnp.asarray(images[s:s + batch_size]))
    logits.append(np.asarray(lg))
    feats.append(np.asarray(ft))
  return np.concatenate(logits), np.concatenate(feats)


def digits_features(images) -> np.ndarray:
  """Penultimate-layer features of the fixed digits classifier.

  Args:
    images: [N, 8, 8, 1] float images in [-1, 1] (uint8 pixels u map to u / 127.5 - 1).

  Returns:
    [N, 64] float32 features (post-ReLU).
  """
  return digits_logits_and_features(images)[1]


def _statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def real_digits(split: Literal["train", "test"]) -> Tuple[np.ndarray, np.ndarray]:
  """Real digits of `split` as ([N, 8, 8, 1] float32 in [-1, 1], [N] int64 labels)."""
  # Imported here: the package registers the TFDS builder (imports tensorflow_datasets).
  from diffusion_jax.datasets.digits import digits_arrays  # pylint: disable=g-import-not-at-top
  images, labels = digits_arrays.load_split(split)
  return images.astype(np.float32) / np.float32(127.5) - 1.0, labels


@functools.lru_cache(maxsize=2)
def reference_statistics(reference: Literal["train", "test"] = "test"
                         ) -> Tuple[np.ndarray, np.ndarray]:
  """(mu [64], sigma [64, 64]) of the classifier features of a real digits split (float64)."""
  if reference not in ("train", "test"):
    raise ValueError(f"`reference` must be 'train' or 'test', got {reference!r}.")
  return _statistics(digits_features(real_digits(reference)[0]))


def digits_frechet_distance(samples, reference: Literal["train", "test"] = "test") -> float:
  """Squared Frechet distance between samples and real digits in the classifier's feature space.

  Args:
    samples: [N, 8, 8, 1] generated images in [-1, 1], N >= 2 (use 1000+ for stable numbers).
    reference: which real split gives the reference statistics ("test": 355 images, "train":
      1442 images).

  Returns:
    The FD as a Python float (lower is better; see the module docstring for the scale).
  """
  if reference not in ("train", "test"):
    raise ValueError(f"`reference` must be 'train' or 'test', got {reference!r}.")
  samples = _check_images(samples, "samples")
  if samples.shape[0] < 2:
    raise ValueError(f"`samples` needs at least 2 images for a covariance, got {samples.shape[0]}.")
  mu, sigma = _statistics(digits_features(samples))
  mu_ref, sigma_ref = reference_statistics(reference)
  return frechet_distance(mu, sigma, mu_ref, sigma_ref)


def features_and_logits(images_u8: np.ndarray) -> dict:
  """The scorer's feature extractor: uint8 [N, 8, 8, 1] -> {"features": [N, 64], "logits": [N, 10]}."""
  logits, feats = digits_logits_and_features(np.asarray(images_u8, np.float32) / 127.5 - 1.0)
  return {"features": feats, "logits": logits}


def scorer(reference: Literal["train", "test"] = "test"):
  """The digits Frechet distance as a `sample_quality.Scorer` (features, reference, names).

  Its results are `digits_fd`, `digits_is` (the Inception-Score formula on the classifier's
  10 logits) and precision/recall in the 64-d feature space against the real split.
  """
  from diffusion_jax.evaluation import sample_quality  # pylint: disable=g-import-not-at-top
  if reference not in ("train", "test"):
    raise ValueError(f"`reference` must be 'train' or 'test', got {reference!r}.")
  real, _ = real_digits(reference)
  real_features = digits_features(real)
  mu, sigma = reference_statistics(reference)
  weights_sha = sample_quality.inception.file_sha256(WEIGHTS_PATH)
  ref = sample_quality.ReferenceStats(
      mu, sigma, real_features,
      {"source": "scikit-learn digits (diffusion_jax.datasets.digits)", "split": reference,
       "num_images": int(real.shape[0]), "image_shape": [8, 8, 1]},
      path=f"digits:{reference}", sha256=weights_sha)

  def check_shape(shape):
    if tuple(shape) != (8, 8, 1):
      raise ValueError(f"the digits scorer needs [8, 8, 1] samples, got {list(shape)}; it only "
                       "applies to data.dataset='digits' at image_size 8.")

  protocol = {"features": {"network": "fixed digits CNN classifier (digits_fd.py)",
                           "weights": os.path.basename(WEIGHTS_PATH), "weights_sha256": weights_sha,
                           "fd_feature": f"penultimate ReLU [{FEATURE_DIM}]",
                           "is_feature": "class logits [10]", "input": "uint8 / 127.5 - 1"}}
  return sample_quality.Scorer(name="digits", label="digits Frechet distance",
                               features=features_and_logits, feature_dim=FEATURE_DIM,
                               reference=ref, fd_key="digits_fd", is_key="digits_is",
                               protocol=protocol, check_shape=check_shape)
