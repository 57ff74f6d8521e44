"""Input pipeline: TFDS (or a folder of images) -> this process' part -> per-device numpy batches.

Two entry points, both yielding numpy dicts shaped for `jax.pmap`:

* `create_train_iterator`: infinite, shuffled, optionally flipped batches
  {"image": float32 [local_devices, per_device, H, W, C], "label": int32 [local_devices, per_device]}.
* `create_eval_iterator`: one finite, ordered pass over the eval split; the last batch is padded
  with zeros and every batch carries "mask": bool [local_devices, per_device] (True = real example).

Conventions:

* Images are decoded to uint8, center-cropped to a square and resized to `data.image_size` only
  when their size differs (area filter when shrinking, bicubic when enlarging; the result is
  rounded back to uint8, so images stay on the 256-level grid that the discretized decoder of the
  DDPM likelihood assumes), then scaled with `x / 127.5 - 1` to [-1, 1] float32.
* `training.batch_size` is GLOBAL; the caller says which rows of it this process holds
  (`parallel.batch_layout`).
* The training batch of step s is a pure function of (seed, s): a resumed run continues with the
  very batches an uninterrupted run would have seen. Data sets small enough for memory
  ("digits", "cifar10", "mnist") are loaded whole by every process; epoch e is the permutation
  `numpy.random.default_rng([seed, 0, e])` of the split, step s takes global rows
  [k B, (k + 1) B) of its epoch (k = s mod steps_per_epoch, B the global batch, the remainder
  of an epoch is dropped) and each process keeps its rows of that batch, so the global batch
  does not depend on the number of processes or devices; flips come from
  `default_rng([seed, 1, s])`. Larger data sets stream this process' part,
  `tfds.even_splits(split, process_count)[process_index]`: file order fixed by the seed,
  examples shuffled per epoch (seed (seed, process, epoch), 10,000-example buffer), a resumed run
  skips the epoch's consumed examples; the flip of the i-th example is a stateless function of
  (seed, process, i).
* Datasets without labels (LSUN, CelebA-HQ, folders) get label 0.

Data sets (`data.dataset`):

* "digits": scikit-learn's 8x8 digits (`diffusion_jax.datasets`), the embedded default: built on
  the fly into `data.data_dir` (TFDS' default data_dir when None) the first time; no download.
* "cifar10", "mnist", "lsun/bedroom", "lsun/church_outdoor", "lsun/cat", "celeb_a_hq/256":
  TFDS datasets, downloaded and prepared on first use (`download_and_prepare`, by process 0 while
  the others wait) unless `data.download=False`; CelebA-HQ needs a manual download (see the
  error text). Without network access the error says how to prepare the data elsewhere.
* "folder": every *.png / *.jpg / *.jpeg / *.bmp under `data.data_dir` (recursive, sorted by
  relative path), decoded to `data.num_channels` channels (1 = grey, 3 = RGB; images with other
  channel counts are converted). Split rule, stable when files are added or removed: a file is
  "test" when `zlib.crc32(relative_posix_path) % 10 == 0` (about 10%), "train" otherwise; "all"
  is every file ("eval" and "validation" are aliases of "test").
"""
from __future__ import annotations

import itertools
import math
import socket
from typing import Any, Dict, Iterator, Optional, Tuple

import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from diffusion_jax import errors
from diffusion_jax.dataset_names import IN_MEMORY_DATASETS
from diffusion_jax.datasets import folder

folder_split_files = folder.split_files  # the folder split rule (module docstring)

# Shuffle buffer (encoded examples) of the large datasets.
_LARGE_SHUFFLE_BUFFER = 10_000

Batch = Dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------------
# Validation and sources.
# ------------------------------------------------------------------------------------------------


def _field(data_config, name: str, default: Any = None) -> Any:
  return data_config.get(name, default) if hasattr(data_config, "get") else getattr(
      data_config, name, default)


def hide_accelerators_from_tf() -> None:
  """The accelerators belong to JAX; TF only reads data, so it must not take their memory.

  Called when this module is imported, before any TF op can initialize TF's devices (after
  that it has no effect, and an earlier call has configured them).
  """
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except RuntimeError:
      pass


