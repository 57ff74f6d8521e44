"""Sample-quality evaluation of a generator: FID, Inception Score, precision/recall, one protocol.

The protocol (the DDPM paper's reporting is the default: FID and IS over 50,000 samples against
the training set) is written next to every number:

1. Generate `num_samples` images in [-1, 1] with the configured sampler, in chunks of
   `batch_size`; chunk i always uses `fold_in(PRNGKey(seed), i)`, so a resumed run produces the
   same samples. Each finished chunk is saved atomically under
   `workdir/eval/<name>/chunk_<i>.npz` (uint8 samples if `save_samples`, and their Inception
   features); rerunning the same command skips finished chunks.
2. Convert to uint8 by the documented rule (`to_uint8`, design.md section 3.11):
   `clip(round((x + 1) * 127.5), 0, 255)`, in float64, round half to even (numpy/jax `round`).
3. Inception features of the uint8 images with the FID InceptionV3 (`inception.py`: TF1 bilinear
   resize to 299, `(x - 128) / 128`, pool3 for FID and P&R, bias-free 1008 logits for IS).
4. FID against `eval.reference_stats` (a `.npz` with `mu`, `sigma`, written by
   `compute_reference_stats`; TTUR / pytorch-fid `.npz` files with `mu`, `sigma` also load),
   IS over 10 splits, precision/recall (k = 3) against the reference's stored real features.
5. Write `workdir/eval/<name>.json` with the numbers and the protocol (samples, sampler, steps,
   weights SHA-256, reference file/split/SHA-256, conversion rule), and the scalars to TensorBoard
   when a writer is given.

Single-process: run it on one host (process 0); `sample_batch_fn` may pmap over local devices.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple

import jax
import numpy as np

from diffusion_jax.evaluation import inception
from diffusion_jax.evaluation import metrics
from diffusion_jax.utils import to_uint8  # the one uint8 rule (design.md 3.11)

UINT8_RULE = "uint8 = clip(round((x + 1) * 127.5), 0, 255), float64, round half to even"
STATS_FORMAT_VERSION = 1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
FID_STATS_HELP = (
    "Compute reference statistics once with\n"
    "  python -m diffusion_jax.evaluation.fid_stats --source=tfds:cifar10 --split=train "
    "--inception_weights=PATH --output=cifar10_train_stats.npz\n"
    "(or --source=/path/to/image_folder), then set `config.eval.reference_stats` to the output.")

SampleBatchFn = Callable[[jax.Array, int], Any]
FeatureFn = Callable[[np.ndarray], Dict[str, np.ndarray]]


# ----------------------------------------------------------------------------- reference stats


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
    raise ValueError("`config.eval.reference_stats` is not set.\n" + FID_STATS_HELP)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"reference statistics `{path}` (config.eval.reference_stats) do not "
                            "exist.\n" + FID_STATS_HELP)
  with np.load(path, allow_pickle=False) as data:
    if "mu" not in data.files or "sigma" not in data.files:
      raise ValueError(f"`{path}` (config.eval.reference_stats) has arrays {data.files}; reference "
                       "statistics need `mu` and `sigma`.\n" + FID_STATS_HELP)
    mu = np.asarray(data["mu"], np.float64)
    sigma = np.asarray(data["sigma"], np.float64)
    features = np.asarray(data["features"], np.float32) if "features" in data.files else None
    meta = json.loads(str(data["metadata"])) if "metadata" in data.files else {}
  d = dim
  if mu.shape != (d,) or sigma.shape != (d, d):
    raise ValueError(f"`{path}` (config.eval.reference_stats) holds mu {mu.shape} and sigma "
                     f"{sigma.shape}; the features here need statistics with mu ({d},) and sigma "
                     f"({d}, {d}) (Inception pool3: 2048).\n" + FID_STATS_HELP)
  if features is not None and (features.ndim != 2 or features.shape[1] != d):
    raise ValueError(f"`{path}`: `features` must be [M, {d}], got {features.shape}.")
  return ReferenceStats(mu, sigma, features, meta, os.path.abspath(path),
                        inception.file_sha256(path))


def _iter_tfds(name: str, split: str, data_dir: Optional[str], batch_size: int,
               image_key: str) -> Iterator[np.ndarray]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)
  # drop_remainder=False (tf.data's default): the last, partial batch is kept.
  ds = ds.map(lambda ex: ex[image_key]).batch(batch_size, drop_remainder=False)
  for batch in tfds.as_numpy(ds):
    yield np.asarray(batch)


def _list_images(folder: str) -> list:
  files = sorted(f for f in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under `{folder}`.")
  return files


def _iter_folder(folder: str, batch_size: int) -> Iterator[np.ndarray]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  files = _list_images(folder)
  shape = None
  for s in range(0, len(files), batch_size):
    batch = []
    for f in files[s:s + batch_size]:
      with Image.open(f) as im:
        arr = np.asarray(im.convert("RGB"), np.uint8)
      if shape is None:
        shape = arr.shape
      elif arr.shape != shape:
        raise ValueError(f"image `{f}` has shape {arr.shape} but the first image has {shape}; "
                         "all reference images must have the same size.")
      batch.append(arr)
    yield np.stack(batch)


def compute_reference_stats(source: str, *, output_path: str,
                            extractor: Optional[Callable[[np.ndarray], Dict[str, np.ndarray]]]
                            = None,
                            inception_weights: Optional[str] = None,
                            split: str = "train", data_dir: Optional[str] = None,
                            batch_size: int = 500, num_pr_features: int = 10000,
                            image_key: str = "image",
                            max_images: Optional[int] = None) -> ReferenceStats:
  """Reference statistics of a TFDS split or an image folder, every image counted.

  Args:
    source: `tfds:<name>` (e.g. `tfds:cifar10`) or a directory of images (searched recursively,
      sorted by path; all images must share one size; converted to RGB).
    output_path: where to write the `.npz`.
    extractor: uint8 [B, H, W, C] -> {'pool3': [B, 2048], ...}; by default an
      `InceptionExtractor` built from `inception_weights`.
    inception_weights: path of the FID Inception weights (used when `extractor` is None).
    split: TFDS split (ignored for folders).
    data_dir: TFDS data_dir.
    batch_size: images read per step (the last batch may be smaller; it is kept).
    num_pr_features: the first this-many pool3 features are stored for precision/recall
      (0 stores none).
    image_key: TFDS feature holding the uint8 image.
    max_images: optional cap (for quick tests); None uses the whole split/folder.

  Returns:
    The `ReferenceStats` written to `output_path`.
  """
  if extractor is None:
    extractor = inception.InceptionExtractor.from_file(inception_weights)
  weights_info = dict(getattr(extractor, "weights_info", {}) or {})
  if source.startswith("tfds:"):
    batches: Iterable[np.ndarray] = _iter_tfds(source[5:], split, data_dir, batch_size, image_key)
    source_desc = {"source": source, "split": split}
  elif os.path.isdir(source):
    batches = _iter_folder(source, batch_size)
    source_desc = {"source": os.path.abspath(source), "split": None}
  else:
    raise ValueError(f"`source`={source!r} is neither `tfds:<name>` nor an existing directory.")
  stats = metrics.StreamingStats(int(getattr(extractor, "feature_dim", inception.POOL3_DIM)))
  pr_feats = []
  image_shape = None
  for batch in batches:
    if max_images is not None:
      batch = batch[:max(0, max_images - stats.count)]
      if batch.shape[0] == 0:
        break
    if batch.dtype != np.uint8:
      raise ValueError(f"reference images must be uint8, got {batch.dtype} from {source}.")
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


# ----------------------------------------------------------------------------- evaluation


def _cfg(eval_config, name: str, default: Any) -> Any:
  """Reads an optional field of the eval config (ml_collections or dict)."""
  if isinstance(eval_config, Mapping):
    value = eval_config.get(name, default)
  else:
    value = getattr(eval_config, name, default)
  return default if value is None else value


def _check_reference_matches(ref: ReferenceStats, image_shape: Tuple[int, ...],
                             weights_sha: str) -> None:
  meta = ref.metadata
  if not meta:
    logging.warning("reference statistics %s carry no metadata (external file?): cannot check "
                    "their image shape and Inception weights.", ref.path)
    return
  ref_shape = meta.get("image_shape")
  if ref_shape and list(ref_shape) != list(image_shape):
    raise ValueError(
        f"samples have shape {list(image_shape)} (H, W, C) but the reference statistics "
        f"`{ref.path}` were computed on {ref_shape} images from {meta.get('source')}: set "
        "`config.eval.reference_stats` to statistics of the training data at the sample "
        "resolution (see diffusion_jax.evaluation.fid_stats).")
  ref_sha = meta.get("inception_weights_sha256")
  if ref_sha and weights_sha and ref_sha != weights_sha:
    raise ValueError(f"the reference statistics `{ref.path}` were computed with Inception weights "
                     f"sha256 {ref_sha}, but `config.eval.inception_weights` has sha256 "
                     f"{weights_sha}; features from different weights are not comparable.")


def _save_npz_atomic(path: str, **arrays) -> None:
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)  # a half-written chunk is never picked up on resume


def evaluate_sample_quality(sample_batch_fn: SampleBatchFn, *, num_samples: int, batch_size: int,
                            eval_config: Any, workdir: str, protocol: Mapping[str, Any],
                            name: str = "sample_quality", seed: int = 0,
                            step: Optional[int] = None, writer: Any = None,
                            extractor: Optional[FeatureFn] = None) -> Dict[str, Any]:
  """Generates samples in resumable chunks, extracts Inception features, scores them, writes JSON.

  Args:
    sample_batch_fn: `(key, n) -> images [n, H, W, C]` float in [-1, 1]; the trainer's sampler
      (pmapped inside as it likes). `n` <= batch_size; the last chunk may be smaller.
    num_samples: total number of samples (50,000 in the DDPM paper).
    batch_size: samples per chunk (the unit of resumption).
    eval_config: `config.eval` (see module docstring / README for the fields read here).
    workdir: the run's workdir; outputs go to `workdir/eval/`.
    protocol: what produced the samples, recorded verbatim (checkpoint step, sampler, steps, eta,
      EMA, ...). A resumed run must pass the same protocol, or it stops instead of mixing samples.
    name: file stem: `workdir/eval/<name>.json` and the chunk folder `workdir/eval/<name>/`.
    seed: base seed; chunk i uses `fold_in(PRNGKey(seed), i)`.
    step: TensorBoard step for `writer`.
    writer: optional clu metric writer (`write_scalars(step, dict)`).
    extractor: uint8 images -> {'pool3', 'logits_unbiased'}; by default the FID Inception from
      `eval_config.inception_weights`.

  Returns:
    The JSON dict: {'fid', 'inception_score', 'inception_score_std', 'precision', 'recall',
    'num_samples', 'protocol': {...}}.
  """
  if num_samples < 2:
    raise ValueError(f"`num_samples` must be >= 2 (FID needs a covariance), got {num_samples}.")
  if batch_size < 1:
    raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
  # Load (and validate) everything that can fail before spending time on sampling.
  if extractor is None:
    precision = str(_cfg(eval_config, "inception_precision", "highest"))
    if precision not in ("highest", "default"):
      raise ValueError(f"`config.eval.inception_precision`={precision!r}; allowed: 'highest' "
                       "(float32 convolutions everywhere, the protocol) or 'default' (TF32/bf16 "
                       "passes on GPU/TPU: faster, features differ slightly).")
    extractor = inception.InceptionExtractor.from_file(
        _cfg(eval_config, "inception_weights", None),
        batch_size=int(_cfg(eval_config, "inception_batch_size", 200)),
        precision=jax.lax.Precision.HIGHEST if precision == "highest" else
        jax.lax.Precision.DEFAULT)
  feature_dim = int(getattr(extractor, "feature_dim", inception.POOL3_DIM))
  ref = load_reference_stats(_cfg(eval_config, "reference_stats", None), dim=feature_dim)
  weights_info = dict(getattr(extractor, "weights_info", {}) or {})
  weights_sha = weights_info.get("source_sha256", "")
  save_samples = bool(_cfg(eval_config, "save_samples", True))
  num_splits = int(_cfg(eval_config, "num_is_splits", 10))
  pr_k = int(_cfg(eval_config, "pr_k", 3))
  pr_num = int(_cfg(eval_config, "pr_num_samples", 10000))

  out_dir = os.path.join(workdir, "eval", name)
  os.makedirs(out_dir, exist_ok=True)
  # Chunks of a resumed run must come from the same generator: the fingerprint pins it.
  fingerprint = {"protocol": dict(protocol), "batch_size": batch_size, "seed": seed,
                 "inception_weights_sha256": weights_sha, "uint8_rule": UINT8_RULE}
  fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
  fp_path = os.path.join(out_dir, "fingerprint.json")
  if os.path.exists(fp_path):
    with open(fp_path) as f:
      old = json.load(f)
    if old != fingerprint:
      raise ValueError(f"`{out_dir}` holds samples from a different protocol ({old}); now "
                       f"{fingerprint}. Delete that folder or evaluate under another `name`.")
  else:
    with open(fp_path, "w") as f:
      json.dump(fingerprint, f, indent=2, sort_keys=True)

  base_key = jax.random.PRNGKey(seed)
  num_chunks = -(-num_samples // batch_size)
  # pool3 is streamed into float64 mean/covariance; only the first pr_num rows are kept (P&R).
  stats = metrics.StreamingStats(feature_dim)
  pr_fake, logits, image_shape = [], [], None
  t0, generated = time.time(), 0
  for i in range(num_chunks):
    n = min(batch_size, num_samples - i * batch_size)
    path = os.path.join(out_dir, f"chunk_{i:06d}.npz")
    if os.path.exists(path):
      with np.load(path) as data:
        chunk_pool3, chunk_logits = data["pool3"], data["logits_unbiased"]
        shape = tuple(int(s) for s in data["image_shape"])
      if chunk_pool3.shape[0] != n:
        raise ValueError(f"`{path}` has {chunk_pool3.shape[0]} samples, expected {n}; delete it.")
    else:
      images = np.asarray(sample_batch_fn(jax.random.fold_in(base_key, i), n))
      if images.ndim != 4 or images.shape[0] != n or images.shape[-1] not in (1, 3):
        raise ValueError(f"`sample_batch_fn(key, {n})` must return [{n}, H, W, C] with C in "
                         f"{{1, 3}}, got shape {images.shape}.")
      shape = tuple(images.shape[1:])
      if image_shape is None:  # fail before spending time on the Inception
        _check_reference_matches(ref, shape, weights_sha)
      images_u8 = to_uint8(images)
      feats = extractor(images_u8)
      chunk_pool3 = np.asarray(feats["pool3"], np.float32)
      chunk_logits = np.asarray(feats["logits_unbiased"], np.float32)
      arrays = {"pool3": chunk_pool3, "logits_unbiased": chunk_logits,
                "image_shape": np.asarray(shape)}
      if save_samples:
        arrays["images"] = images_u8
      _save_npz_atomic(path, **arrays)
      generated += n
      logging.info("eval %s: chunk %d/%d (%d samples) done, %.1f s", name, i + 1, num_chunks, n,
                   time.time() - t0)
    if image_shape is None:
      image_shape = shape
      _check_reference_matches(ref, image_shape, weights_sha)  # (again, for resumed chunks)
    elif shape != image_shape:
      raise ValueError(f"chunk {i} has image shape {shape}, earlier chunks {image_shape}.")
    stats.update(chunk_pool3)
    kept = sum(f.shape[0] for f in pr_fake)
    if kept < pr_num:
      pr_fake.append(chunk_pool3[:pr_num - kept])
    logits.append(chunk_logits)
  logits_all = np.concatenate(logits)
  assert stats.count == logits_all.shape[0] == num_samples, (stats.count, num_samples)

  mu, sigma = stats.mean_cov()
  results: Dict[str, Any] = {"fid": metrics.frechet_distance(mu, sigma, ref.mu, ref.sigma)}
  results["inception_score"], results["inception_score_std"] = metrics.inception_score(
      logits_all, num_splits=min(num_splits, num_samples))
  pr_used = 0
  if pr_num > 0 and ref.features is not None:
    pr_used = min(pr_num, num_samples, ref.features.shape[0])
    if pr_used > pr_k:
      results["precision"], results["recall"] = metrics.precision_recall(
          ref.features[:pr_used], np.concatenate(pr_fake)[:pr_used], k=pr_k)
  if "precision" not in results:
    logging.warning("precision/recall skipped: the reference statistics hold no real features "
                    "(recompute them with num_pr_features > 0) or pr_num_samples is 0.")
  results["num_samples"] = num_samples
  results["protocol"] = {
      **dict(protocol),
      "num_samples": num_samples,
      "sample_batch_size": batch_size,
      "seed": seed,
      "image_shape": list(image_shape),
      "uint8_conversion": UINT8_RULE,
      "inception": {"network": "FID InceptionV3 (TF graph 2015-12-05)",
                    "resize": "tf1_bilinear_299 (align_corners=False, no half-pixel centers)",
                    "scaling": "(x - 128) / 128", "fid_feature": "pool3 [2048]",
                    "is_feature": "logits without bias [1008]",
                    "precision": str(_cfg(eval_config, "inception_precision", "highest")),
                    **weights_info},
      "reference": {"path": ref.path, "sha256": ref.sha256, **ref.metadata},
      "inception_score_splits": min(num_splits, num_samples),
      "precision_recall": {"k": pr_k, "num_samples": pr_used} if "precision" in results else None,
      "newly_generated": generated,
  }
  json_path = os.path.join(workdir, "eval", f"{name}.json")
  with open(json_path + ".tmp", "w") as f:
    json.dump(results, f, indent=2, sort_keys=True, default=str)
  os.replace(json_path + ".tmp", json_path)
  logging.info("eval %s: %s", name, {k: v for k, v in results.items() if k != "protocol"})
  if writer is not None:
    scalars = {f"eval/{k}": v for k, v in results.items() if isinstance(v, float)}
    writer.write_scalars(step if step is not None else 0, scalars)
  return results
