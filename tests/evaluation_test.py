"""Tests of diffusion_jax.evaluation.metrics against independent numpy/scipy references."""
import json

import jax
import numpy as np
import pytest
import scipy.linalg

from diffusion_jax import evaluation
from diffusion_jax.evaluation import metrics


def _pytorch_fid_formula(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """pytorch-fid's calculate_frechet_distance, re-stated: scipy sqrtm of the product."""
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  covmean = np.real(covmean)
  return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)


def _gaussian_stats(rng, n, d, scale=1.0, shift=0.0):
  x = rng.normal(size=(n, d)) @ (scale * rng.normal(size=(d, d)) / np.sqrt(d)) + shift
  return x.mean(axis=0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("n,d", [(400, 32), (3000, 128)])
def test_frechet_distance_matches_scipy_formula(n, d):
  rng = np.random.default_rng(n + d)
  mu1, s1 = _gaussian_stats(rng, n, d)
  mu2, s2 = _gaussian_stats(rng, n, d, scale=1.3, shift=0.2)
  ours = evaluation.frechet_distance(mu1, s1, mu2, s2)
  ref = _pytorch_fid_formula(mu1, s1, mu2, s2)
  assert isinstance(ours, float)
  np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_frechet_distance_near_singular_covariances():
  # Fewer samples than dimensions: both covariances have rank 29 out of 64.
  rng = np.random.default_rng(1)
  mu1, s1 = _gaussian_stats(rng, 30, 64)
  mu2, s2 = _gaussian_stats(rng, 30, 64, scale=0.7, shift=-0.1)
  assert np.linalg.matrix_rank(s1) < 64
  ours = evaluation.frechet_distance(mu1, s1, mu2, s2)
  ref = _pytorch_fid_formula(mu1, s1, mu2, s2)
  np.testing.assert_allclose(ours, ref, rtol=1e-6)


@pytest.mark.parametrize("tiny", [0.0, 1e-9])
def test_frechet_distance_closed_form_commuting_singular(tiny):
  # Diagonal (commuting) covariances with exact zeros (singular: the eigh path) or 1e-9
  # eigenvalues (condition number ~1e9: the Cholesky path):
  # d^2 = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2.
  rng = np.random.default_rng(2)
  a = rng.uniform(0, 2, size=50)
  b = rng.uniform(0, 2, size=50)
  a[:10] = tiny
  b[5:15] = tiny
  mu1, mu2 = rng.normal(size=50), rng.normal(size=50)
  exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  ours = evaluation.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  np.testing.assert_allclose(ours, exact, rtol=1e-10)
  # A random rotation of both keeps the distance; the product is no longer diagonal.
  q, _ = np.linalg.qr(rng.normal(size=(50, 50)))
  ours_rot = evaluation.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2,
                                         q @ np.diag(b) @ q.T)
  np.testing.assert_allclose(ours_rot, exact, rtol=1e-8)


def test_frechet_distance_identical_is_zero():
  rng = np.random.default_rng(3)
  mu, s = _gaussian_stats(rng, 200, 16)
  assert abs(evaluation.frechet_distance(mu, s, mu, s)) < 1e-9


def test_frechet_distance_shape_errors():
  with pytest.raises(ValueError, match="mu2"):
    evaluation.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="sigma2"):
    evaluation.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
  with pytest.raises(ValueError, match="non-finite"):
    evaluation.frechet_distance(np.zeros(3), np.eye(3) * np.nan, np.zeros(3), np.eye(3))


# ----------------------------------------------------------------------------- Inception Score


def _is_reference(logits, splits):
  """Independent IS: scipy softmax + scipy.stats.entropy (KL) per sample, contiguous splits."""
  import scipy.special
  import scipy.stats
  p = scipy.special.softmax(logits.astype(np.float64), axis=1)
  scores = []
  for part in np.array_split(p, splits):  # same boundaries as i*N//s when computed as below
    py = part.mean(axis=0)
    kl = [scipy.stats.entropy(row, py) for row in part]
    scores.append(np.exp(np.mean(kl)))
  return np.mean(scores), np.std(scores)


