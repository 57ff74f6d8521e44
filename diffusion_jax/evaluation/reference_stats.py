"""Reference statistics of real images for FID: compute once, save as `.npz`, load and check.

`compute_reference_stats` reads a TFDS split or an image folder with the input pipeline's
reader (`python -m diffusion_jax.evaluation.fid_stats` is its command line) and stores the
pool3 mean/covariance in float64, the first real features for precision/recall and metadata
(source, split, image count and shape, Inception weights SHA-256) that evaluation checks.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np

from diffusion_jax import errors
from diffusion_jax.evaluation import inception
from diffusion_jax.evaluation import metrics

STATS_FORMAT_VERSION = 1
FID_STATS_HELP = (
    "Compute reference statistics once with\n"
    "  python -m diffusion_jax.evaluation.fid_stats --source=tfds:cifar10 --split=train --image_size=32 "
    "--inception_weights=PATH --output=cifar10_train_stats.npz\n"
    "(or --source=/path/to/image_folder), then set `config.eval.reference_stats` to the output.")

@dataclasses.dataclass
class ReferenceStats:
  """Reference statistics of real images: pool3 mean/covariance, optional features, metadata."""
  mu: np.ndarray                      # [2048] float64
  sigma: np.ndarray                   # [2048, 2048] float64
  features: Optional[np.ndarray]      # [M, 2048] float32 real features for precision/recall
  metadata: Dict[str, Any]            # source, split, num_images, image_shape, weights sha256...
  path: str = ""
  sha256: str = ""


def save_reference_stats(path: str, stats: ReferenceStats) -> None:
  """Writes `.npz` with mu, sigma, (features), and `metadata` (a JSON string), atomically."""
  arrays = {"mu": stats.mu, "sigma": stats.sigma,
            "metadata": np.asarray(json.dumps(stats.metadata, sort_keys=True))}
  if stats.features is not None:
    arrays["features"] = np.asarray(stats.features, np.float32)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def load_reference_stats(path: Optional[str], dim: int = inception.POOL3_DIM) -> ReferenceStats:
  """Reads reference statistics written by `compute_reference_stats` (or TTUR/pytorch-fid `.npz`).

  Args:
    path: the `.npz` (`config.eval.reference_stats`).
    dim: the feature dimension the statistics must have (2048 for Inception pool3).
  """
  if not path:
    raise errors.ConfigError("`config.eval.reference_stats` is not set.\n" + FID_STATS_HELP)
  if not os.path.isfile(path):
    raise errors.MissingFileError(f"reference statistics `{path}` (config.eval.reference_stats) do not "
                            "exist.\n" + FID_STATS_HELP)
  with np.load(path, allow_pickle=False) as data:
    if "mu" not in data.files or "sigma" not in data.files:
      raise errors.ConfigError(f"`{path}` (config.eval.reference_stats) has arrays {data.files}; reference "
                       "statistics need `mu` and `sigma`.\n" + FID_STATS_HELP)
    mu = np.asarray(data["mu"], np.float64)
    sigma = np.asarray(data["sigma"], np.float64)
    features = np.asarray(data["features"], np.float32) if "features" in data.files else None
    meta = json.loads(str(data["metadata"])) if "metadata" in data.files else {}
  d = dim
  if mu.shape != (d,) or sigma.shape != (d, d):
    raise errors.ConfigError(f"`{path}` (config.eval.reference_stats) holds mu {mu.shape} and sigma "
                     f"{sigma.shape}; the features here need statistics with mu ({d},) and sigma "
                     f"({d}, {d}) (Inception pool3: 2048).\n" + FID_STATS_HELP)
  if features is not None and (features.ndim != 2 or features.shape[1] != d):
    raise errors.ConfigError(f"`{path}`: `features` must be [M, {d}], got {features.shape}.")
  return ReferenceStats(mu, sigma, features, meta, os.path.abspath(path),
                        inception.file_sha256(path))


def _iter_uint8(source: str, split: str, data_dir: Optional[str], image_size: int,
                num_channels: int, batch_size: int, download: bool) -> Iterator[np.ndarray]:
  """uint8 batches of a TFDS split or image folder, through the input pipeline's one reader."""
  from diffusion_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  if source.startswith("tfds:"):
    data = {"dataset": source[5:], "data_dir": data_dir, "download": download}
  elif os.path.isdir(source):
    data, split = {"dataset": "folder", "data_dir": source}, "all"
  else:
    raise ValueError(f"`source`={source!r} is neither `tfds:<name>` nor an existing directory.")
  data.update(image_size=image_size, num_channels=num_channels)
  for batch in input_pipeline.create_eval_iterator(data, local_batch_shape=(1, batch_size),
                                                   split=split):
    mask = batch["mask"].reshape(-1)
    images = batch["image"].reshape((-1,) + batch["image"].shape[2:])[mask]
    yield np.round((images.astype(np.float64) + 1.0) * 127.5).astype(np.uint8)  # exact inverse


