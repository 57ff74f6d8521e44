"""The DDPM equations: forward process, posterior, and the reverse-process parameterizations.

Notation (Ho et al. 2020): abar_t = prod_{s<=t} (1 - beta_s); x_t = sqrt(abar_t) x_0 +
sqrt(1 - abar_t) eps. Every function takes a `DiffusionSchedule`, arrays [B, ...] and int32
timesteps t [B] indexing that schedule. Nothing here draws randomness: noise is an argument.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import chex
import flax.struct
import jax.numpy as jnp

from diffusion_jax.schedules import DiffusionSchedule, extract

MeanType = Literal["eps", "x0", "mean", "v"]
VarType = Literal["fixedlarge", "fixedsmall", "learned", "learned_range"]
MEAN_TYPES: tuple[str, ...] = ("eps", "x0", "mean", "v")
VAR_TYPES: tuple[str, ...] = ("fixedlarge", "fixedsmall", "learned", "learned_range")
LEARNED_VAR_TYPES: tuple[str, ...] = ("learned", "learned_range")


def check_option(argument: str, value: str, allowed: Sequence[str]) -> None:
  """Raises a ValueError naming `argument` and the allowed values when `value` is not one."""
  if value not in allowed:
    raise ValueError(f"{argument}={value!r} is not supported; choose one of {', '.join(map(repr, allowed))}.")


def model_output_channels(num_channels: int, var_type: VarType) -> int:
  """Channels the model must output: C, or 2C when it also predicts the variance."""
  check_option("var_type", var_type, VAR_TYPES)
  return 2 * num_channels if var_type in LEARNED_VAR_TYPES else num_channels


def _check_batch(x: jnp.ndarray, t: jnp.ndarray, *others: jnp.ndarray) -> None:
  chex.assert_rank(t, 1)
  if t.shape[0] != x.shape[0]:
    raise ValueError(f"t has shape {t.shape}; expected ({x.shape[0]},) to match the batch of x {x.shape}.")
  for other in others:
    chex.assert_equal_shape([x, other])


def q_mean_variance(schedule: DiffusionSchedule, x_start: jnp.ndarray, t: jnp.ndarray
                    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM Eq. 4).

  Returns:
    (mean [B, ...], variance [B, 1, ...], log_variance [B, 1, ...]).
  """
  _check_batch(x_start, t)
  mean = extract(schedule.sqrt_alphas_cumprod, t, x_start.shape) * x_start
  log_variance = extract(schedule.log_one_minus_alphas_cumprod, t, x_start.shape)
  variance = jnp.exp(log_variance)  # not 1 - abar in float32, which cancels at small t
  return mean, variance, log_variance


def q_sample(schedule: DiffusionSchedule, x_start: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray
             ) -> jnp.ndarray:
  """Draws x_t ~ q(x_t | x_0) with the given standard-normal `noise` (DDPM Eq. 4).

  Args:
    schedule: the diffusion.
    x_start: x_0 [B, ...].
    t: int32 [B].
    noise: eps [B, ...], same shape as x_start.

  Returns:
    x_t [B, ...].
  """
  _check_batch(x_start, t, noise)
  return (extract(schedule.sqrt_alphas_cumprod, t, x_start.shape) * x_start
          + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)


def q_posterior_mean_variance(schedule: DiffusionSchedule, x_start: jnp.ndarray, x_t: jnp.ndarray,
                              t: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """q(x_{t-1} | x_t, x_0) = N(mu-tilde_t, beta-tilde_t I) (DDPM Eqs. 6-7).

  Returns:
    (mean [B, ...], variance [B, 1, ...], clipped log_variance [B, 1, ...]).
  """
  _check_batch(x_start, t, x_t)
  mean = (extract(schedule.posterior_mean_coef1, t, x_t.shape) * x_start
          + extract(schedule.posterior_mean_coef2, t, x_t.shape) * x_t)
  variance = extract(schedule.posterior_variance, t, x_t.shape)
  log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t.shape)
  return mean, variance, log_variance


def predict_start_from_noise(schedule: DiffusionSchedule, x_t: jnp.ndarray, t: jnp.ndarray,
                             noise: jnp.ndarray) -> jnp.ndarray:
  """x_0 = x_t / sqrt(abar_t) - sqrt(1/abar_t - 1) eps (DDPM Eq. 4 solved for x_0)."""
  _check_batch(x_t, t, noise)
  return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
          - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * noise)


def predict_noise_from_start(schedule: DiffusionSchedule, x_t: jnp.ndarray, t: jnp.ndarray,
                             pred_xstart: jnp.ndarray) -> jnp.ndarray:
  """eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1/abar_t - 1), the inverse of `predict_start_from_noise`."""
  _check_batch(x_t, t, pred_xstart)
  return ((extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart)
          / extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.shape))


def predict_v(schedule: DiffusionSchedule, x_start: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray
              ) -> jnp.ndarray:
  """The v-prediction target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022)."""
  _check_batch(x_start, t, noise)
  return (extract(schedule.sqrt_alphas_cumprod, t, x_start.shape) * noise
          - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * x_start)


def predict_start_from_v(schedule: DiffusionSchedule, x_t: jnp.ndarray, t: jnp.ndarray,
                         v: jnp.ndarray) -> jnp.ndarray:
  """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
  _check_batch(x_t, t, v)
  return (extract(schedule.sqrt_alphas_cumprod, t, x_t.shape) * x_t
          - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * v)


def predict_start_from_prev_mean(schedule: DiffusionSchedule, x_t: jnp.ndarray, t: jnp.ndarray,
                                 mean: jnp.ndarray) -> jnp.ndarray:
  """Solves mu-tilde_t(x_0, x_t) = mean for x_0 (the "mean" / x_{t-1} parameterization)."""
  _check_batch(x_t, t, mean)
  return ((mean - extract(schedule.posterior_mean_coef2, t, x_t.shape) * x_t)
          / extract(schedule.posterior_mean_coef1, t, x_t.shape))


@flax.struct.dataclass
class MeanVariance:
  """p(x_{t-1} | x_t) = N(mean, variance) and the model's estimate of x_0; all [B, ...]."""
  mean: jnp.ndarray
  variance: jnp.ndarray
  log_variance: jnp.ndarray
  pred_xstart: jnp.ndarray


