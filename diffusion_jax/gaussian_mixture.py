"""An exact denoiser: data from a mixture of isotropic Gaussians has E[x_0 | x_t] in closed form.

This is the project's oracle for samplers and likelihoods: plugged in as `model_fn`, it is the
best possible network, so a sampler's error measured with it is the sampler's own error.

Data: x_0 ~ sum_k w_k N(mu_k, s_k^2 I) in D = prod(event_shape) dimensions. Under any Gaussian
perturbation x_t = a x_0 + sigma eps (DDPM: a = sqrt(abar_t), sigma^2 = 1 - abar_t; the SDEs of
`diffusion_jax.sde`: a(t), sigma(t) of `marginal_coefs`, VE included with a = 1):
  p(x_t | k) = N(a mu_k, v_k I), v_k = a^2 s_k^2 + sigma^2,
  E[x_0 | x_t, k] = mu_k + (a s_k^2 / v_k)(x_t - a mu_k),
  Var[x_0 | x_t, k] = s_k^2 sigma^2 / v_k (per dimension),
and E[x_0 | x_t] averages the component means with the posterior responsibilities. The score
follows by Tweedie's formula, grad log p(x_t) = (a E[x_0 | x_t] - x_t) / sigma^2.
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers import grids
from diffusion_jax.schedules import DiffusionSchedule


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

  def _component_terms(self, x: jnp.ndarray, scale: jnp.ndarray, std: jnp.ndarray):
    """For x = scale x_0 + std z (scale, std [B]): responsibilities [B, K], log w_k p(x | k) [B, K],
    residuals x - a mu_k [B, K, D] and variances v_k [B, K, 1]."""
    batch = x.shape[0]
    x = x.reshape(batch, 1, -1)
    mus = self.means.reshape(1, self.means.shape[0], -1)
    dim = x.shape[-1]
    a = scale.reshape(batch, 1, 1)
    s2 = jnp.square(self.stds).reshape(1, -1, 1)
    v = a**2 * s2 + jnp.square(std).reshape(batch, 1, 1)
    resid = x - a * mus
    log_lik = -0.5 * (jnp.sum(resid**2, axis=-1) / v[..., 0] + dim * jnp.log(2 * jnp.pi * v[..., 0]))
    log_joint = jnp.log(self.weights)[None, :] + log_lik
    return jax.nn.softmax(log_joint, axis=-1), log_joint, resid, v

  def perturbed_posterior_mean(self, x: jnp.ndarray, scale: jnp.ndarray, std: jnp.ndarray) -> jnp.ndarray:
    """E[x_0 | x] for x = scale x_0 + std z, z ~ N(0, I); x [B, *event_shape], scale, std [B]."""
    resp, _, resid, v = self._component_terms(x, scale, std)
    a = scale.reshape(-1, 1, 1)
    cond_means = self.means.reshape(1, self.means.shape[0], -1) + (a * jnp.square(self.stds)[None, :, None] / v) * resid
    return jnp.einsum("bk,bkd->bd", resp, cond_means).reshape(x.shape)

  def perturbed_log_prob(self, x: jnp.ndarray, scale: jnp.ndarray, std: jnp.ndarray) -> jnp.ndarray:
    """log p(x) [B] of x = scale x_0 + std z."""
    return jax.nn.logsumexp(self._component_terms(x, scale, std)[1], axis=-1)

  def perturbed_score(self, x: jnp.ndarray, scale: jnp.ndarray, std: jnp.ndarray) -> jnp.ndarray:
    """grad_x log p(x) = sum_k r_k (a mu_k - x) / v_k of x = scale x_0 + std z, [B, *event_shape].

    Equal to Tweedie's (a E[x_0 | x] - x) / std^2, but without its cancellation at small std.
    """
    resp, _, resid, v = self._component_terms(x, scale, std)
    return -jnp.einsum("bk,bkd->bd", resp, resid / v).reshape(x.shape)

  def posterior_mean(self, x_t: jnp.ndarray, abar: jnp.ndarray) -> jnp.ndarray:
    """E[x_0 | x_t] for x_t [B, *event_shape] at DDPM noise levels abar [B]."""
    return self.perturbed_posterior_mean(x_t, jnp.sqrt(abar), jnp.sqrt(1.0 - abar))

  def marginal_log_prob(self, x_t: jnp.ndarray, abar: jnp.ndarray) -> jnp.ndarray:
    """log q_t(x_t) [B], the density of the noised data at DDPM noise level abar [B]."""
    return self.perturbed_log_prob(x_t, jnp.sqrt(abar), jnp.sqrt(1.0 - abar))

  def score_fn(self, sde):
    """score_fn(x, t) -> grad log p_t(x), the exact score of the data under an `sde.SDE` at time t."""

    def score(x, t):
      t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
      return self.perturbed_score(x, *sde.marginal_coefs(t))

    return score

  def x0_model_fn(self, schedule: DiffusionSchedule):
    """model_fn(x_t, t) -> E[x_0 | x_t] for mean_type="x0".

    t indexes `schedule` (the original chain); float t (DPM-Solver between steps) uses the
    continuous-time abar of `grids.alphas_cumprod_at`.
    """
    return lambda x_t, t: self.posterior_mean(x_t, grids.alphas_cumprod_at(schedule, t))

  def eps_model_fn(self, schedule: DiffusionSchedule):
    """model_fn(x_t, t) -> E[eps | x_t] for mean_type="eps"; t as in `x0_model_fn`."""

    def eps(x_t, t):
      abar = grids.alphas_cumprod_at(schedule, t)
      return _eps_from_x0(x_t, abar, self.posterior_mean(x_t, abar))

    return eps

  # --- Classes: the components as labels (the oracle of diffusion_jax.guidance). -------------
  # p(k | x_t) is the exact noisy classifier and E[eps | x_t, k] the exact class-conditional
  # model, with k = K as the null label of classifier-free guidance.

  def class_log_probs(self, x_t: jnp.ndarray, abar: jnp.ndarray) -> jnp.ndarray:
    """log p(k | x_t) [B, K]: the exact noisy classifier when the components are the classes."""
    _, log_joint, _, _ = self._component_terms(x_t, jnp.sqrt(abar), jnp.sqrt(1.0 - abar))
    return jax.nn.log_softmax(log_joint, axis=-1)

  def conditional_eps(self, x_t: jnp.ndarray, abar: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """E[eps | x_t, y] [B, *event_shape] for labels y [B]; y = K (the null label) gives E[eps | x_t].

    Given its class the data is one Gaussian, so this is -sqrt(1 - abar) grad log p(x_t | y).
    """
    resp, _, resid, v = self._component_terms(x_t, jnp.sqrt(abar), jnp.sqrt(1.0 - abar))
    s2 = jnp.square(self.stds)[None, :, None]
    cond_means = self.means.reshape(1, self.num_components, -1) + (jnp.sqrt(abar)[:, None, None] * s2 / v) * resid
    uncond = jnp.einsum("bk,bkd->bd", resp, cond_means)
    x0 = jnp.concatenate([cond_means, uncond[:, None]], axis=1)          # [B, K + 1, D]
    x0 = jnp.take_along_axis(x0, labels.astype(jnp.int32)[:, None, None], axis=1)[:, 0]
    return _eps_from_x0(x_t, abar, x0.reshape(x_t.shape))

  @property
  def num_components(self) -> int:
    return self.weights.shape[0]

  def class_logits_fn(self, schedule: DiffusionSchedule):
    """classifier_fn(x_t, t) -> log p(k | x_t) [B, K], the exact noisy classifier; t as in `x0_model_fn`."""
    return lambda x_t, t: self.class_log_probs(x_t, grids.alphas_cumprod_at(schedule, t))

  def cond_eps_model_fn(self, schedule: DiffusionSchedule):
    """cond_model_fn(x_t, t, labels) -> E[eps | x_t, y], with the null label K meaning "no label".

    The exact model a classifier-free-guidance network learns with label dropout; t as in
    `x0_model_fn`.
    """
    return lambda x_t, t, labels: self.conditional_eps(x_t, grids.alphas_cumprod_at(schedule, t), labels)


def _eps_from_x0(x_t: jnp.ndarray, abar: jnp.ndarray, x0: jnp.ndarray) -> jnp.ndarray:
  """eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar), abar [B] broadcast against x_t [B, ...]."""
  a = abar.reshape((-1,) + (1,) * (x_t.ndim - 1))
  return (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
