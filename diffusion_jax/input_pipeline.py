"""Input pipeline: TFDS (or a folder of images) -> per-process split -> per-device numpy batches.

Two entry points, both yielding numpy dicts shaped for `jax.pmap`:

* `create_train_iterator`: infinite, shuffled, optionally flipped batches
  {"image": float32 [local_devices, per_device, H, W, C], "label": int32 [local_devices, per_device]}.
* `create_eval_iterator`: one finite, ordered pass over the eval split; the last batch is padded
  with zeros and every batch carries "mask": bool [local_devices, per_device] (True = real example).

Conventions (design.md section 2):

* Images are decoded to uint8, center-cropped to a square and resized to `data.image_size` only
  when their size differs (area filter when shrinking, bicubic when enlarging; the result is
  rounded back to uint8, so images stay on the 256-level grid that the discretized decoder of the
  DDPM likelihood assumes), then scaled with `x / 127.5 - 1` to [-1, 1] float32.
* Each process reads `tfds.even_splits(split, jax.process_count())[jax.process_index()]` and
  `training.batch_size` is GLOBAL: per device = global / process_count / local_device_count.
* Randomness is seeded: the same `seed` gives the same data order and the same flips (the flip of
  the i-th example drawn is a stateless function of (seed, process_index, i)). File and example
  shuffling use tf.data's seeded shuffles, which also depend on TF's global seed: do not call
  `tf.random.set_seed` if you need runs to match.
* Datasets without labels (LSUN, CelebA-HQ, folders) get label 0.

Data sets (`data.dataset`):

* "digits": scikit-learn's 8x8 digits (`diffusion_jax.datasets`), the embedded default: built on
  the fly into `data.data_dir` (TFDS' default data_dir when None) the first time; no download.
* "cifar10", "mnist", "lsun/bedroom", "lsun/church_outdoor", "lsun/cat", "celeb_a_hq/256":
  TFDS datasets that must have been prepared beforehand (`tfds build ...`, see the error text);
  nothing is ever downloaded here.
* "folder": every *.png / *.jpg / *.jpeg under `data.data_dir` (recursive, sorted by relative
  path), decoded to `data.num_channels` channels (1 = grey, 3 = RGB; images with other channel
  counts are converted). Split rule, stable when files are added or removed: a file is "test"
  when `zlib.crc32(relative_posix_path) % 10 == 0` (about 10%), "train" otherwise; "all" is every
  file ("eval" and "validation" are aliases of "test").
"""
from __future__ import annotations

import math
import os
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

TFDS_DATASETS = ("digits", "cifar10", "mnist", "celeb_a_hq/256", "lsun/bedroom",
                 "lsun/church_outdoor", "lsun/cat")
DATASETS = TFDS_DATASETS + ("folder",)
# Small enough to keep the encoded split in memory (cache + shuffle the whole split).
_SMALL_DATASETS = ("digits", "cifar10", "mnist")
# Shuffle buffer (encoded examples) of the large datasets.
_LARGE_SHUFFLE_BUFFER = 10_000
_FOLDER_EXTENSIONS = (".png", ".jpg", ".jpeg")
_FOLDER_SPLITS = {"train": "train", "test": "test", "eval": "test", "validation": "test",
                  "all": "all"}

Batch = Dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------------
# Validation and sources.
# ------------------------------------------------------------------------------------------------


def _field(data_config, name: str, default: Any = None) -> Any:
  return data_config.get(name, default) if hasattr(data_config, "get") else getattr(
      data_config, name, default)


def _validate(data_config) -> None:
  dataset = _field(data_config, "dataset")
  if dataset not in DATASETS:
    raise ValueError(f"Unknown dataset {dataset!r} in `data.dataset`; valid names are "
                     f"{', '.join(DATASETS)}.")
  image_size = _field(data_config, "image_size")
  if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0:
    raise ValueError(f"`data.image_size` must be a positive int, got {image_size!r}.")
  num_channels = _field(data_config, "num_channels")
  if not isinstance(num_channels, int) or isinstance(num_channels, bool) or num_channels <= 0:
    raise ValueError(f"`data.num_channels` must be a positive int, got {num_channels!r}.")


def _per_device_batch(global_batch_size: int) -> Tuple[int, int, int]:
  """Returns (per_process, local_devices, per_device) or raises naming `training.batch_size`."""
  processes = jax.process_count()
  local_devices = jax.local_device_count()
  if not isinstance(global_batch_size, (int, np.integer)) or global_batch_size <= 0:
    raise ValueError(f"`training.batch_size` (the global batch size) must be a positive int, got "
                     f"{global_batch_size!r}.")
  if global_batch_size % (processes * local_devices):
    raise ValueError(
        f"`training.batch_size`={global_batch_size} (global) must be divisible by "
        f"process_count * local_device_count = {processes} * {local_devices} = "
        f"{processes * local_devices}; choose a multiple of {processes * local_devices}.")
  per_process = global_batch_size // processes
  return per_process, local_devices, per_process // local_devices


