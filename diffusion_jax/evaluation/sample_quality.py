"""Sample-quality evaluation of a generator: one resumable scorer, one protocol.

A `Scorer` is a feature extractor plus reference statistics: the FID InceptionV3 for FID / IS /
precision-recall (`inception_scorer`, the DDPM paper's reporting: 50,000 samples against the
training set), or the fixed digits classifier for the digits Frechet distance
(`diffusion_jax.evaluation.scorers`, which also says which scores a config asks for). The
protocol is written next to every number:

1. Generate `num_samples` images in [-1, 1] with the configured sampler, in chunks of
   `batch_size`; chunk i always uses `fold_in(PRNGKey(seed), i)`, so a resumed run produces the
   same samples. Each finished chunk is saved atomically under
   `workdir/eval/<name>/chunk_<i>.npz` (uint8 samples if `save_samples`, and their features);
   rerunning the same command skips finished chunks.
2. Convert to uint8 by the one documented rule (`utils.to_uint8`):
   `clip(round((x + 1) * 127.5), 0, 255)`, in float64, round half to even (numpy/jax `round`).
3. Features and logits of the uint8 images (Inception: TF1 bilinear resize to 299,
   `(x - 128) / 128`, pool3 for FID and P&R, bias-free 1008 logits for IS).
4. The Frechet distance against the reference (for FID `eval.reference_stats`, a `.npz` with
   `mu`, `sigma` written by `compute_reference_stats`; TTUR / pytorch-fid `.npz` files with `mu`,
   `sigma` also load), IS over 10 splits, precision/recall (k = 3) against the reference's
   stored real features.
5. Write `workdir/eval/<name>.json` with the numbers and the protocol (samples, sampler, steps,
   weights SHA-256, reference file/split/SHA-256, conversion rule), and the scalars to TensorBoard
   when a writer is given.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
from jax.experimental import multihost_utils
import numpy as np

from diffusion_jax import errors
from diffusion_jax.evaluation import inception
from diffusion_jax.evaluation import reference_stats
from diffusion_jax.evaluation import metrics
from diffusion_jax.utils import to_uint8  # the one uint8 rule

UINT8_RULE = "uint8 = clip(round((x + 1) * 127.5), 0, 255), float64, round half to even"
# Reference statistics live in reference_stats.py; these names are kept here for callers.
ReferenceStats = reference_stats.ReferenceStats
save_reference_stats = reference_stats.save_reference_stats
load_reference_stats = reference_stats.load_reference_stats
compute_reference_stats = reference_stats.compute_reference_stats

SampleBatchFn = Callable[[jax.Array, int], Any]
FeatureFn = Callable[[np.ndarray], Dict[str, np.ndarray]]


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
    raise errors.ConfigError(
        f"samples have shape {list(image_shape)} (H, W, C) but the reference statistics "
        f"`{ref.path}` were computed on {ref_shape} images from {meta.get('source')}: set "
        "`config.eval.reference_stats` to statistics of the training data at the sample "
        "resolution (see diffusion_jax.evaluation.fid_stats).")
  ref_sha = meta.get("inception_weights_sha256")
  if ref_sha and weights_sha and ref_sha != weights_sha:
    raise errors.ConfigError(f"the reference statistics `{ref.path}` were computed with Inception weights "
                     f"sha256 {ref_sha}, but `config.eval.inception_weights` has sha256 "
                     f"{weights_sha}; features from different weights are not comparable.")


def _check_fingerprint(out_dir: str, fingerprint: Mapping[str, Any]) -> None:
  """Chunks of a resumed run must come from the same generator: the fingerprint pins it."""
  os.makedirs(out_dir, exist_ok=True)
  fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
  path = os.path.join(out_dir, "fingerprint.json")
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != fingerprint:
      raise ValueError(f"`{out_dir}` holds samples from a different protocol ({old}); now "
                       f"{fingerprint}. Delete that folder or evaluate under another `name`.")
  else:
    with open(path, "w") as f:
      json.dump(fingerprint, f, indent=2, sort_keys=True)


def _save_npz_atomic(path: str, **arrays) -> None:
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)  # a half-written chunk is never picked up on resume


@dataclasses.dataclass(frozen=True)
class Scorer:
  """A feature extractor, its reference statistics and how its scores are named.

  Attributes:
    name: file stem of its results (`eval/<name>_<step>.json` in the trainer).
    label: what the Frechet distance is called when printed ("FID").
    features: uint8 [N, H, W, C] -> {"features": [N, D], "logits": [N, K]}.
    feature_dim: D.
    reference: statistics (and real features for precision/recall) of real images.
    fd_key, is_key: result names of the Frechet distance and the Inception-Score-like score.
    protocol: how the features are made, written next to the numbers.
    check_shape: raises when samples of a shape [H, W, C] do not match the reference.
  """
  name: str
  label: str
  features: FeatureFn
  feature_dim: int
  reference: ReferenceStats
  fd_key: str = "fid"
  is_key: str = "inception_score"
  protocol: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  check_shape: Callable[[Tuple[int, ...]], None] = lambda shape: None


def inception_scorer(eval_config: Any, extractor: Optional[Any] = None) -> Scorer:
  """FID / Inception Score / precision-recall with the FID InceptionV3 (the DDPM protocol).

  Args:
    eval_config: `config.eval` (inception_weights, inception_batch_size, inception_precision,
      reference_stats).
    extractor: uint8 -> {'pool3', 'logits_unbiased'}; by default the FID Inception from
      `eval_config.inception_weights`.
  """
  precision = str(_cfg(eval_config, "inception_precision", "highest"))
  if extractor is None:
    if precision not in ("highest", "default"):
      raise errors.ConfigError(f"`config.eval.inception_precision`={precision!r}; allowed: 'highest' "
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

  def features(images_u8):
    out = extractor(images_u8)
    return {"features": out["pool3"], "logits": out["logits_unbiased"]}

  protocol = {"network": "FID InceptionV3 (TF graph 2015-12-05)",
              "resize": "tf1_bilinear_299 (align_corners=False, no half-pixel centers)",
              "scaling": "(x - 128) / 128", "fid_feature": "pool3 [2048]",
              "is_feature": "logits without bias [1008]", "precision": precision,
              **weights_info}
  return Scorer(name="fid", label="FID", features=features, feature_dim=feature_dim,
                reference=ref, protocol={"inception": protocol},
                check_shape=lambda shape: _check_reference_matches(ref, shape, weights_sha))


def _save_grid(path: str, images_u8: np.ndarray) -> None:
  from diffusion_jax import utils  # pylint: disable=g-import-not-at-top
  utils.save_png(path, utils.make_grid(images_u8[:100], scale=utils.grid_scale(images_u8.shape[1])))


def evaluate_sample_quality(sample_batch_fn: SampleBatchFn, *, num_samples: int, batch_size: int,
                            eval_config: Any, workdir: str, protocol: Mapping[str, Any],
                            name: str = "sample_quality", seed: int = 0,
                            step: Optional[int] = None, writer: Any = None,
                            extractor: Optional[Any] = None,
                            scorer: Optional[Scorer] = None) -> Dict[str, Any]:
  """Generates samples in resumable chunks, extracts features, scores them, writes JSON.

  Args:
    sample_batch_fn: `(key, n) -> images [n, H, W, C]` float in [-1, 1]; the trainer's sampler
      (pmapped inside as it likes). `n` <= batch_size; the last chunk may be smaller.
    num_samples: total number of samples (50,000 in the DDPM paper).
    batch_size: samples per chunk (the unit of resumption).
    eval_config: `config.eval` (save_samples, num_is_splits, pr_k, pr_num_samples; and the
      Inception fields when `scorer` is None).
    workdir: the run's workdir; outputs go to `workdir/eval/`.
    protocol: what produced the samples, recorded verbatim (checkpoint step, sampler, steps, eta,
      EMA, ...). A resumed run must pass the same protocol, or it stops instead of mixing samples.
    name: file stem: `workdir/eval/<name>.json`, the chunk folder `workdir/eval/<name>/` (with
      `samples.png`, a grid of the first samples).
    seed: base seed; chunk i uses `fold_in(PRNGKey(seed), i)`.
    step: TensorBoard step for `writer`.
    writer: optional clu metric writer (`write_scalars(step, dict)`).
    extractor: with scorer=None, the Inception stand-in (see `inception_scorer`).
    scorer: what to score with; default `inception_scorer(eval_config, extractor)`.

  Returns:
    The JSON dict: {fd_key, is_key, is_key + '_std', 'precision', 'recall', 'num_samples',
    'protocol': {...}}.
  """
  if num_samples < 2:
    raise ValueError(f"`num_samples` must be >= 2 (FID needs a covariance), got {num_samples}.")
  if batch_size < 1:
    raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
  # Load (and validate) everything that can fail before spending time on sampling.
  if scorer is None:
    scorer = inception_scorer(eval_config, extractor)
  ref = scorer.reference
  save_samples = bool(_cfg(eval_config, "save_samples", True))
  num_splits = int(_cfg(eval_config, "num_is_splits", 10))
  pr_k = int(_cfg(eval_config, "pr_k", 3))
  pr_num = int(_cfg(eval_config, "pr_num_samples", 10000))

  # With several processes every one takes part in sampling; process 0 alone reads and writes
  # the files and scores, and tells the others which chunks are left to sample.
  is_chief = jax.process_index() == 0
  out_dir = os.path.join(workdir, "eval", name)
  num_chunks = -(-num_samples // batch_size)
  paths = [os.path.join(out_dir, f"chunk_{i:06d}.npz") for i in range(num_chunks)]
  error = None
  if is_chief:
    try:
      _check_fingerprint(out_dir, {"protocol": dict(protocol), "batch_size": batch_size,
                                   "seed": seed, "features": scorer.protocol,
                                   "uint8_rule": UINT8_RULE})
    except ValueError as e:
      error = e
  done = np.asarray([is_chief and os.path.exists(p) for p in paths] + [error is not None])
  if jax.process_count() > 1:
    done = multihost_utils.broadcast_one_to_all(done)
  if done[-1]:
    raise error or errors.ConfigError(f"process 0 could not evaluate {name}: see its log.")

  base_key = jax.random.PRNGKey(seed)
  # Features are streamed into float64 mean/covariance; only the first pr_num rows are kept.
  stats = metrics.StreamingStats(scorer.feature_dim)
  pr_fake, logits, image_shape = [], [], None
  t0, generated = time.time(), 0
  for i, path in enumerate(paths):
    n = min(batch_size, num_samples - i * batch_size)
    if done[i]:
      with np.load(path) as data:
        chunk_features, chunk_logits = data["features"], data["logits"]
        shape = tuple(int(s) for s in data["image_shape"])
      if chunk_features.shape[0] != n:
        raise ValueError(f"`{path}` has {chunk_features.shape[0]} samples, expected {n}; delete it.")
    else:
      images = np.asarray(sample_batch_fn(jax.random.fold_in(base_key, i), n))
      if not is_chief:
        continue
      if images.ndim != 4 or images.shape[0] != n or images.shape[-1] not in (1, 3):
        raise ValueError(f"`sample_batch_fn(key, {n})` must return [{n}, H, W, C] with C in "
                         f"{{1, 3}}, got shape {images.shape}.")
      shape = tuple(images.shape[1:])
      if image_shape is None:  # fail before spending time on the features
        scorer.check_shape(shape)
      images_u8 = to_uint8(images)
      feats = scorer.features(images_u8)
      chunk_features = np.asarray(feats["features"], np.float32)
      chunk_logits = np.asarray(feats["logits"], np.float32)
      arrays = {"features": chunk_features, "logits": chunk_logits,
                "image_shape": np.asarray(shape)}
      if save_samples:
        arrays["images"] = images_u8
      if i == 0:
        _save_grid(os.path.join(out_dir, "samples.png"), images_u8)
      _save_npz_atomic(path, **arrays)
      generated += n
      logging.info("eval %s: chunk %d/%d (%d samples) done, %.1f s", name, i + 1, num_chunks, n,
                   time.time() - t0)
    if image_shape is None:
      image_shape = shape
      scorer.check_shape(image_shape)  # (again, for resumed chunks)
    elif shape != image_shape:
      raise ValueError(f"chunk {i} has image shape {shape}, earlier chunks {image_shape}.")
    stats.update(chunk_features)
    kept = sum(f.shape[0] for f in pr_fake)
    if kept < pr_num:
      pr_fake.append(chunk_features[:pr_num - kept])
    logits.append(chunk_logits)
  if not is_chief:
    return {}
  logits_all = np.concatenate(logits)
  assert stats.count == logits_all.shape[0] == num_samples, (stats.count, num_samples)

  mu, sigma = stats.mean_cov()
  results: Dict[str, Any] = {scorer.fd_key: metrics.frechet_distance(mu, sigma, ref.mu, ref.sigma)}
  results[scorer.is_key], results[scorer.is_key + "_std"] = metrics.inception_score(
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
      **scorer.protocol,
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