def compute_reference_stats(source: str, *, output_path: str, image_size: int,
                            num_channels: int = 3,
                            extractor: Optional[Callable[[np.ndarray], Dict[str, np.ndarray]]]
                            = None,
                            inception_weights: Optional[str] = None,
                            split: str = "train", data_dir: Optional[str] = None,
                            batch_size: int = 500, num_pr_features: int = 10000,
                            max_images: Optional[int] = None,
                            download: bool = True) -> ReferenceStats:
  """Reference statistics of a TFDS split or an image folder, every image counted.

  Images are read by `input_pipeline.create_eval_iterator` (the trainer's reader: center crop
  and resize to `image_size` when the size differs, kept on the uint8 grid), so the reference
  sees exactly what the model was trained on.

  Args:
    source: `tfds:<name>` (e.g. `tfds:cifar10`) or a directory of images (searched recursively,
      sorted by path; PNG/JPEG/BMP).
    output_path: where to write the `.npz`.
    image_size: side of the images the statistics describe (the samples' resolution).
    num_channels: 3 (RGB) or 1 (grey, repeated to RGB by the Inception preprocessing).
    extractor: uint8 [B, H, W, C] -> {'pool3': [B, 2048], ...}; by default an
      `InceptionExtractor` built from `inception_weights`.
    inception_weights: path of the FID Inception weights (used when `extractor` is None).
    split: TFDS split (folders use every image).
    data_dir: TFDS data_dir.
    batch_size: images read per step (the last batch may be smaller; it is kept).
    num_pr_features: the first this-many pool3 features are stored for precision/recall
      (0 stores none).
    max_images: optional cap (for quick tests); None uses the whole split/folder.
    download: download and prepare a TFDS data set that is not prepared yet.

  Returns:
    The `ReferenceStats` written to `output_path`.
  """
  if extractor is None:
    extractor = inception.InceptionExtractor.from_file(inception_weights)
  weights_info = dict(getattr(extractor, "weights_info", {}) or {})
  batches = _iter_uint8(source, split, data_dir, image_size, num_channels, batch_size, download)
  is_folder = not source.startswith("tfds:")
  source_desc = {"source": os.path.abspath(source) if is_folder else source,
                 "split": None if is_folder else split}
  stats = metrics.StreamingStats(int(getattr(extractor, "feature_dim", inception.POOL3_DIM)))
  pr_feats = []
  image_shape = None
  for batch in batches:
    if max_images is not None:
      batch = batch[:max(0, max_images - stats.count)]
      if batch.shape[0] == 0:
        break
    if image_shape is None:
      image_shape = list(batch.shape[1:])
    feats = extractor(batch)
    stats.update(feats["pool3"])
    n_pr = sum(f.shape[0] for f in pr_feats)
    if n_pr < num_pr_features:
      pr_feats.append(np.asarray(feats["pool3"][:num_pr_features - n_pr], np.float32))
  mu, sigma = stats.mean_cov()
  meta = dict(source_desc, num_images=stats.count, image_shape=image_shape,
              inception_weights_sha256=weights_info.get("source_sha256", ""),
              format_version=STATS_FORMAT_VERSION, feature="pool3",
              resize="tf1_bilinear_299", num_pr_features=int(sum(f.shape[0] for f in pr_feats)))
  ref = ReferenceStats(mu, sigma, np.concatenate(pr_feats) if pr_feats else None, meta)
  save_reference_stats(output_path, ref)
  ref.path, ref.sha256 = os.path.abspath(output_path), inception.file_sha256(output_path)
  logging.info("reference statistics of %d images from %s written to %s", stats.count, source,
               output_path)
  return ref


