"""The scikit-learn 8x8 digits as uint8 arrays, with the project's fixed train/test split.

Pure numpy (plus scikit-learn's bundled copy of the data: nothing is downloaded). This is the one
home of the two rules that the TFDS builder (`digits_dataset_builder.py`), the digits Frechet
distance (`diffusion_jax.evaluation.digits_fd`) and its classifier all share:

* Pixel rule: sklearn stores 17 grey levels v in {0, ..., 16}; we store
  `uint8 = floor(v * 255 / 16 + 0.5)` (round half up), so 0 -> 0 and 16 -> 255. The only tie is
  v = 8 (127.5 -> 128). The 17 levels used are therefore 0, 16, 32, 48, 64, 80, 96, 112, 128, 143,
  159, 175, 191, 207, 223, 239, 255.
* Split rule (stratified and deterministic, no RNG): within each class, the examples keep
  sklearn's order; those whose rank within their class r satisfies r % 5 == 4 (the 5th, 10th,
  ...) are "test", the others "train". Counts: train 1442, test 355 (per class test counts
  35, 36, 35, 36, 36, 36, 36, 35, 34, 36 for digits 0..9); 1797 in all.
"""
from __future__ import annotations

import functools
from typing import Literal, Tuple

import numpy as np

NUM_EXAMPLES = 1797
NUM_TRAIN = 1442
NUM_TEST = 355
SPLITS = ("train", "test")


def to_uint8(values: np.ndarray) -> np.ndarray:
  """Maps sklearn grey levels 0..16 to uint8 0..255: floor(v * 255 / 16 + 0.5)."""
  values = np.asarray(values, np.float64)
  return np.floor(values * 255.0 / 16.0 + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _load() -> Tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = to_uint8(digits.images)[..., None]  # [1797, 8, 8, 1]
  labels = digits.target.astype(np.int64)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def split_indices(split: Literal["train", "test"]) -> np.ndarray:
  """Indices into sklearn's `load_digits()` order of the examples of `split`, ascending.

  Args:
    split: "train" or "test".

  Returns:
    [N] int64 indices (N = 1442 for train, 355 for test).
  """
  if split not in SPLITS:
    raise ValueError(f"Unknown digits split {split!r}; valid splits are {SPLITS}.")
  _, labels = _load()
  rank = np.zeros_like(labels)
  for c in range(10):
    members = np.flatnonzero(labels == c)
    rank[members] = np.arange(members.size)
  is_test = rank % 5 == 4
  return np.flatnonzero(is_test if split == "test" else ~is_test)


def load_split(split: Literal["train", "test"]) -> Tuple[np.ndarray, np.ndarray]:
  """The images and labels of one split, in sklearn order.

  Args:
    split: "train" or "test".

  Returns:
    images: [N, 8, 8, 1] uint8 in [0, 255] (pixel rule of the module docstring).
    labels: [N] int64 in [0, 10).
  """
  images, labels = _load()
  idx = split_indices(split)
  return images[idx], labels[idx]