hide_accelerators_from_tf()  # on import: TF is here only to read data


def _not_prepared_message(name: str, data_dir: Optional[str], builder, why: str) -> str:
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
          f"(`data.data_dir`), and {why}. {how}; then point `data.data_dir` at that directory.")


def _network_problem(host: str = "storage.googleapis.com", timeout: float = 5.0) -> Optional[str]:
  """Why TFDS could not download right now (None when `host` answers): fails in seconds where
  a download attempt would retry for minutes."""
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return None
  except OSError as e:
    return f"{host} cannot be reached ({e})"


def _prepare(builder, name: str, data_dir: Optional[str]) -> None:
  """download_and_prepare on first use; raises MissingFileError with the way out if it fails."""
  problem = None if name == "digits" else _network_problem()  # digits ship with scikit-learn
  if problem is None:
    try:
      builder.download_and_prepare()
      return
    except Exception as e:  # TFDS/requests raise many types; the message says what happened.
      problem = f"download_and_prepare failed: {type(e).__name__}: {e}"
  raise errors.MissingFileError(_not_prepared_message(
      name, data_dir, builder, f"this machine could not prepare it ({problem})"))


def _tfds_builder(data_config):
  """The TFDS builder of `data.dataset`, prepared on first use (see the module docstring).

  Process 0 prepares the data while the others wait; a process that still finds no data
  afterwards (a data_dir that is not shared) prepares its own copy.
  """
  import diffusion_jax.datasets  # pylint: disable=g-import-not-at-top,unused-import  # registers "digits"
  name = _field(data_config, "dataset")
  data_dir = _field(data_config, "data_dir")
  builder = tfds.builder(name, data_dir=data_dir)
  # With data.download=False, `as_dataset` reports missing data (see `_tfds_source`); checking
  # `is_prepared()` there would also reject `tfds.testing.mock_data`, which serves no files.
  if (name == "digits" or _field(data_config, "download", True)) and not builder.is_prepared():
    error = None
    if jax.process_index() == 0:
      try:
        _prepare(builder, name, data_dir)
      except errors.MissingFileError as e:
        error = e
    if jax.process_count() > 1:
      failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
      if jax.process_index() != 0 and not failed:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
          _prepare(builder, name, data_dir)
      elif failed and error is None:
        raise errors.MissingFileError(f"TFDS dataset {name!r} (`data.dataset`) could not be "
                                      "prepared by process 0; see its error.")
    if error is not None:
      raise error
  channels = builder.info.features["image"].shape[-1]
  num_channels = _field(data_config, "num_channels")
  if channels != num_channels:
    raise errors.DataError(f"Dataset {name!r} has {channels}-channel images but "
                           f"`data.num_channels`={num_channels}; set `data.num_channels={channels}`.")
  return builder


def _tfds_source(data_config, split: str, field: str, *, whole: bool, shuffle_seed: Optional[int]):
  """Encoded examples of `split` (this process' part, or all of it with `whole`).

  Returns:
    (dataset of {"image": encoded bytes, "label": int64}, a function decoding one such example
    to {"image": uint8 [h, w, c], "label": int32}, the example count, the largest per-process
    example count). `_folder_source` returns the same four things.
  """
  builder = _tfds_builder(data_config)
  parts = [split] if whole else tfds.even_splits(split, jax.process_count())
  local = parts[0 if whole else jax.process_index()]
  try:
    ds = builder.as_dataset(
        split=local,
        # Ordered datasets (digits: one shard) refuse file shuffling; examples are shuffled later.
        shuffle_files=shuffle_seed is not None and not builder.info.disable_shuffling,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed,
                                    shuffle_reshuffle_each_iteration=False))
  except AssertionError as e:
    if "could not find data" not in str(e):
      raise
    name = _field(data_config, "dataset")
    why = ("data.download=False" if not _field(data_config, "download", True)
           else "it could not be found")
    raise errors.MissingFileError(
        _not_prepared_message(name, _field(data_config, "data_dir"), builder, why)) from e
  except (KeyError, ValueError) as e:
    raise errors.DataError(f"Split {split!r} (`{field}`) is not a valid split of "
                           f"{builder.info.name!r}; its splits are "
                           f"{list(builder.info.splits.keys())} (TFDS slicing like 'train[:90%]' "
                           f"also works). TFDS said: {e}") from e
  has_label = "label" in builder.info.features
  image_feature = builder.info.features["image"]

  def fmt(ex):
    return {"image": image_feature.decode_example(ex["image"]),
            "label": tf.cast(ex["label"], tf.int32)}

  # Decoding is deferred to after shuffling, so the shuffle buffer holds encoded bytes.
  ds = ds.map(lambda ex: {"image": ex["image"],
                          "label": ex["label"] if has_label else tf.constant(0, tf.int64)})
  card = int(ds.cardinality())
  local_n = card if card >= 0 else builder.info.splits[local].num_examples
  max_n = local_n
  if len(parts) > 1:  # Only multi-process eval needs the other processes' counts.
    max_n = max([local_n] + [builder.info.splits[p].num_examples for p in parts])
  return ds, fmt, local_n, max_n