def _hide_accelerators_from_tf() -> None:
  # The accelerators belong to JAX; TF only reads data. Fails once TF has initialized its devices,
  # in which case they were already configured (by an earlier call) and nothing is lost.
  try:
    tf.config.experimental.set_visible_devices([], "GPU")
  except RuntimeError:
    pass


def _not_prepared_message(name: str, data_dir: Optional[str], builder) -> str:
  where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
  dd = data_dir or "DATA_DIR"
  if name.startswith("celeb_a_hq"):
    how = (f"CelebA-HQ needs a manual download: {builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}\n"
           f"Put those files in MANUAL_DIR, then run `tfds build {name} "
           f"--manual_dir=MANUAL_DIR --data_dir={dd}`")
  else:
    how = (f"Prepare it where there is internet access with `tfds build {name} --data_dir={dd}` "
           f"(or `tfds.builder('{name}', data_dir='{dd}').download_and_prepare()`), copying "
           f"that directory here if needed")
  return (f"TFDS dataset {name!r} (`data.dataset`) is not prepared in {where} "
          f"(`data.data_dir`), and this pipeline never downloads. {how}; then point "
          f"`data.data_dir` at that directory.")


def _tfds_builder(data_config):
  """Returns the prepared TFDS builder of `data.dataset` (building "digits" if needed)."""
  import diffusion_jax.datasets  # pylint: disable=g-import-not-at-top,unused-import  # registers "digits"
  name = _field(data_config, "dataset")
  data_dir = _field(data_config, "data_dir")
  builder = tfds.builder(name, data_dir=data_dir)
  if name == "digits" and not builder.is_prepared():
    builder.download_and_prepare()  # Offline: the data ship with scikit-learn.
  # Other datasets: `as_dataset` reports missing data (see `_tfds_source`); checking here with
  # `is_prepared()` would also reject `tfds.testing.mock_data`, which serves data from no files.
  channels = builder.info.features["image"].shape[-1]
  num_channels = _field(data_config, "num_channels")
  if channels != num_channels:
    raise ValueError(f"Dataset {name!r} has {channels}-channel images but `data.num_channels`="
                     f"{num_channels}; set `data.num_channels={channels}`.")
  return builder


def _tfds_source(data_config, split: str, field: str, *, train: bool, seed: int):
  """Encoded examples of this process' part of `split`.

  Returns:
    (dataset of {"image": encoded bytes, "label": int64}, a function decoding one such example
    to {"image": uint8 [h, w, c], "label": int32}, the local example count, whether the data set
    is small enough to cache, the largest per-process example count). `_folder_source` returns
    the same five things.
  """
  builder = _tfds_builder(data_config)
  parts = tfds.even_splits(split, jax.process_count())
  local = parts[jax.process_index()]
  try:
    ds = builder.as_dataset(
        split=local,
        # Ordered datasets (digits: one shard) refuse file shuffling; examples are shuffled below.
        shuffle_files=train and not builder.info.disable_shuffling,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=seed if train else None))
  except AssertionError as e:
    if "could not find data" not in str(e):
      raise
    name = _field(data_config, "dataset")
    raise FileNotFoundError(
        _not_prepared_message(name, _field(data_config, "data_dir"), builder)) from e
  except (KeyError, ValueError) as e:
    raise ValueError(f"Split {split!r} (`{field}`) is not a valid split of "
                     f"{builder.info.name!r}; its splits are {list(builder.info.splits.keys())} "
                     f"(TFDS slicing like 'train[:90%]' also works). TFDS said: {e}") from e
  has_label = "label" in builder.info.features
  image_feature = builder.info.features["image"]

  def fmt(ex):
    return {"image": image_feature.decode_example(ex["image"]),
            "label": tf.cast(ex["label"], tf.int32)}

  # Decoding is deferred to after caching/shuffling, so the shuffle buffer holds encoded bytes.
  ds = ds.map(lambda ex: {"image": ex["image"],
                          "label": ex["label"] if has_label else tf.constant(0, tf.int64)})
  card = int(ds.cardinality())
  local_n = card if card >= 0 else builder.info.splits[local].num_examples
  max_n = local_n
  if len(parts) > 1:  # Only multi-process eval needs the other processes' counts.
    max_n = max([local_n] + [builder.info.splits[p].num_examples for p in parts])
  small = _field(data_config, "dataset") in _SMALL_DATASETS
  return ds, fmt, local_n, small, max_n


