"""A folder of images as a data set (`data.dataset="folder"`): the one reader of image folders.

Every *.png / *.jpg / *.jpeg / *.bmp under `data.data_dir` (recursive, sorted by relative path)
is an example with label 0, decoded to `data.num_channels` channels. Split rule, stable when
files are added or removed: a file is "test" when `zlib.crc32(relative_posix_path) % 10 == 0`
(about 10%), "train" otherwise; "all" is every file ("eval" and "validation" alias "test").
The input pipeline (training, evaluation) and the FID reference statistics read folders here.
"""

from __future__ import annotations

import os
import zlib
from typing import List, Tuple

import jax
import tensorflow as tf

from diffusion_jax import errors

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SPLITS = {"train": "train", "test": "test", "eval": "test", "validation": "test", "all": "all"}


def _files(data_config) -> Tuple[str, List[str]]:
  root = data_config.get("data_dir")
  if not root or not os.path.isdir(root):
    raise errors.DataError(f"`data.data_dir` must be an existing directory of PNG/JPEG/BMP "
                           f"images for `data.dataset`='folder', got {root!r}.")
  files = []
  for dirpath, _, filenames in os.walk(root, followlinks=True):
    for f in filenames:
      if f.lower().endswith(EXTENSIONS):
        files.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
  if not files:
    raise errors.DataError(f"No *.png / *.jpg / *.jpeg / *.bmp images found under "
                           f"`data.data_dir`={root!r}.")
  return root, sorted(files)


def split_files(data_config, split: str, field: str = "data.train_split") -> List[str]:
  """Relative paths (sorted) of the images of `split` of a "folder" data set (rule: module doc).

  Args:
    data_config: the `data` ConfigDict (`data_dir` is the image directory).
    split: "train", "test" (aliases "eval", "validation") or "all".
    field: the config field that holds `split`, named in errors.

  Returns:
    The sorted relative POSIX paths of the split's files.
  """
  if split not in SPLITS:
    raise errors.DataError(f"Split {split!r} (`{field}`) is not valid for "
                           f"`data.dataset`='folder'; valid splits: {', '.join(SPLITS)}.")
  kind = SPLITS[split]
  _, files = _files(data_config)
  if kind == "all":
    return files
  is_test = [zlib.crc32(f.encode("utf-8")) % 10 == 0 for f in files]
  chosen = [f for f, t in zip(files, is_test) if t == (kind == "test")]
  if not chosen:
    raise errors.DataError(f"The {kind!r} split (`{field}`={split!r}) of the folder "
                           f"`data.data_dir` is empty ({len(files)} images in all; about 10% go "
                           "to 'test'); add images or use the split 'all'.")
  return chosen


def source(data_config, split: str, field: str, *, whole: bool):
  """This process' part of `split` (all of it with `whole`), in the input pipeline's form.

  Returns:
    (dataset of {"image": encoded bytes, "label": 0}, a function decoding one example to
    {"image": uint8 [h, w, C], "label": int32}, the example count, the largest per-process
    example count).
  """
  root, _ = _files(data_config)
  num_channels = data_config.get("num_channels")
  if num_channels not in (1, 3):
    raise errors.DataError(f"`data.num_channels` must be 1 (grey) or 3 (RGB) for "
                           f"`data.dataset`='folder', got {num_channels}.")
  files = split_files(data_config, split, field)
  n, k, i = len(files), 1 if whole else jax.process_count(), 0 if whole else jax.process_index()
  bounds = [(j * n) // k for j in range(k + 1)]
  local_files = files[bounds[i]:bounds[i + 1]]
  max_n = max(bounds[j + 1] - bounds[j] for j in range(k))
  paths = [os.path.join(root, f) for f in local_files]
  ds = tf.data.Dataset.from_tensor_slices({"image": tf.constant(paths, tf.string)})
  ds = ds.map(lambda ex: {"image": tf.io.read_file(ex["image"]),
                          "label": tf.constant(0, tf.int64)},
              num_parallel_calls=tf.data.AUTOTUNE)

  def fmt(ex):
    image = tf.io.decode_image(ex["image"], channels=num_channels, expand_animations=False)
    image.set_shape([None, None, num_channels])
    return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

  return ds, fmt, len(local_files), max_n