def split_model_output(model_output: jnp.ndarray, x_t: jnp.ndarray, var_type: VarType
                       ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
  """Splits a [B, ..., 2C] output into its mean part and variance part (None for fixed variances)."""
  expected = model_output_channels(x_t.shape[-1], var_type)
  if model_output.shape[:-1] != x_t.shape[:-1] or model_output.shape[-1] != expected:
    raise ValueError(
        f"model_output has shape {model_output.shape}; with var_type={var_type!r} and x_t of shape "
        f"{x_t.shape} it must be {x_t.shape[:-1] + (expected,)}.")
  if var_type in LEARNED_VAR_TYPES:
    mean_part, var_part = jnp.split(model_output, 2, axis=-1)
    return mean_part, var_part
  return model_output, None


def model_log_variance(schedule: DiffusionSchedule, var_part: jnp.ndarray | None, x_t: jnp.ndarray,
                       t: jnp.ndarray, var_type: VarType) -> jnp.ndarray:
  """The reverse-process log-variance, broadcast to x_t.shape (docs/conventions.md)."""
  if var_type == "fixedlarge":
    log_var = extract(schedule.fixedlarge_log_variance, t, x_t.shape)
  elif var_type == "fixedsmall":
    log_var = extract(schedule.posterior_log_variance_clipped, t, x_t.shape)
  elif var_type == "learned":
    log_var = var_part
  elif var_type == "learned_range":
    # Improved DDPM Eq. 15: interpolate between log beta-tilde_t and log beta_t in log space.
    frac = (var_part + 1.0) / 2.0
    min_log = extract(schedule.posterior_log_variance_clipped, t, x_t.shape)
    max_log = extract(schedule.log_betas, t, x_t.shape)
    log_var = frac * max_log + (1.0 - frac) * min_log
  else:
    check_option("var_type", var_type, VAR_TYPES)
  return jnp.broadcast_to(log_var, x_t.shape)


def p_mean_variance(schedule: DiffusionSchedule, model_output: jnp.ndarray, x_t: jnp.ndarray,
                    t: jnp.ndarray, *, mean_type: MeanType, var_type: VarType,
                    clip_denoised: bool = True) -> MeanVariance:
  """The reverse step p(x_{t-1} | x_t) from a model's output.

  Args:
    schedule: the diffusion.
    model_output: [B, H, W, C], or [B, H, W, 2C] for learned variances (mean part first).
    x_t: [B, H, W, C].
    t: int32 [B], steps of `schedule`.
    mean_type: what the model predicts: "eps" (noise), "x0", "mean" (mu of x_{t-1}) or "v".
    var_type: "fixedlarge" (beta_t), "fixedsmall" (beta-tilde_t), "learned" (the model's
      log-variance) or "learned_range" (Improved DDPM's interpolation).
    clip_denoised: clip the predicted x_0 to [-1, 1] before forming the mean (for sampling;
      training losses never clip).

  Returns:
    MeanVariance with mean, variance and log_variance [B, H, W, C] and pred_xstart.
  """
  check_option("mean_type", mean_type, MEAN_TYPES)
  check_option("var_type", var_type, VAR_TYPES)
  _check_batch(x_t, t)
  mean_part, var_part = split_model_output(model_output, x_t, var_type)
  log_variance = model_log_variance(schedule, var_part, x_t, t, var_type)

  def process(x0):
    return jnp.clip(x0, -1.0, 1.0) if clip_denoised else x0

  if mean_type == "mean":
    pred_xstart = process(predict_start_from_prev_mean(schedule, x_t, t, mean_part))
    mean = mean_part
  else:
    if mean_type == "eps":
      pred_xstart = predict_start_from_noise(schedule, x_t, t, mean_part)
    elif mean_type == "x0":
      pred_xstart = mean_part
    else:  # "v"
      pred_xstart = predict_start_from_v(schedule, x_t, t, mean_part)
    pred_xstart = process(pred_xstart)
    mean, _, _ = q_posterior_mean_variance(schedule, pred_xstart, x_t, t)
  return MeanVariance(mean=mean, variance=jnp.exp(log_variance), log_variance=log_variance,
                      pred_xstart=pred_xstart)


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianDiffusion:
  """What a trained model's diffusion is: the schedule and what the network outputs.

  Built once from `config.diffusion` (`experiment.create_diffusion`) and handed to the losses,
  the samplers and the bits/dim loop, e.g.
  `samplers.sample(model_fn, d.schedule, shape, key, **d.parameterization)`.

  Attributes:
    schedule: the (concrete) training schedule.
    mean_type: what the network predicts (MEAN_TYPES).
    var_type: the reverse-process variance (VAR_TYPES).
  """
  schedule: DiffusionSchedule
  mean_type: MeanType = "eps"
  var_type: VarType = "fixedlarge"

  def __post_init__(self):
    check_option("mean_type", self.mean_type, MEAN_TYPES)
    check_option("var_type", self.var_type, VAR_TYPES)

  @property
  def parameterization(self) -> dict:
    """{"mean_type": ..., "var_type": ...}, the keyword arguments every consumer takes."""
    return {"mean_type": self.mean_type, "var_type": self.var_type}
