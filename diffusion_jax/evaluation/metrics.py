"""Sample-quality metrics on Inception features: FID, Inception Score, precision/recall.

Everything here works on features that were already extracted (see `inception.py`), so it is
cheap to test against independent references on fixed arrays.

* `frechet_distance`: FID (Heusel et al. 2017, eq. 6) between two Gaussians, in float64.
* `inception_score`: IS (Salimans et al. 2016), `exp(E_x KL(p(y|x) || p(y)))`, 10 splits.
* `precision_recall`: improved precision and recall (Kynkaanniemi et al. 2019, eqs. 1-3) with
  k-NN hyperspheres, k = 3.
* `StreamingStats`: mean/covariance of features accumulated over batches in float64.

This module imports numpy, scipy and jax only (no TensorFlow, no weights).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special


def _as_float64(x, name: str, ndim: int) -> np.ndarray:
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != ndim:
    raise ValueError(f"`{name}` must have {ndim} dimension(s), got shape {x.shape}.")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"`{name}` contains non-finite values (NaN/inf); recompute the statistics.")
  return x


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """Symmetric PSD square root via eigh; small negative eigenvalues (round-off) are clipped."""
  w, v = np.linalg.eigh(sigma)
  w = np.clip(w, 0.0, None)
  return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID formula).

  d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})   (Heusel et al., eq. 6)

  Tr((sigma1 sigma2)^{1/2}) is computed as the sum of sqrt(eigenvalues) of the symmetric PSD
  matrix B^T sigma2 B, where sigma1 = B B^T (B = Cholesky factor, or the PSD square root when
  sigma1 is singular); it has the same eigenvalues as sigma1 sigma2.
  This never leaves the reals and needs no epsilon offset, so rank-deficient covariances
  (fewer samples than feature dimensions) are handled exactly, where `scipy.linalg.sqrtm` of the
  non-symmetric product can return complex values or NaN. On well-conditioned inputs the result
  equals pytorch-fid's `calculate_frechet_distance` to float64 round-off.

  Args:
    mu1: [D] mean of the first set of features.
    sigma1: [D, D] covariance of the first set.
    mu2: [D] mean of the second set (e.g. the reference statistics).
    sigma2: [D, D] covariance of the second set.

  Returns:
    The squared Frechet distance as a Python float (>= 0 up to round-off).
  """
  mu1 = _as_float64(mu1, "mu1", 1)
  mu2 = _as_float64(mu2, "mu2", 1)
  sigma1 = _as_float64(sigma1, "sigma1", 2)
  sigma2 = _as_float64(sigma2, "sigma2", 2)
  d = mu1.shape[0]
  if mu2.shape != (d,):
    raise ValueError(f"`mu1` has shape {mu1.shape} but `mu2` has shape {mu2.shape}; the two "
                     "statistics must come from the same feature layer.")
  for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
    if s.shape != (d, d):
      raise ValueError(f"`{name}` must have shape ({d}, {d}) to match the means, got {s.shape}.")
  # Symmetrize: covariances accumulated in floating point are symmetric only up to round-off.
  sigma1 = 0.5 * (sigma1 + sigma1.T)
  sigma2 = 0.5 * (sigma2 + sigma2.T)
  try:
    # sigma1 = L L^T: L^T sigma2 L has the eigenvalues of sigma1 sigma2 and costs one Cholesky
    # instead of a full eigendecomposition (the common case: more samples than dimensions).
    chol = np.linalg.cholesky(sigma1)
    m = chol.T @ sigma2 @ chol
  except np.linalg.LinAlgError:
    # Singular sigma1 (e.g. fewer samples than dimensions): the PSD square root always exists.
    sqrt1 = _psd_sqrt(sigma1)
    m = sqrt1 @ sigma2 @ sqrt1
  eig = np.linalg.eigvalsh(0.5 * (m + m.T))
  tr_covmean = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def inception_score(logits, *, num_splits: int = 10) -> Tuple[float, float]:
  """Inception Score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), mean and std over splits.

  The samples are cut, in order and without shuffling, into `num_splits` contiguous parts
  `[i*N//s, (i+1)*N//s)` as in the original `inception_score.py` of improved-gan; p(y) is the
  marginal within each part. With the FID Inception, pass the 1008-way logits computed WITHOUT
  the final bias (`logits_unbiased`), as the original TF code and torch-fidelity do.

  Args:
    logits: [N, C] pre-softmax class scores.
    num_splits: number of parts (10 in the papers).

  Returns:
    (mean, std) of the per-split scores, as Python floats.
  """
  logits = _as_float64(logits, "logits", 2)
  n = logits.shape[0]
  if not 1 <= num_splits <= n:
    raise ValueError(f"`num_splits` must be in [1, N={n}], got {num_splits}.")
  logits = logits - logits.max(axis=1, keepdims=True)
  log_p = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
  p = np.exp(log_p)
  scores = []
  for i in range(num_splits):
    part_log_p = log_p[i * n // num_splits:(i + 1) * n // num_splits]
    part_p = p[i * n // num_splits:(i + 1) * n // num_splits]
    # log p(y) = log mean_x p(y|x), via logsumexp so classes no sample predicts stay finite.
    log_py = scipy.special.logsumexp(part_log_p, axis=0, keepdims=True) - np.log(len(part_p))
    kl = np.sum(part_p * (part_log_p - log_py), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores)), float(np.std(scores))


@jax.jit
def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  """[A, D], [B, D] -> [A, B] squared Euclidean distances, float32 with HIGHEST matmul precision."""
  ab = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  d = jnp.sum(a * a, axis=1)[:, None] - 2.0 * ab + jnp.sum(b * b, axis=1)[None, :]
  return jnp.maximum(d, 0.0)


def _kth_nn_radii(feats: np.ndarray, k: int, row_batch: int) -> np.ndarray:
  """Squared distance of each row to its k-th nearest neighbour in `feats` (itself excluded)."""
  all_f = jnp.asarray(feats)
  radii = []
  for s in range(0, feats.shape[0], row_batch):
    d = _sq_dists(jnp.asarray(feats[s:s + row_batch]), all_f)
    # The smallest entry is the point itself (0); index k of the sorted row is the k-th neighbour.
    radii.append(np.asarray(jnp.sort(d, axis=1)[:, k]))
  return np.concatenate(radii)


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray,
              row_batch: int) -> float:
  """Fraction of `queries` inside at least one ball (manifold[j], radii[j]) (Kynkaanniemi eq. 1)."""
  m = jnp.asarray(manifold)
  r = jnp.asarray(radii)
  inside = []
  for s in range(0, queries.shape[0], row_batch):
    d = _sq_dists(jnp.asarray(queries[s:s + row_batch]), m)
    inside.append(np.asarray(jnp.any(d <= r[None, :], axis=1)))
  return float(np.mean(np.concatenate(inside)))