def _source(data_config, split: str, field: str, *, whole: bool = False,
            shuffle_seed: Optional[int] = None):
  if _field(data_config, "dataset") == "folder":
    return folder.source(data_config, split, field, whole=whole)
  return _tfds_source(data_config, split, field, whole=whole, shuffle_seed=shuffle_seed)


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
  """uint8 [0, 255] -> float32 [-1, 1] by x / 127.5 - 1."""
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


def load_split(data_config, split: str, field: str = "data.train_split",
               limit: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """All of `split` (or its first `limit` examples), decoded, cropped and resized, in order.

  Every process reads the same examples. Returns (uint8 [N, H, W, C], int32 labels [N]).
  """
  image_size = _field(data_config, "image_size")
  ds, fmt, n, _ = _source(data_config, split, field, whole=True)
  if n == 0:
    raise errors.DataError(f"Split {split!r} (`{field}`) has no examples.")
  if limit is not None:
    ds = ds.take(limit)

  def decode(ex):
    ex = fmt(ex)
    return {"image": _crop_resize(ex["image"], image_size), "label": ex["label"]}

  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(1024).with_options(_options())
  images, labels = [], []
  for batch in tfds.as_numpy(ds):
    images.append(batch["image"])
    labels.append(batch["label"])
  return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def _in_memory_batches(data_config, split: str, layout, seed: int,
                       start_step: int) -> Iterator[Batch]:
  """Step-indexed batches of a split held in memory (rule: the module docstring)."""
  images, labels = load_split(data_config, split)
  n, size = len(images), layout.global_size
  if size > n:
    raise errors.DataError(f"`training.batch_size`={size} is larger than the {n} examples of "
                           f"`data.train_split`={split!r}; use at most {n}.")
  steps_per_epoch = n // size
  random_flip = bool(_field(data_config, "random_flip", False))
  rows = slice(layout.offset, layout.offset + layout.local_size)
  shape = (layout.local_devices, layout.per_device)

  def batches():  # the split is loaded (and checked) above, when the iterator is created
    epoch, order = None, None
    for step in itertools.count(start_step):
      if step // steps_per_epoch != epoch:
        epoch = step // steps_per_epoch
        order = np.random.default_rng([seed, 0, epoch]).permutation(n)
      first = (step % steps_per_epoch) * size
      index = order[first:first + size][rows]
      x = images[index]
      if random_flip:
        flip = (np.random.default_rng([seed, 1, step]).random(size) < 0.5)[rows]
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
      x = x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
      yield {"image": x.reshape(shape + x.shape[1:]), "label": labels[index].reshape(shape)}

  return batches()


def _streamed_batches(data_config, split: str, layout, seed: int,
                      start_step: int) -> Iterator[Batch]:
  """Step-indexed batches of this process' part of a large split (rule: the module docstring)."""
  per_process = layout.local_size
  ds, fmt, local_n, _ = _source(data_config, split, "data.train_split", shuffle_seed=seed)
  steps_per_epoch = local_n // per_process
  if steps_per_epoch == 0:
    raise errors.DataError(f"`data.train_split`={split!r} has {local_n} examples for process "
                           f"{jax.process_index()}, fewer than its {per_process} of "
                           "`training.batch_size`.")
  image_size = _field(data_config, "image_size")
  random_flip = bool(_field(data_config, "random_flip", False))
  process = jax.process_index()
  start_epoch, done = divmod(start_step, steps_per_epoch)
  buffer = min(local_n, _LARGE_SHUFFLE_BUFFER)

  def epoch_examples(epoch):
    epoch_seed = (tf.constant(seed, tf.int64) * 1_000_003 + process) * 1_000_003 + epoch
    examples = ds.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    examples = examples.take(steps_per_epoch * per_process)
    skip = tf.where(epoch == start_epoch, tf.constant(done * per_process, tf.int64),
                    tf.constant(0, tf.int64))
    return examples.skip(skip)

  flip_seed = tf.constant([seed, process], tf.int64)

  def preprocess(index, ex):
    ex = fmt(ex)
    image = _crop_resize(ex["image"], image_size)
    if random_flip:
      # Stateless: the flip of the index-th example depends only on (seed, process, index).
      key = tf.random.experimental.stateless_fold_in(flip_seed, index)
      image = tf.image.stateless_random_flip_left_right(image, seed=key)
    return {"image": _to_model_range(image), "label": ex["label"]}

  out = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_examples)
  out = tf.data.Dataset.zip((tf.data.Dataset.range(start_step * per_process, 2**62), out))
  out = out.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  out = out.batch(per_process, drop_remainder=True)
  out = out.map(lambda b: _split_devices(b, layout.local_devices, layout.per_device))
  return iter(tfds.as_numpy(out.prefetch(tf.data.AUTOTUNE).with_options(_options())))