def _folder_files(data_config) -> Tuple[str, List[str]]:
  root = _field(data_config, "data_dir")
  if not root or not os.path.isdir(root):
    raise ValueError(f"`data.data_dir` must be an existing directory of PNG/JPEG images for "
                     f"`data.dataset`='folder', got {root!r}.")
  files = []
  for dirpath, _, filenames in os.walk(root, followlinks=True):
    for f in filenames:
      if f.lower().endswith(_FOLDER_EXTENSIONS):
        files.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
  if not files:
    raise ValueError(f"No *.png / *.jpg / *.jpeg images found under `data.data_dir`={root!r}.")
  return root, sorted(files)


def folder_split_files(data_config, split: str, field: str = "data.train_split") -> List[str]:
  """Relative paths (sorted) of the images of `split` of a "folder" data set (rule: module doc).

  Args:
    data_config: the `data` ConfigDict (`data_dir` is the image directory).
    split: "train", "test" (aliases "eval", "validation") or "all".
    field: the config field that holds `split`, named in errors.

  Returns:
    The sorted relative POSIX paths of the split's files.
  """
  if split not in _FOLDER_SPLITS:
    raise ValueError(f"Split {split!r} (`{field}`) is not valid for `data.dataset`='folder'; "
                     f"valid splits: {', '.join(_FOLDER_SPLITS)}.")
  kind = _FOLDER_SPLITS[split]
  _, files = _folder_files(data_config)
  if kind == "all":
    return files
  is_test = [zlib.crc32(f.encode("utf-8")) % 10 == 0 for f in files]
  chosen = [f for f, t in zip(files, is_test) if t == (kind == "test")]
  if not chosen:
    raise ValueError(f"The {kind!r} split (`{field}`={split!r}) of the folder `data.data_dir` is "
                     f"empty ({len(files)} images in all; about 10% go to 'test'); add images or "
                     "use the split 'all'.")
  return chosen


