"""Tests of diffusion_jax.input_pipeline on digits (built offline), mocked CIFAR-10 and a folder."""
import os
import zlib

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from diffusion_jax import input_pipeline, parallel
from diffusion_jax.datasets.digits import digits_arrays


def _config(**overrides) -> ml_collections.ConfigDict:
  fields = dict(dataset="digits", image_size=8, num_channels=1, random_flip=False,
                data_dir=None, train_split="train", eval_split="test")
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
  """A digits config whose data_dir starts empty: the first iterator builds the dataset."""
  return _config(data_dir=str(tmp_path_factory.mktemp("tfds")))


def _raw_model_range(split):
  """The reference x / 127.5 - 1 on the raw uint8 pixels, computed in numpy."""
  images, labels = digits_arrays.load_split(split)
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0), labels


def _take(it, n):
  return [next(it) for _ in range(n)]


def _layout(global_size, processes=1, index=0):
  """This (simulated) process' rows of the global batch, 8 local devices."""
  local = global_size // processes
  return parallel.BatchLayout(global_size=global_size, offset=index * local, local_devices=8,
                              per_device=local // 8)


def test_train_shapes_dtypes_and_exact_scaling(digits):
  assert jax.local_device_count() == 8
  it = input_pipeline.create_train_iterator(digits, layout=_layout(64), seed=0)
  batches = _take(it, 3)
  raw, raw_labels = _raw_model_range("train")
  known = {(x.tobytes(), int(y)) for x, y in zip(raw, raw_labels)}
  for b in batches:
    assert set(b) == {"image", "label"}
    assert b["image"].shape == (8, 8, 8, 8, 1) and b["image"].dtype == np.float32
    assert b["label"].shape == (8, 8) and b["label"].dtype == np.int32
    # Every training image is exactly x / 127.5 - 1 of a raw train image, with its label.
    for x, y in zip(b["image"].reshape(-1, 8, 8, 1), b["label"].reshape(-1)):
      assert (x.tobytes(), int(y)) in known


def test_eval_covers_every_example_once_with_mask(digits):
  batches = list(input_pipeline.create_eval_iterator(digits, local_batch_shape=(8, 8)))
  assert len(batches) == 6  # ceil(355 / 64)
  for b in batches:
    assert b["image"].shape == (8, 8, 8, 8, 1)
    assert b["mask"].shape == (8, 8) and b["mask"].dtype == np.bool_
  mask = np.concatenate([b["mask"].reshape(-1) for b in batches])
  np.testing.assert_array_equal(mask, np.arange(6 * 64) < 355)
  images = np.concatenate([b["image"].reshape(-1, 8, 8, 1) for b in batches])
  labels = np.concatenate([b["label"].reshape(-1) for b in batches])
  raw, raw_labels = _raw_model_range("test")
  # In order, bit-exact, and the padding is zeros with label 0.
  np.testing.assert_array_equal(images[:355], raw)
  np.testing.assert_array_equal(labels[:355], raw_labels)
  assert not images[355:].any() and not labels[355:].any()


def test_eval_split_override_and_bad_split(digits):
  batches = list(input_pipeline.create_eval_iterator(digits, local_batch_shape=(8, 2),
                                                     split="train[:40]"))
  assert sum(int(b["mask"].sum()) for b in batches) == 40 and len(batches) == 3
  with pytest.raises(ValueError, match="`data.eval_split`"):
    input_pipeline.create_eval_iterator(_config(data_dir=digits.data_dir,
                                                eval_split="validation"), local_batch_shape=(8, 1))


def test_global_batch_is_split_over_processes(digits, monkeypatch):
  """Two simulated processes: each holds its rows of the same global batch (training) and a
  disjoint half of the eval split."""
  whole = next(input_pipeline.create_train_iterator(digits, layout=_layout(32), seed=0))
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  seen, halves = [], []
  for index in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    b = next(input_pipeline.create_train_iterator(digits, layout=_layout(32, 2, index), seed=0))
    assert b["image"].shape == (8, 2, 8, 8, 1)
    halves.append(b["image"])
    batches = list(input_pipeline.create_eval_iterator(digits, local_batch_shape=(8, 2)))
    # 355 = 178 + 177 examples; both processes yield ceil(178 / 16) = 12 batches.
    assert len(batches) == 12
    mask = np.concatenate([e["mask"].reshape(-1) for e in batches])
    imgs = np.concatenate([e["image"].reshape(-1, 64) for e in batches])[mask]
    seen.append(imgs)
  # The global batch does not depend on how many processes share it.
  np.testing.assert_array_equal(np.concatenate([h.reshape(-1, 8, 8, 1) for h in halves]),
                                whole["image"].reshape(-1, 8, 8, 1))
  assert [len(s) for s in seen] == [178, 177]
  raw, _ = _raw_model_range("test")
def test_same_seed_same_order_other_seed_differs(digits):
  a = _take(input_pipeline.create_train_iterator(digits, layout=_layout(16), seed=3), 4)
  b = _take(input_pipeline.create_train_iterator(digits, layout=_layout(16), seed=3), 4)
  c = _take(input_pipeline.create_train_iterator(digits, layout=_layout(16), seed=4), 4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  # Step s's batch is a pure function of (seed, s): resuming at step 2 gives steps 2 and 3,
  # also across the epoch boundary (1442 // 16 = 90 steps per epoch).
  resumed = _take(input_pipeline.create_train_iterator(digits, layout=_layout(16), seed=3,
                                                       start_step=2), 2)
  for x, y in zip(resumed, a[2:]):
    np.testing.assert_array_equal(x["image"], y["image"])
  long = _take(input_pipeline.create_train_iterator(digits, layout=_layout(16), seed=3), 92)
  late = _take(input_pipeline.create_train_iterator(digits, layout=_layout(16), seed=3,
                                                    start_step=89), 3)
  for x, y in zip(late, long[89:]):
    np.testing.assert_array_equal(x["image"], y["image"])
  # One epoch visits the split without replacement (its last 1442 - 1440 examples are dropped).
  epoch = {x.tobytes() for b in long[:90] for x in b["image"].reshape(-1, 8, 8, 1)}
  split = {x.tobytes() for x in _raw_model_range("train")[0]}
  assert len(split) - 2 <= len(epoch) <= len(split)


def test_random_flip(digits):
  raw, _ = _raw_model_range("train")
  plain = {x.tobytes() for x in raw}
  mirrored = {x[:, ::-1].tobytes() for x in raw}
  counts = {}
  for flip in (False, True):
    cfg = _config(data_dir=digits.data_dir, random_flip=flip)
    batches = _take(input_pipeline.create_train_iterator(cfg, layout=_layout(64), seed=1), 4)
    images = np.concatenate([b["image"].reshape(-1, 8, 8, 1) for b in batches])
    only_plain = sum(x.tobytes() in plain and x.tobytes() not in mirrored for x in images)
    only_mirror = sum(x.tobytes() in mirrored and x.tobytes() not in plain for x in images)
    assert all(x.tobytes() in plain or x.tobytes() in mirrored for x in images)
    counts[flip] = (only_plain, only_mirror)
  assert counts[False][1] == 0 and counts[False][0] == 256
  # About half of the 256 examples are flipped (binomial: 128 +- 8).
  assert 90 < counts[True][1] < 166 and 90 < counts[True][0] < 166


def test_resize_to_image_size_stays_on_uint8_grid(digits):
  cfg = _config(data_dir=digits.data_dir, image_size=16)
  b = next(input_pipeline.create_train_iterator(cfg, layout=_layout(16), seed=0))
  assert b["image"].shape == (8, 2, 16, 16, 1)
  u = (b["image"] + 1.0) * 127.5
  np.testing.assert_allclose(u, np.round(u), atol=1e-4)
  assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0


def test_channel_mismatch_names_the_field(digits):
  # (Batch sizes, data set names and image sizes are checked once, by config_validation.)
  cfg = _config(data_dir=digits.data_dir, num_channels=3)
  with pytest.raises(ValueError, match="`data.num_channels`"):
    input_pipeline.create_train_iterator(cfg, layout=_layout(8), seed=0)


@pytest.mark.parametrize("name,hint", [
    ("cifar10", "tfds build cifar10 --data_dir="),
    ("lsun/bedroom", "tfds build lsun/bedroom --data_dir="),
    ("celeb_a_hq/256", "--manual_dir=MANUAL_DIR"),
])
def test_unprepared_tfds_dataset_says_how_to_get_it(tmp_path, name, hint):
  cfg = _config(dataset=name, image_size=32, num_channels=3, data_dir=str(tmp_path),
                download=False)
  with pytest.raises(FileNotFoundError) as e:
    input_pipeline.create_train_iterator(cfg, layout=_layout(8), seed=0)
  msg = str(e.value)
  assert hint in msg and "`data.data_dir`" in msg and "data.download=False" in msg
  assert not any(tmp_path.iterdir())  # nothing was downloaded or written


def test_cifar10_through_mock_data():
  cfg = _config(dataset="cifar10", image_size=32, num_channels=3, random_flip=True,
                download=False)  # mock_data stands for data prepared elsewhere
  with tfds.testing.mock_data(num_examples=20):
    b = next(input_pipeline.create_train_iterator(cfg, layout=_layout(16), seed=0))
    assert b["image"].shape == (8, 2, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (8, 2) and b["label"].min() >= 0 and b["label"].max() < 10
    assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
    batches = list(input_pipeline.create_eval_iterator(cfg, local_batch_shape=(8, 2)))
    assert len(batches) == 2 and sum(int(e["mask"].sum()) for e in batches) == 20
    with pytest.raises(ValueError, match="`data.num_channels`=1"):
      input_pipeline.create_train_iterator(_config(dataset="cifar10", image_size=32, download=False),
                                           layout=_layout(16), seed=0)


@pytest.fixture()
def folder(tmp_path):
  """24 constant-colour images of mixed sizes/formats; colour i*10 identifies image i."""
  colours = {}
  for i in range(24):
    sub = tmp_path / ("a" if i % 2 else "b/deep")
    sub.mkdir(parents=True, exist_ok=True)
    w, h = (12, 20) if i % 3 else (8, 8)
    ext = "png" if i % 4 else "jpg"
    value = 10 * i
    if i % 5 == 0:  # greyscale file, converted to RGB by the pipeline
      img = Image.fromarray(np.full((h, w), value, np.uint8), mode="L")
    else:
      img = Image.fromarray(np.full((h, w, 3), value, np.uint8), mode="RGB")
    path = sub / f"img{i:02d}.{ext}"
    img.save(path, quality=100) if ext == "jpg" else img.save(path)
    colours[os.path.relpath(path, tmp_path).replace(os.sep, "/")] = value
  (tmp_path / "notes.txt").write_text("not an image")
  return tmp_path, colours


def test_folder_split_rule_and_eval_covers_all(folder):
  root, colours = folder
  cfg = _config(dataset="folder", data_dir=str(root), num_channels=3, image_size=8)
  test = input_pipeline.folder_split_files(cfg, "test")
  train = input_pipeline.folder_split_files(cfg, "train")
  expected_test = sorted(f for f in colours if zlib.crc32(f.encode()) % 10 == 0)
  assert test == expected_test and sorted(train + test) == sorted(colours)
  batches = list(input_pipeline.create_eval_iterator(cfg, local_batch_shape=(8, 2), split="all"))
  mask = np.concatenate([b["mask"].reshape(-1) for b in batches])
  images = np.concatenate([b["image"].reshape(-1, 8, 8, 3) for b in batches])[mask]
  assert images.shape == (24, 8, 8, 3)
  # Sorted-path order; each image constant with its colour (JPEG: within 2 levels).
  for image, name in zip(images, sorted(colours)):
    np.testing.assert_allclose((image + 1) * 127.5, colours[name], atol=2.01)


def test_folder_train_iterator(folder):
  root, _ = folder
  cfg = _config(dataset="folder", data_dir=str(root), num_channels=3, image_size=4,
                random_flip=True)
  b = next(input_pipeline.create_train_iterator(cfg, layout=_layout(16), seed=0))
  assert b["image"].shape == (8, 2, 4, 4, 3) and b["label"].shape == (8, 2)
  assert not b["label"].any()  # folders have no labels


def test_folder_errors_name_the_field(folder, tmp_path_factory):
  root, _ = folder
  empty = tmp_path_factory.mktemp("empty")
  cases = [
      (dict(data_dir=None), "`data.data_dir`"),
      (dict(data_dir=str(empty)), "`data.data_dir`"),
      (dict(num_channels=4), "`data.num_channels`"),
      (dict(train_split="train[:10]"), "`data.train_split`"),
  ]
  for overrides, field in cases:
    fields = dict(dataset="folder", data_dir=str(root), num_channels=3, image_size=8)
    fields.update(overrides)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
      input_pipeline.create_train_iterator(_config(**fields), layout=_layout(8), seed=0)


def test_uneven_process_parts_yield_the_same_number_of_batches(digits, monkeypatch):
  """33 examples over 2 processes (17 + 16) at 16 per process: both yield 2 batches."""
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  counts = []
  for index in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    batches = list(input_pipeline.create_eval_iterator(digits, local_batch_shape=(8, 2),
                                                       split="test[:33]"))
    assert len(batches) == 2
    counts.append([int(b["mask"].sum()) for b in batches])
  assert counts == [[16, 1], [16, 0]]


def test_folder_center_crop(tmp_path):
  """A 8x16 image, 255 in its central 8x8 square and 0 at the sides, crops to all 255."""
  pixels = np.zeros((8, 16), np.uint8)
  pixels[:, 4:12] = 255
  Image.fromarray(pixels, mode="L").save(tmp_path / "x.png")
  cfg = _config(dataset="folder", data_dir=str(tmp_path), num_channels=1, image_size=8)
  (b,) = list(input_pipeline.create_eval_iterator(cfg, local_batch_shape=(8, 1), split="all"))
  assert b["mask"].sum() == 1
  np.testing.assert_array_equal(b["image"][0, 0], np.ones((8, 8, 1), np.float32))