@pytest.mark.parametrize("n,splits", [(500, 10), (130, 10), (64, 1)])
def test_inception_score_matches_independent_numpy(n, splits):
  rng = np.random.default_rng(n)
  logits = rng.normal(size=(n, 1008)) * 3.0
  ours = evaluation.inception_score(logits, num_splits=splits)
  if n % splits == 0:  # np.array_split puts the remainder first; only compare equal splits
    ref = _is_reference(logits, splits)
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
  # Explicit split boundaries [i*N//s, (i+1)*N//s) (improved-gan's inception_score.py).
  bounds = [(i * n // splits, (i + 1) * n // splits) for i in range(splits)]
  ref_scores = [_is_reference(logits[a:b], 1)[0] for a, b in bounds]
  np.testing.assert_allclose(ours, (np.mean(ref_scores), np.std(ref_scores)), rtol=1e-10)


def test_inception_score_limits():
  # One-hot confident predictions spread over C classes -> IS = C; identical predictions -> 1.
  logits = np.full((40, 1008), -1e4)
  logits[np.arange(40), np.arange(40) % 8] = 0.0
  np.testing.assert_allclose(evaluation.inception_score(logits, num_splits=1)[0], 8.0, rtol=1e-9)
  same = np.tile(np.random.default_rng(0).normal(size=(1, 1008)), (40, 1))
  np.testing.assert_allclose(evaluation.inception_score(same, num_splits=4), (1.0, 0.0), atol=1e-9)
  with pytest.raises(ValueError, match="num_splits"):
    evaluation.inception_score(same, num_splits=41)


# ----------------------------------------------------------------------------- precision/recall


def _pr_reference(real, fake, k):
  """Independent P&R: sklearn k-NN radii (float64) + scipy cdist membership."""
  from scipy.spatial.distance import cdist
  from sklearn.neighbors import NearestNeighbors

  def radii(x):
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return dist[:, k]  # column 0 is the point itself

  r_real, r_fake = radii(real), radii(fake)
  d_fr = cdist(fake, real)
  precision = np.mean(np.any(d_fr <= r_real[None, :], axis=1))
  recall = np.mean(np.any(d_fr.T <= r_fake[None, :], axis=1))
  # Margin of the closest decision to a ball boundary, to know float32 cannot flip it.
  margin = min(np.min(np.abs(d_fr - r_real[None, :]) / r_real[None, :]),
               np.min(np.abs(d_fr.T - r_fake[None, :]) / r_fake[None, :]))
  return precision, recall, margin


@pytest.mark.parametrize("shift,k", [(0.0, 3), (0.3, 3), (0.5, 5)])
def test_precision_recall_matches_independent_numpy(shift, k):
  rng = np.random.default_rng(int(shift * 10) + k)
  real = rng.normal(size=(300, 64))
  fake = rng.normal(size=(250, 64)) * 0.8 + shift
  ref_p, ref_r, margin = _pr_reference(real, fake, k)
  # No decision within float32 round-off of a ball boundary: our squared distances carry
  # ~1e-7 relative error at these norms, the closest of the ~150k comparisons is >= 1e-6 away.
  assert margin > 1e-6
  p, r = evaluation.precision_recall(real, fake, k=k, row_batch=64)  # several row blocks
  assert (p, r) == (ref_p, ref_r)
  assert 0.0 < p < 1.0 and 0.0 < r < 1.0  # non-trivial values, not all-in or all-out


def test_precision_recall_mode_collapse():
  # Real data: 4 well-separated clusters; the generator covers only cluster 0 -> high precision,
  # recall ~1/4 (the fake manifold contains only cluster-0 real points).
  rng = np.random.default_rng(7)
  centers = 20.0 * np.eye(4, 16)
  real = (centers[:, None] + rng.normal(size=(4, 100, 16))).reshape(400, 16)
  fake = centers[0] + rng.normal(size=(150, 16))
  p, r = evaluation.precision_recall(real, fake, k=3)
  assert p > 0.75 and 0.15 < r <= 0.25
  with pytest.raises(ValueError, match="same"):
    evaluation.precision_recall(real, fake[:, :8])
  with pytest.raises(ValueError, match="k"):
    evaluation.precision_recall(real[:3], fake, k=3)


# ----------------------------------------------------------------------------- streaming stats


def test_streaming_stats_equal_one_shot():
  rng = np.random.default_rng(4)
  # Features with a large common offset (as Inception activations are positive) in float32.
  feats = (rng.normal(size=(1003, 48)) * 0.5 + 30.0).astype(np.float32)
  stats = metrics.StreamingStats(48)
  sizes = [1, 7, 250, 0, 500, 245]  # uneven, a 1-row and an empty batch, sum = 1003
  starts = np.cumsum([0] + sizes)
  for a, b in zip(starts[:-1], starts[1:]):
    stats.update(feats[a:b])
  assert stats.count == 1003
  mu, sigma = stats.mean_cov()
  ref64 = feats.astype(np.float64)
  np.testing.assert_allclose(mu, ref64.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(ref64, rowvar=False), rtol=1e-9, atol=1e-12)
  with pytest.raises(ValueError, match=r"\[B, 48\]"):
    stats.update(feats[:, :10])


# ----------------------------------------------------------------------------- uint8 rule


def test_to_uint8_documented_rule():
  from diffusion_jax.evaluation import sample_quality
  # Every uint8 value survives the data pipeline's x / 127.5 - 1 and back, in float32.
  u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  x = (u.astype(np.float32) / np.float32(127.5) - np.float32(1.0))
  np.testing.assert_array_equal(sample_quality.to_uint8(x), u)
  # Rounding (not truncation), clipping, half-to-even at exact .5 boundaries.
  x = np.array([-1.5, -1.0, -0.999, 1.0 / 127.5 - 1.0 + 0.6 / 127.5, 0.0, 0.999, 1.0, 3.0])
  expected = [0, 0, 0, 2, 128, 255, 255, 255]  # (0+1)*127.5 = 127.5 -> 128 (even)
  np.testing.assert_array_equal(sample_quality.to_uint8(x.reshape(1, 1, -1, 1)).ravel(), expected)
  assert sample_quality.to_uint8(np.array([[[[-1 + 0.5 / 127.5]]]]))[0, 0, 0, 0] == 0  # 0.5 -> 0
  with pytest.raises(ValueError, match="NaN"):
    sample_quality.to_uint8(np.array([np.nan]))


# ----------------------------------------------------------------------------- end to end


class _StubExtractor:
  """Cheap stand-in for the Inception: a fixed random projection of the uint8 pixels."""

  feature_dim = 64  # small, so the 64x64 covariances keep the test fast

  def __init__(self, pixels, sha="abc123"):
    rng = np.random.default_rng(11)
    self.w_pool = rng.normal(size=(pixels, 64)) / np.sqrt(pixels)
    self.w_logit = rng.normal(size=(pixels, 100)) / np.sqrt(pixels)
    self.weights_info = {"source_sha256": sha, "sha256": sha}
    self.images_seen = 0

  def __call__(self, images):
    assert images.dtype == np.uint8
    self.images_seen += images.shape[0]
    x = images.reshape(images.shape[0], -1).astype(np.float64) / 255.0
    return {"pool3": (x @ self.w_pool).astype(np.float32),
            "logits_unbiased": (x @ self.w_logit * 4).astype(np.float32)}


def _real_images(n, hw=8, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(n, hw, hw, c), dtype=np.uint8)


def test_reference_stats_from_folder_counts_remainder(tmp_path):
  from PIL import Image
  from diffusion_jax.evaluation import sample_quality
  imgs = _real_images(7)
  folder = tmp_path / "imgs" / "sub"
  folder.mkdir(parents=True)
  for i, im in enumerate(imgs):
    Image.fromarray(im).save(folder / f"{i:03d}.png")
  ext = _StubExtractor(8 * 8 * 3)
  out = str(tmp_path / "ref.npz")
  ref = sample_quality.compute_reference_stats(str(tmp_path / "imgs"), output_path=out,
                                               image_size=8, extractor=ext, batch_size=3,
                                               num_pr_features=5)
  assert ext.images_seen == 7 and ref.metadata["num_images"] == 7  # 3 + 3 + 1: none dropped
  feats = ext(imgs)["pool3"].astype(np.float64)
  loaded = sample_quality.load_reference_stats(out, dim=64)
  np.testing.assert_allclose(loaded.mu, feats.mean(0), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(loaded.sigma, np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-7)
  assert loaded.features.shape == (5, 64) and loaded.metadata["image_shape"] == [8, 8, 3]
  # Other sizes are read the way training reads them (input_pipeline: center crop + resize).
  Image.fromarray(_real_images(1, hw=16)[0]).save(folder / "zzz.png")
  ref = sample_quality.compute_reference_stats(str(tmp_path / "imgs"), output_path=out,
                                               image_size=8, extractor=ext, batch_size=3)
  assert ref.metadata["num_images"] == 8 and ref.metadata["image_shape"] == [8, 8, 3]


def test_reference_stats_from_tfds_counts_remainder(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from diffusion_jax.evaluation import sample_quality
  ext = _StubExtractor(32 * 32 * 3)
  with tfds.testing.mock_data(num_examples=11):
    ref = sample_quality.compute_reference_stats(
        "tfds:cifar10", output_path=str(tmp_path / "c.npz"), image_size=32, extractor=ext,
        split="train", batch_size=4, num_pr_features=100, download=False)
  assert ref.metadata["num_images"] == 11 and ext.images_seen == 11  # 4 + 4 + 3
  assert ref.features.shape == (11, 64)
  assert ref.metadata["source"] == "tfds:cifar10" and ref.metadata["split"] == "train"


def _make_reference(tmp_path, ext, n=40, hw=8, seed=0):
  from diffusion_jax.evaluation import sample_quality
  folder = tmp_path / f"real{hw}"
  folder.mkdir()
  from PIL import Image
  for i, im in enumerate(_real_images(n, hw=hw, seed=seed)):
    Image.fromarray(im).save(folder / f"{i:03d}.png")
  path = str(tmp_path / f"ref{hw}.npz")
  sample_quality.compute_reference_stats(str(folder), output_path=path, image_size=hw,
                                         extractor=ext, batch_size=16)
  return path


def test_evaluate_sample_quality_end_to_end_and_resume(tmp_path):
  from diffusion_jax.evaluation import sample_quality
  ext = _StubExtractor(8 * 8 * 3)
  ref_path = _make_reference(tmp_path, ext)
  calls = []

  def sample_batch_fn(key, n):
    calls.append(n)
    if len(calls) == 3 and not crashed:
      raise KeyboardInterrupt  # "killed" in the middle of the run
    return np.asarray(jax.random.uniform(key, (n, 8, 8, 3), minval=-1.1, maxval=1.1))

  cfg = {"reference_stats": ref_path, "pr_num_samples": 30, "pr_k": 3, "num_is_splits": 10}
  protocol = {"checkpoint_step": 5, "sampler": "ddim", "num_steps": 10, "eta": 0.0}
  kw = dict(num_samples=23, batch_size=5, eval_config=cfg, workdir=str(tmp_path / "wd"),
            protocol=protocol, name="step_5", extractor=ext)
  crashed = False
  with pytest.raises(KeyboardInterrupt):
    sample_quality.evaluate_sample_quality(sample_batch_fn, **kw)
  crashed = True
  calls.clear()
  writes = []

  class Writer:
    def write_scalars(self, step, scalars):
      writes.append((step, scalars))

  res = sample_quality.evaluate_sample_quality(sample_batch_fn, writer=Writer(), step=5, **kw)
  assert calls == [5, 5, 3]  # chunks 0, 1 were kept; 2, 3, 4 (5 + 5 + 3 = 23 - 10)
  # Independent recomputation from the same keys: all 23 samples, uint8 rule, one-shot stats.
  key = jax.random.PRNGKey(0)
  imgs = np.concatenate([np.asarray(jax.random.uniform(jax.random.fold_in(key, i),
                                                       (min(5, 23 - 5 * i), 8, 8, 3),
                                                       minval=-1.1, maxval=1.1))
                         for i in range(5)])
  u8 = np.clip(np.floor((imgs.astype(np.float64) + 1) * 127.5 + 0.5), 0, 255).astype(np.uint8)
  feats = ext(u8)
  ref = sample_quality.load_reference_stats(ref_path, dim=64)
  f64 = feats["pool3"].astype(np.float64)
  expected_fid = evaluation.frechet_distance(f64.mean(0), np.cov(f64, rowvar=False), ref.mu,
                                             ref.sigma)
  np.testing.assert_allclose(res["fid"], expected_fid, rtol=1e-6)
  np.testing.assert_allclose(
      (res["inception_score"], res["inception_score_std"]),
      evaluation.inception_score(feats["logits_unbiased"], num_splits=10), rtol=1e-9)
  np.testing.assert_allclose((res["precision"], res["recall"]), evaluation.precision_recall(
      ref.features[:23], feats["pool3"][:23], k=3))
  saved = np.concatenate([np.load(tmp_path / "wd" / "eval" / "step_5" / f"chunk_{i:06d}.npz")
                          ["images"] for i in range(5)])
  np.testing.assert_array_equal(saved, u8)
  with open(tmp_path / "wd" / "eval" / "step_5.json") as f:
    on_disk = json.load(f)
  assert on_disk["fid"] == res["fid"] and on_disk["num_samples"] == 23
  p = on_disk["protocol"]
  assert p["sampler"] == "ddim" and p["num_steps"] == 10 and p["num_samples"] == 23
  assert p["inception"]["source_sha256"] == "abc123" and "round" in p["uint8_conversion"]
  assert p["reference"]["sha256"] and p["reference"]["num_images"] == 40
  assert p["precision_recall"] == {"k": 3, "num_samples": 23}
  assert writes and writes[0][0] == 5 and writes[0][1]["eval/fid"] == res["fid"]

  # Resuming the same folder with another protocol stops instead of mixing samples.
  with pytest.raises(ValueError, match="different protocol"):
    sample_quality.evaluate_sample_quality(sample_batch_fn, **{**kw, "protocol": {"sampler": "x"}})


def test_evaluate_sample_quality_bad_inputs(tmp_path):
  from diffusion_jax.evaluation import sample_quality
  ext = _StubExtractor(8 * 8 * 3)
  ref8 = _make_reference(tmp_path, ext)
  ok = lambda key, n: np.zeros((n, 8, 8, 3), np.float32)
  kw = dict(num_samples=6, batch_size=3, protocol={}, extractor=ext)

  def run(fn=ok, name="a", **cfg):
    return sample_quality.evaluate_sample_quality(
        fn, eval_config=cfg, workdir=str(tmp_path / "wd"), name=name, **kw)

  with pytest.raises(FileNotFoundError, match="fid_stats"):
    run(reference_stats=str(tmp_path / "nope.npz"))
  with pytest.raises(ValueError, match="reference_stats"):
    run(reference_stats=None)
  bad = str(tmp_path / "bad.npz")
  np.savez(bad, mu=np.zeros(32), sigma=np.eye(32))
  with pytest.raises(ValueError, match=r"mu \(64,\) and sigma \(64, 64\)"):
    run(reference_stats=bad)
  # Samples at 16x16 against 8x8 reference statistics.
  with pytest.raises(ValueError, match=r"\[16, 16, 3\].*\[8, 8, 3\]"):
    run(lambda key, n: np.zeros((n, 16, 16, 3)), name="b", reference_stats=ref8)
  # The sampler returns the wrong batch size / layout.
  with pytest.raises(ValueError, match=r"sample_batch_fn.*\[3, H, W, C\]"):
    run(lambda key, n: np.zeros((n, 3, 8, 8)), name="c", reference_stats=ref8)
  # Reference computed with other Inception weights.
  other = _StubExtractor(8 * 8 * 3, sha="other")
  with pytest.raises(ValueError, match="sha256"):
    sample_quality.evaluate_sample_quality(ok, eval_config={"reference_stats": ref8},
                                           workdir=str(tmp_path / "wd"), name="d",
                                           **{**kw, "extractor": other})
  # No extractor given and no weights file: the error says where to get it and how to check it.
  kw["extractor"] = None
  with pytest.raises(FileNotFoundError, match="(?s)pytorch-fid/releases.*sha256sum"):
    run(name="e", reference_stats=ref8, inception_weights=str(tmp_path / "missing.pth"))
  with pytest.raises(ValueError, match="never downloaded"):
    run(name="e", reference_stats=ref8)