def precision_recall(real_features, fake_features, k: int = 3, *,
                     row_batch: int = 1024) -> Tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

  Each feature set defines a manifold: the union of balls centred at its points with radius the
  distance to the point's k-th nearest neighbour in the same set. Precision is the fraction of
  fake samples inside the real manifold; recall is the fraction of real samples inside the fake
  manifold (a point on a ball's boundary counts as inside). Distances run in JAX (float32) in
  blocks of `row_batch` rows, so 50k x 50k comparisons fit on an accelerator.

  Args:
    real_features: [N, D] features of real images.
    fake_features: [M, D] features of generated images.
    k: neighbourhood size (3 in the paper).
    row_batch: rows of the distance matrix computed at once.

  Returns:
    (precision, recall) in [0, 1], as Python floats.
  """
  real = np.asarray(real_features, np.float32)
  fake = np.asarray(fake_features, np.float32)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError("`real_features` and `fake_features` must be [N, D] and [M, D] with the same "
                     f"D, got {real.shape} and {fake.shape}.")
  for name, f in (("real_features", real), ("fake_features", fake)):
    if not k < f.shape[0]:
      raise ValueError(f"`k`={k} needs more than k rows in `{name}`, got {f.shape[0]}.")
  real_radii = _kth_nn_radii(real, k, row_batch)
  fake_radii = _kth_nn_radii(fake, k, row_batch)
  precision = _coverage(real, real_radii, fake, row_batch)
  recall = _coverage(fake, fake_radii, real, row_batch)
  return precision, recall


@dataclasses.dataclass
class StreamingStats:
  """Mean and covariance of feature vectors accumulated over batches in float64.

  Keeps the count, the sum and the sum of outer products; `update` may be called with batches of
  any size (the last, partial batch included), so no image is dropped. The covariance is the
  unbiased one (divisor N - 1), as `np.cov(features, rowvar=False)` in pytorch-fid.

  Accumulating raw second moments loses precision when |mean| >> std; features are therefore
  centred on the first batch's mean (a fixed shift) before accumulation, which keeps float64
  exact to ~1e-12 relative for Inception features.
  """
  dim: int
  count: int = 0
  _shift: Optional[np.ndarray] = None
  _sum: Optional[np.ndarray] = None
  _outer: Optional[np.ndarray] = None

  def update(self, features) -> None:
    """Adds a [B, D] batch of features (any B >= 0)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[1] != self.dim:
      raise ValueError(f"`features` must be [B, {self.dim}], got shape {f.shape}.")
    if f.shape[0] == 0:
      return
    if self._shift is None:
      self._shift = f.mean(axis=0)
      self._sum = np.zeros(self.dim, np.float64)
      self._outer = np.zeros((self.dim, self.dim), np.float64)
    c = f - self._shift
    self._sum += c.sum(axis=0)
    self._outer += c.T @ c
    self.count += f.shape[0]

  def mean_cov(self) -> Tuple[np.ndarray, np.ndarray]:
    """Returns (mu [D], sigma [D, D]) in float64; needs at least 2 features."""
    if self.count < 2:
      raise ValueError(f"need at least 2 features for a covariance, got {self.count}.")
    m = self._sum / self.count
    cov = (self._outer - self.count * np.outer(m, m)) / (self.count - 1)
    return self._shift + m, 0.5 * (cov + cov.T)
