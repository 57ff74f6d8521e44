"""An exact denoiser: data from a mixture of isotropic Gaussians has E[x_0 | x_t] in closed form.

This is the project's oracle for samplers and likelihoods: plugged in as `model_fn`, it is the
best possible network, so a sampler's error measured with it is the sampler's own error.

Data: x_0 ~ sum_k w_k N(mu_k, s_k^2 I) in D = prod(event_shape) dimensions. Under the forward
process x_t = a x_0 + sigma eps (a = sqrt(abar_t), sigma^2 = 1 - abar_t):
  p(x_t | k) = N(a mu_k, v_k I), v_k = a^2 s_k^2 + sigma^2,
  E[x_0 | x_t, k] = mu_k + (a s_k^2 / v_k)(x_t - a mu_k),
  Var[x_0 | x_t, k] = s_k^2 sigma^2 / v_k (per dimension),
and E[x_0 | x_t] averages the component means with the posterior responsibilities
p(k | x_t) = w_k N(x_t; a mu_k, v_k I) / q_t(x_t). When the components are the classes, p(k | x_t)
is the exact noisy-image classifier and E[eps | x_t, k] the exact class-conditional model: the
oracle of classifier and classifier-free guidance (`diffusion_jax.guidance`).
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

  def _terms(self, x_t: jnp.ndarray, abar: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """log w_k p(x_t | k) [B, K] and the per-component posterior means E[x_0 | x_t, k] [B, K, D]."""
    batch = x_t.shape[0]
    x = x_t.reshape(batch, 1, -1)
    mus = self.means.reshape(1, self.means.shape[0], -1)
    dim = x.shape[-1]
    a = jnp.sqrt(abar).reshape(batch, 1, 1)
    s2 = jnp.square(self.stds).reshape(1, -1, 1)
    v = a**2 * s2 + (1.0 - abar).reshape(batch, 1, 1)
    resid = x - a * mus
    log_lik = -0.5 * (jnp.sum(resid**2, axis=-1) / v[..., 0] + dim * jnp.log(2 * jnp.pi * v[..., 0]))
    return jnp.log(self.weights)[None, :] + log_lik, mus + (a * s2 / v) * resid

  def posterior_mean(self, x_t: jnp.ndarray, abar: jnp.ndarray) -> jnp.ndarray:
    """E[x_0 | x_t] for x_t [B, *event_shape] at noise levels abar [B]."""
    log_joint, cond_means = self._terms(x_t, abar)
    return jnp.einsum("bk,bkd->bd", jax.nn.softmax(log_joint, axis=-1), cond_means).reshape(x_t.shape)

  def marginal_log_prob(self, x_t: jnp.ndarray, abar: jnp.ndarray) -> jnp.ndarray:
    """log q_t(x_t) [B], the density of the noised data at noise level abar [B]."""
    return jax.nn.logsumexp(self._terms(x_t, abar)[0], axis=-1)

  def class_log_probs(self, x_t: jnp.ndarray, abar: jnp.ndarray) -> jnp.ndarray:
    """log p(k | x_t) [B, K]: the exact noisy classifier when the components are the classes."""
    return jax.nn.log_softmax(self._terms(x_t, abar)[0], axis=-1)

  def conditional_eps(self, x_t: jnp.ndarray, abar: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """E[eps | x_t, y] [B, *event_shape] for labels y [B]; y = K (the null label) gives E[eps | x_t].

    Given its class the data is one Gaussian, so this is -sqrt(1 - abar) grad log p(x_t | y).
    """
    log_joint, cond_means = self._terms(x_t, abar)
    uncond = jnp.einsum("bk,bkd->bd", jax.nn.softmax(log_joint, axis=-1), cond_means)
    x0 = jnp.concatenate([cond_means, uncond[:, None]], axis=1)          # [B, K + 1, D]
    x0 = jnp.take_along_axis(x0, labels.astype(jnp.int32)[:, None, None], axis=1)[:, 0]
    return _eps_from_x0(x_t, abar, x0.reshape(x_t.shape))

  @property
  def num_components(self) -> int:
    return self.weights.shape[0]

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