def _folder_source(data_config, split: str, field: str, *, train: bool, seed: int):
  root, _ = _folder_files(data_config)
  num_channels = _field(data_config, "num_channels")
  if num_channels not in (1, 3):
    raise ValueError(f"`data.num_channels` must be 1 (grey) or 3 (RGB) for `data.dataset`="
                     f"'folder', got {num_channels}.")
  files = folder_split_files(data_config, split, field)
  n, k, i = len(files), jax.process_count(), jax.process_index()
  bounds = [(j * n) // k for j in range(k + 1)]
  local_files = files[bounds[i]:bounds[i + 1]]
  max_n = max(bounds[j + 1] - bounds[j] for j in range(k))
  paths = [os.path.join(root, f) for f in local_files]
  del train, seed  # File order is shuffled downstream with the example shuffle.
  ds = tf.data.Dataset.from_tensor_slices({"image": tf.constant(paths, tf.string)})
  ds = ds.map(lambda ex: {"image": tf.io.read_file(ex["image"]),
                          "label": tf.constant(0, tf.int64)},
              num_parallel_calls=tf.data.AUTOTUNE)

  def fmt(ex):
    image = tf.io.decode_image(ex["image"], channels=num_channels, expand_animations=False)
    image.set_shape([None, None, num_channels])
    return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

  return ds, fmt, len(local_files), False, max_n


def _source(data_config, split: str, field: str, *, train: bool, seed: int):
  if _field(data_config, "dataset") == "folder":
    return _folder_source(data_config, split, field, train=train, seed=seed)
  return _tfds_source(data_config, split, field, train=train, seed=seed)


# ------------------------------------------------------------------------------------------------
# Per-example preprocessing.
# ------------------------------------------------------------------------------------------------


def _crop_resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 [h, w, c] -> uint8 [size, size, c]: center square crop, then resize (if needed)."""
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  side = tf.minimum(h, w)

  def resized():
    crop = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    crop = tf.cast(crop, tf.float32)
    out = tf.cond(
        side >= size,
        lambda: tf.image.resize(crop, [size, size], method="area", antialias=True),
        lambda: tf.image.resize(crop, [size, size], method="bicubic", antialias=True))
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

  out = tf.cond(tf.logical_and(tf.equal(h, size), tf.equal(w, size)), lambda: image, resized)
  out.set_shape([size, size, image.shape[-1]])
  return out


def _to_model_range(image_uint8: tf.Tensor) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [-1, 1] by x / 127.5 - 1 (design.md section 2)."""
  return tf.cast(image_uint8, tf.float32) / 127.5 - 1.0


def _split_devices(batch: Dict[str, tf.Tensor], local_devices: int,
                   per_device: int) -> Dict[str, tf.Tensor]:
  return {k: tf.reshape(v, [local_devices, per_device] + v.shape[1:].as_list())
          for k, v in batch.items()}


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


# ------------------------------------------------------------------------------------------------
# Public API.
# ------------------------------------------------------------------------------------------------


def create_train_iterator(data_config, *, global_batch_size: int,
                          seed: int) -> Iterator[Batch]:
  """Infinite, shuffled training batches of this process, split over its local devices.

  Args:
    data_config: the `data` ConfigDict: dataset, image_size, num_channels, random_flip,
      data_dir, train_split (default "train").
    global_batch_size: `training.batch_size`, summed over all processes and devices; must be a
      multiple of process_count * local_device_count.
    seed: data seed; the same seed gives the same order and flips.

  Yields:
    {"image": float32 [local_devices, per_device, H, W, C] in [-1, 1],
     "label": int32 [local_devices, per_device]} as numpy arrays (label 0 without labels).
  """
  _validate(data_config)
  per_process, local_devices, per_device = _per_device_batch(global_batch_size)
  _hide_accelerators_from_tf()
  split = _field(data_config, "train_split", "train") or "train"
  image_size = _field(data_config, "image_size")
  random_flip = bool(_field(data_config, "random_flip", False))
  ds, fmt, local_n, small, _ = _source(data_config, split, "data.train_split", train=True,
                                       seed=seed)
  if local_n == 0:
    raise ValueError(f"Split {split!r} (`data.train_split`) has no examples for process "
                     f"{jax.process_index()}.")
  if small:
    ds = ds.cache()
  buffer = local_n if (small or local_n <= _LARGE_SHUFFLE_BUFFER) else _LARGE_SHUFFLE_BUFFER
  ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  flip_seed = tf.constant([seed, jax.process_index()], tf.int64)

  def preprocess(index, ex):
    ex = fmt(ex)
    image = _crop_resize(ex["image"], image_size)
    if random_flip:
      # Stateless: the flip of the index-th example depends only on (seed, process, index).
      key = tf.random.experimental.stateless_fold_in(flip_seed, index)
      image = tf.image.stateless_random_flip_left_right(image, seed=key)
    return {"image": _to_model_range(image), "label": ex["label"]}

  ds = ds.enumerate().map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(per_process, drop_remainder=True)
  ds = ds.map(lambda b: _split_devices(b, local_devices, per_device))
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
  return iter(tfds.as_numpy(ds))


def create_eval_iterator(data_config, *, global_batch_size: int,
                         split: Optional[str] = None) -> Iterator[Batch]:
  """One ordered pass over this process' part of the eval split; nothing is dropped.

  The last real batch is padded with zero images (label 0, mask False). With several processes,
  every process yields the same number of batches (the larger parts set it; fully masked batches
  pad the others), so a pmapped eval step never waits on a process that ran out of data.

  Args:
    data_config: the `data` ConfigDict (see `create_train_iterator`); `eval_split` (default
      "test") is read unless `split` is given.
    global_batch_size: the global eval batch size (multiple of process_count * local devices).
    split: overrides `data.eval_split` (any TFDS split spec, e.g. "train[:1000]").

  Yields:
    {"image": float32 [local_devices, per_device, H, W, C] in [-1, 1],
     "label": int32 [local_devices, per_device],
     "mask": bool [local_devices, per_device] (True for real examples)} as numpy arrays.
  """
  _validate(data_config)
  per_process, local_devices, per_device = _per_device_batch(global_batch_size)
  _hide_accelerators_from_tf()
  field = "split" if split is not None else "data.eval_split"
  if split is None:
    split = _field(data_config, "eval_split", "test") or "test"
  image_size = _field(data_config, "image_size")
  ds, fmt, local_n, _, max_n = _source(data_config, split, field, train=False, seed=0)

  def preprocess(ex):
    ex = fmt(ex)
    return {"image": _to_model_range(_crop_resize(ex["image"], image_size)),
            "label": ex["label"], "mask": tf.constant(True)}

  def pad(batch):
    n = tf.shape(batch["mask"])[0]
    padded = {}
    for k, v in batch.items():
      paddings = [[0, per_process - n]] + [[0, 0]] * (len(v.shape) - 1)
      padded[k] = tf.pad(v, paddings)  # zeros, label 0, mask False
      padded[k].set_shape([per_process] + v.shape[1:].as_list())
    return _split_devices(padded, local_devices, per_device)

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(per_process, drop_remainder=False).map(pad)
  extra = math.ceil(max_n / per_process) - math.ceil(local_n / per_process)
  if extra > 0:
    empty = {
        "image": tf.zeros([local_devices, per_device, image_size, image_size,
                           _field(data_config, "num_channels")], tf.float32),
        "label": tf.zeros([local_devices, per_device], tf.int32),
        "mask": tf.zeros([local_devices, per_device], tf.bool)}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat(extra))
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
  return iter(tfds.as_numpy(ds))
