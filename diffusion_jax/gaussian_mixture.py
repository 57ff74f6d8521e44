"""An exact denoiser: data from a mixture of isotropic Gaussians has E[x_0 | x_t] in closed form.

This is the project's oracle for samplers and likelihoods: plugged in as `model_fn`, it is the
best possible network, so a sampler's error measured with it is the sampler's own error.

Data: x_0 ~ sum_k w_k N(mu_k, s_k^2 I) in D = prod(event_shape) dimensions. Under the forward
process x_t = a x_0 + sigma eps (a = sqrt(abar_t), sigma^2 = 1 - abar_t):
  p(x_t | k) = N(a mu_k, v_k I), v_k = a^2 s_k^2 + sigma^2,
  E[x_0 | x_t, k] = mu_k + (a s_k^2 / v_k)(x_t - a mu_k),
  Var[x_0 | x_t, k] = s_k^2 sigma^2 / v_k (per dimension),
and E[x_0 | x_t] averages the component means with the posterior responsibilities.
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.schedules import DiffusionSchedule, extract


@flax.struct.dataclass
class GaussianMixture:
  """weights [K], means [K, *event_shape], stds [K] (isotropic per component)."""
  weights: jnp.ndarray
  means: jnp.ndarray
  stds: jnp.ndarray

  @classmethod
  def create(cls, weights: Sequence[float], means, stds: Sequence[float]) -> "GaussianMixture":
    weights = np.asarray(weights, np.float64)
    if np.any(weights < 0) or not np.isclose(weights.sum(), 1.0):
      raise ValueError(f"weights must be non-negative and sum to 1, got {weights}.")
    means = np.asarray(means, np.float32)
    stds = np.asarray(stds, np.float32)
    if means.shape[0] != weights.shape[0] or stds.shape != weights.shape:
      raise ValueError(f"weights {weights.shape}, means {means.shape} and stds {stds.shape} disagree on K.")
    return cls(jnp.asarray(weights, jnp.float32), jnp.asarray(means), jnp.asarray(stds))

  @property
  def event_shape(self) -> tuple[int, ...]:
    return tuple(self.means.shape[1:])

  def sample(self, key: jax.Array, num: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Returns (x_0 [num, *event_shape], component labels int32 [num])."""
    key_k, key_x = jax.random.split(key)
    labels = jax.random.choice(key_k, self.weights.shape[0], (num,), p=self.weights)
    noise = jax.random.normal(key_x, (num,) + self.event_shape)
    stds = self.stds[labels].reshape((num,) + (1,) * len(self.event_shape))
    return self.means[labels] + stds * noise, labels.astype(jnp.int32)

  def _component_terms(self, x_t: jnp.ndarray, abar: jnp.ndarray):
    """Responsibilities [B, K] and per-component posterior means [B, K, D]."""
    batch = x_t.shape[0]
    x = x_t.reshape(batch, 1, -1)
    mus = self.means.reshape(1, self.means.shape[0], -1)
    dim = x.shape[-1]
    a = jnp.sqrt(abar).reshape(batch, 1, 1)
    s2 = jnp.square(self.stds).reshape(1, -1, 1)
    v = a**2 * s2 + (1.0 - abar).reshape(batch, 1, 1)
    resid = x - a * mus
    log_lik = -0.5 * (jnp.sum(resid**2, axis=-1) / v[..., 0] + dim * jnp.log(2 * jnp.pi * v[..., 0]))
    resp = jax.nn.softmax(jnp.log(self.weights)[None, :] + log_lik, axis=-1)
    return resp, mus + (a * s2 / v) * resid

  def posterior_mean(self, x_t: jnp.ndarray, abar: jnp.ndarray) -> jnp.ndarray:
    """E[x_0 | x_t] for x_t [B, *event_shape] at noise levels abar [B]."""
    resp, cond_means = self._component_terms(x_t, abar)
    return jnp.einsum("bk,bkd->bd", resp, cond_means).reshape(x_t.shape)

  def marginal_log_prob(self, x_t: jnp.ndarray, abar: jnp.ndarray) -> jnp.ndarray:
    """log q_t(x_t) [B], the density of the noised data at noise level abar [B]."""
    batch = x_t.shape[0]
    x = x_t.reshape(batch, 1, -1)
    dim = x.shape[-1]
    a = jnp.sqrt(abar).reshape(batch, 1)
    v = a**2 * jnp.square(self.stds)[None] + (1.0 - abar).reshape(batch, 1)
    resid2 = jnp.sum((x - a[..., None] * self.means.reshape(1, self.means.shape[0], -1))**2, axis=-1)
    log_lik = -0.5 * (resid2 / v + dim * jnp.log(2 * jnp.pi * v))
    return jax.nn.logsumexp(jnp.log(self.weights)[None] + log_lik, axis=-1)

  def x0_model_fn(self, schedule: DiffusionSchedule):
    """model_fn(x_t, t) -> E[x_0 | x_t] for mean_type="x0"; t indexes `schedule` (the original chain)."""
    return lambda x_t, t: self.posterior_mean(x_t, schedule.alphas_cumprod[t])

  def eps_model_fn(self, schedule: DiffusionSchedule):
    """model_fn(x_t, t) -> E[eps | x_t] for mean_type="eps"; t indexes `schedule` (the original chain)."""

    def eps(x_t, t):
      abar = extract(schedule.alphas_cumprod, t, x_t.shape)
      return (x_t - jnp.sqrt(abar) * self.posterior_mean(x_t, schedule.alphas_cumprod[t])) / jnp.sqrt(1.0 - abar)

    return eps
