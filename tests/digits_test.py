"""Tests of the digits dataset (arrays + TFDS builder) and the digits Frechet distance."""
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

import diffusion_jax.datasets  # noqa: F401  (registers "digits")
from diffusion_jax.datasets import Digits
from diffusion_jax.datasets.digits import digits_arrays
from diffusion_jax.evaluation import digits_fd

# The 17 uint8 levels of the documented rule floor(v * 255 / 16 + 0.5), written out by hand.
_LEVELS = [0, 16, 32, 48, 64, 80, 96, 112, 128, 143, 159, 175, 191, 207, 223, 239, 255]


def test_import_diffusion_jax_does_not_import_tensorflow():
  code = ("import sys, diffusion_jax; "
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_pixel_rule_matches_the_documented_table():
  raw = load_digits().images
  images, _ = digits_arrays._load()  # pylint: disable=protected-access
  expected = np.asarray(_LEVELS, np.uint8)[raw.astype(np.int64)]
  assert images.dtype == np.uint8 and images.shape == (1797, 8, 8, 1)
  np.testing.assert_array_equal(images[..., 0], expected)


def test_split_rule_counts_and_stratification():
  labels = load_digits().target
  # Independent restatement of the rule: walk the examples in order with a per-class counter.
  seen = [0] * 10
  expected_test = []
  for i, y in enumerate(labels):
    if seen[y] % 5 == 4:
      expected_test.append(i)
    seen[y] += 1
  test_idx = digits_arrays.split_indices("test")
  train_idx = digits_arrays.split_indices("train")
  np.testing.assert_array_equal(test_idx, expected_test)
  assert (len(train_idx), len(test_idx)) == (1442, 355)
  assert (digits_arrays.NUM_TRAIN, digits_arrays.NUM_TEST) == (1442, 355)
  np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(1797))
  np.testing.assert_array_equal(np.bincount(labels[test_idx]),
                                [35, 36, 35, 36, 36, 36, 36, 35, 34, 36])
  with pytest.raises(ValueError, match="valid splits"):
    digits_arrays.split_indices("validation")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds_digits"))
  builder = tfds.builder("digits", data_dir=data_dir)
  assert not builder.is_prepared()
  builder.download_and_prepare()
  return builder


@pytest.mark.parametrize("split,count", [("train", 1442), ("test", 355)])
def test_builder_counts_dtypes_and_order(built, split, count):
  assert built.info.splits[split].num_examples == count
  assert built.info.features["image"].shape == (8, 8, 1)
  assert built.info.features["label"].num_classes == 10
  rows = list(built.as_dataset(split=split).as_numpy_iterator())
  images = np.stack([r["image"] for r in rows])
  labels = np.array([r["label"] for r in rows])
  assert images.dtype == np.uint8 and images.shape == (count, 8, 8, 1)
  # Ordered on disk (disable_shuffling): the split in sklearn order, pixel for pixel.
  raw = load_digits()
  idx = digits_arrays.split_indices(split)
  np.testing.assert_array_equal(images[..., 0], np.asarray(_LEVELS, np.uint8)[
      raw.images[idx].astype(np.int64)])
  np.testing.assert_array_equal(labels, raw.target[idx])


def test_builder_class_builds_identically_into_another_dir(built, tmp_path):
  other = Digits(data_dir=str(tmp_path))
  other.download_and_prepare()
  for split in ("train", "test"):
    a = list(built.as_dataset(split=split).as_numpy_iterator())
    b = list(other.as_dataset(split=split).as_numpy_iterator())
    assert len(a) == len(b)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x["image"], y["image"])
      assert x["label"] == y["label"]


def _torch_features(images: np.ndarray, params) -> np.ndarray:
  """Independent forward pass of the classifier in torch (NCHW), from the .npz weights."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  p = {k: {kk: torch.from_numpy(np.asarray(vv, np.float64)) for kk, vv in v.items()}
       for k, v in params.items()}
  x = torch.from_numpy(images.astype(np.float64)).permute(0, 3, 1, 2)
  conv = lambda name: p[name]["kernel"].permute(3, 2, 0, 1)  # HWIO -> OIHW
  x = F.relu(F.conv2d(x, conv("Conv_0"), p["Conv_0"]["bias"], padding=1))
  # SAME padding with stride 2 on 8 -> 4 pads 0 before and 1 after (TF/XLA convention).
  x = F.relu(F.conv2d(F.pad(x, (0, 1, 0, 1)), conv("Conv_1"), p["Conv_1"]["bias"], stride=2))
  x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # flatten in NHWC order, like the flax model
  return F.relu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]).numpy()


def test_features_match_an_independent_torch_forward_pass():
  images, _ = digits_fd.real_digits("test")
  feats = digits_fd.digits_features(images[:64])
  assert feats.shape == (64, digits_fd.FEATURE_DIM) and feats.dtype == np.float32
  ref = _torch_features(images[:64], digits_fd.load_params())
  np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-4)


def test_classifier_accuracy_and_weights_size():
  import os  # pylint: disable=g-import-not-at-top
  assert os.path.getsize(digits_fd.WEIGHTS_PATH) < 1_000_000
  for split, minimum in (("test", 0.95), ("train", 0.99)):
    images, labels = digits_fd.real_digits(split)
    logits, _ = digits_fd.digits_logits_and_features(images)
    acc = np.mean(np.argmax(logits, axis=1) == labels)
    assert acc > minimum, (split, acc)
  # The docstring quotes 348/355 on test.
  images, labels = digits_fd.real_digits("test")
  logits, _ = digits_fd.digits_logits_and_features(images)
  assert int(np.sum(np.argmax(logits, axis=1) == labels)) == 348


def test_frechet_distance_scale():
  train, _ = digits_fd.real_digits("train")
  test, _ = digits_fd.real_digits("test")
  fd_real = digits_fd.digits_frechet_distance(train, reference="test")
  noise = np.random.default_rng(0).uniform(-1, 1, train.shape).astype(np.float32)
  fd_noise = digits_fd.digits_frechet_distance(noise, reference="test")
  # The numbers quoted in the module docstring.
  assert fd_real == pytest.approx(2.82, abs=0.01)
  assert fd_noise == pytest.approx(1984.4, rel=1e-3)
  # Identical statistics give 0; corrupted digits land between real and noise.
  # (Round-off only: the sqrt of ~0 eigenvalues of rank-deficient covariances is ~1e-5.)
  assert abs(digits_fd.digits_frechet_distance(test, reference="test")) < 1e-4
  noisy = np.clip(train + 0.5 * np.random.default_rng(1).standard_normal(train.shape), -1, 1)
  fd_noisy = digits_fd.digits_frechet_distance(noisy.astype(np.float32), reference="train")
  assert 10 * fd_real < fd_noisy < fd_noise


def test_frechet_distance_bad_inputs():
  with pytest.raises(ValueError, match="`samples` must be"):
    digits_fd.digits_frechet_distance(np.zeros((10, 8, 8)))
  with pytest.raises(ValueError, match="`samples` needs at least 2"):
    digits_fd.digits_frechet_distance(np.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="`reference` must be 'train' or 'test'"):
    digits_fd.digits_frechet_distance(np.zeros((4, 8, 8, 1)), reference="val")