def create_train_iterator(data_config, *, layout, seed: int, start_step: int = 0
                          ) -> Iterator[Batch]:
  """Infinite training batches from step `start_step` on; step s's batch depends on (seed, s).

  Args:
    data_config: the `data` ConfigDict: dataset, image_size, num_channels, random_flip,
      data_dir, train_split (default "train"), download.
    layout: which rows of the GLOBAL batch this process holds and how they split over its
      devices (`parallel.batch_layout`: global_size, offset, local_size, local_devices,
      per_device).
    seed: data seed.
    start_step: the first step to yield (a resumed run's step).

  Yields:
    {"image": float32 [local_devices, per_device, H, W, C] in [-1, 1],
     "label": int32 [local_devices, per_device]} as numpy arrays (label 0 without labels).
  """
  split = _field(data_config, "train_split", "train") or "train"
  if _field(data_config, "dataset") in IN_MEMORY_DATASETS:
    return _in_memory_batches(data_config, split, layout, seed, start_step)
  return _streamed_batches(data_config, split, layout, seed, start_step)


def create_eval_iterator(data_config, *, local_batch_shape: Tuple[int, int],
                         split: Optional[str] = None) -> Iterator[Batch]:
  """One ordered pass over this process' part of the eval split; nothing is dropped.

  The last real batch is padded with zero images (label 0, mask False). With several processes,
  every process yields the same number of batches (the larger parts set it; fully masked batches
  pad the others), so a pmapped eval step never waits on a process that ran out of data.

  Args:
    data_config: the `data` ConfigDict (see `create_train_iterator`); `eval_split` (default
      "test") is read unless `split` is given.
    local_batch_shape: (local devices, examples per device) of this process' part of a batch.
    split: overrides `data.eval_split` (any TFDS split spec, e.g. "train[:1000]").

  Yields:
    {"image": float32 [local_devices, per_device, H, W, C] in [-1, 1],
     "label": int32 [local_devices, per_device],
     "mask": bool [local_devices, per_device] (True for real examples)} as numpy arrays.
  """
  local_devices, per_device = local_batch_shape
  per_process = local_devices * per_device
  field = "split" if split is not None else "data.eval_split"
  if split is None:
    split = _field(data_config, "eval_split", "test") or "test"
  image_size = _field(data_config, "image_size")
  ds, fmt, local_n, max_n = _source(data_config, split, field)

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
