"""Tests of diffusion_jax.evaluation.metrics against independent numpy/scipy references."""
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


def test_frechet_distance_closed_form_commuting_singular():
  # Diagonal (commuting) covariances with exact zeros: d^2 = |mu1-mu2|^2 + sum (sqrt a - sqrt b)^2.
  rng = np.random.default_rng(2)
  a = rng.uniform(0, 2, size=50)
  b = rng.uniform(0, 2, size=50)
  a[:10] = 0.0
  b[5:15] = 0.0
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
