"""Training objectives and likelihood evaluation: L_simple, L_vlb, L_hybrid and bits/dim.

Conventions (docs/conventions.md): per-example losses are means over all non-batch dimensions;
variational terms are reported in bits per dimension (nats / ln 2); the t = 0 term is the
negative log-likelihood of the discretized Gaussian decoder (DDPM Eq. 13).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import chex
import flax.struct
import jax
import jax.numpy as jnp

from diffusion_jax import diffusion
from diffusion_jax.diffusion import MeanType, VarType, check_option
from diffusion_jax.schedules import DiffusionSchedule, model_timesteps

LossType = Literal["mse", "rescaled_mse", "kl", "rescaled_kl"]
LOSS_TYPES: tuple[str, ...] = ("mse", "rescaled_mse", "kl", "rescaled_kl")
ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]

_LN2 = math.log(2.0)


def mean_flat(x: jnp.ndarray) -> jnp.ndarray:
  """Mean over every dimension but the first: [B, ...] -> [B]."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1: jnp.ndarray, logvar1: jnp.ndarray, mean2: jnp.ndarray, logvar2: jnp.ndarray
              ) -> jnp.ndarray:
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats (broadcasting)."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x: jnp.ndarray) -> jnp.ndarray:
  """The tanh approximation of the standard normal CDF used by the DDPM decoder."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: jnp.ndarray, means: jnp.ndarray, log_scales: jnp.ndarray
                                        ) -> jnp.ndarray:
  """log p(x) of 8-bit data under a Gaussian discretized into 256 bins (DDPM Eq. 13).

  Bin k covers (k/127.5 - 1) +- 1/255; the outermost bins extend to -inf / +inf (x beyond
  -+0.999). Logs are clamped at 1e-12.

  Args:
    x: data on the grid k/127.5 - 1, [B, ...].
    means: Gaussian means, same shape.
    log_scales: log standard deviations, broadcastable.

  Returns:
    elementwise log-likelihood in nats, [B, ...].
  """
  chex.assert_equal_shape([x, means])
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_terms_bpd(schedule: DiffusionSchedule, model_output: jnp.ndarray, x_start: jnp.ndarray,
                 x_t: jnp.ndarray, t: jnp.ndarray, *, mean_type: MeanType, var_type: VarType,
                 clip_denoised: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
  """One term of the variational bound, in bits/dim (DDPM Eq. 5).

  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, and the decoder NLL
  L_0 = -log p(x_0 | x_1) for t = 0.

  Returns:
    (bits/dim [B], pred_xstart [B, ...]).
  """
  true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(schedule, x_start, x_t, t)
  out = diffusion.p_mean_variance(schedule, model_output, x_t, t, mean_type=mean_type,
                                  var_type=var_type, clip_denoised=clip_denoised)
  kl = mean_flat(normal_kl(true_mean, true_log_variance, out.mean, out.log_variance)) / _LN2
  decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(
      x_start, means=out.mean, log_scales=0.5 * out.log_variance)) / _LN2
  return jnp.where(t == 0, decoder_nll, kl), out.pred_xstart


@flax.struct.dataclass
class LossTerms:
  """Per-example training losses [B]; `mse`/`vb` are None where the objective has no such term."""
  loss: jnp.ndarray
  mse: jnp.ndarray | None = None
  vb: jnp.ndarray | None = None


def training_target(schedule: DiffusionSchedule, x_start: jnp.ndarray, x_t: jnp.ndarray,
                    t: jnp.ndarray, noise: jnp.ndarray, mean_type: MeanType) -> jnp.ndarray:
  """What the network regresses onto for each parameterization."""
  if mean_type == "eps":
    return noise
  if mean_type == "x0":
    return x_start
  if mean_type == "v":
    return diffusion.predict_v(schedule, x_start, t, noise)
  return diffusion.q_posterior_mean_variance(schedule, x_start, x_t, t)[0]  # "mean"


def training_losses(model_fn: ModelFn, schedule: DiffusionSchedule, x_start: jnp.ndarray,
                    t: jnp.ndarray, noise: jnp.ndarray, *, mean_type: MeanType = "eps",
                    var_type: VarType = "fixedlarge", loss_type: LossType = "mse") -> LossTerms:
  """Per-example training losses at timesteps t.

  - "mse": L_simple (DDPM Eq. 14), the mean squared error of the parameterization's target;
    with a learned variance, plus the vlb term for the variance (as "rescaled_mse" without the
    rescaling).
  - "rescaled_mse": L_hybrid = L_simple + lambda L_vlb (Improved DDPM Eq. 16). The vlb term
    sees the mean output through a stop-gradient, so it trains only the variance, and it is
    multiplied by T / 1000 (lambda = 0.001 at T = 1000, since L_vlb = T E_t[L_t]).
  - "kl": L_vlb, one uniformly weighted term L_t in bits/dim. "rescaled_kl": times T.

  Args:
    model_fn: model_fn(x_t, t_original) -> output [B, H, W, C or 2C].
    schedule: the diffusion; t indexes it, the model sees `schedule.timestep_map[t]`.
    x_start: x_0 [B, H, W, C] in [-1, 1].
    t: int32 [B].
    noise: eps [B, H, W, C].

  Returns:
    LossTerms with `loss` [B] (and its parts `mse`, `vb`).
  """
  check_option("mean_type", mean_type, diffusion.MEAN_TYPES)
  check_option("var_type", var_type, diffusion.VAR_TYPES)
  check_option("loss_type", loss_type, LOSS_TYPES)
  x_t = diffusion.q_sample(schedule, x_start, t, noise)
  model_output = model_fn(x_t, model_timesteps(schedule, t))
  mean_part, var_part = diffusion.split_model_output(model_output, x_t, var_type)

  def vb(output):
    return vb_terms_bpd(schedule, output, x_start, x_t, t, mean_type=mean_type,
                        var_type=var_type, clip_denoised=False)[0]

  if loss_type in ("kl", "rescaled_kl"):
    vb_term = vb(model_output)
    loss = vb_term * schedule.num_timesteps if loss_type == "rescaled_kl" else vb_term
    return LossTerms(loss=loss, vb=vb_term)

  target = training_target(schedule, x_start, x_t, t, noise, mean_type)
  mse = mean_flat(jnp.square(target - mean_part))
  if var_part is None:
    return LossTerms(loss=mse, mse=mse)
  frozen = jnp.concatenate([jax.lax.stop_gradient(mean_part), var_part], axis=-1)
  vb_term = vb(frozen)
  if loss_type == "rescaled_mse":
    vb_term = vb_term * (schedule.num_timesteps / 1000.0)
  return LossTerms(loss=mse + vb_term, mse=mse, vb=vb_term)


def prior_bpd(schedule: DiffusionSchedule, x_start: jnp.ndarray) -> jnp.ndarray:
  """KL(q(x_{T-1} | x_0) || N(0, I)) in bits/dim, [B] (the L_T term of DDPM Eq. 5)."""
  t = jnp.full((x_start.shape[0],), schedule.num_timesteps - 1, dtype=jnp.int32)
  mean, _, log_variance = diffusion.q_mean_variance(schedule, x_start, t)
  return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / _LN2


@flax.struct.dataclass
class BpdTerms:
  """The full variational bound of a batch, in bits/dim.

  total_bpd [B] = sum_t terms_bpd[:, t] + prior_bpd; terms_bpd[:, 0] is the decoder NLL.
  xstart_mse and eps_mse [B, T] are the model's x_0 and eps errors at each t.
  """
  total_bpd: jnp.ndarray
  prior_bpd: jnp.ndarray
  terms_bpd: jnp.ndarray
  xstart_mse: jnp.ndarray
  eps_mse: jnp.ndarray


def calc_bpd_loop(model_fn: ModelFn, schedule: DiffusionSchedule, x_start: jnp.ndarray,
                  key: jax.Array, *, mean_type: MeanType = "eps", var_type: VarType = "fixedlarge",
                  clip_denoised: bool = True) -> BpdTerms:
  """Evaluates every term of the variational bound (the DDPM paper's NLL in bits/dim).

  One `lax.scan` over t = T-1, ..., 0; the noise of step t is drawn from fold_in(key, t).

  Args:
    model_fn: model_fn(x_t, t_original) -> output.
    schedule: the diffusion (respaced schedules give the bound of the shorter chain).
    x_start: x_0 [B, H, W, C], 8-bit data scaled to [-1, 1].
    key: PRNG key for the q_sample noise.
    clip_denoised: clip pred_x0 to [-1, 1] inside the reverse means, as when sampling.

  Returns:
    BpdTerms.
  """
  check_option("mean_type", mean_type, diffusion.MEAN_TYPES)
  check_option("var_type", var_type, diffusion.VAR_TYPES)
  batch = x_start.shape[0]

  def one_term(_, step):
    t = jnp.full((batch,), step, dtype=jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(key, step), x_start.shape, x_start.dtype)
    x_t = diffusion.q_sample(schedule, x_start, t, noise)
    output = model_fn(x_t, model_timesteps(schedule, t))
    term, pred_xstart = vb_terms_bpd(schedule, output, x_start, x_t, t, mean_type=mean_type,
                                     var_type=var_type, clip_denoised=clip_denoised)
    eps = diffusion.predict_noise_from_start(schedule, x_t, t, pred_xstart)
    return None, (term, mean_flat(jnp.square(pred_xstart - x_start)),
                  mean_flat(jnp.square(eps - noise)))

  steps = jnp.arange(schedule.num_timesteps - 1, -1, -1, dtype=jnp.int32)
  _, (terms, xstart_mse, eps_mse) = jax.lax.scan(one_term, None, steps)
  # Scanned outputs are [T, B] in descending t; put them in ascending t as [B, T].
  terms, xstart_mse, eps_mse = (jnp.flip(a, axis=0).T for a in (terms, xstart_mse, eps_mse))
  prior = prior_bpd(schedule, x_start)
  return BpdTerms(total_bpd=jnp.sum(terms, axis=1) + prior, prior_bpd=prior, terms_bpd=terms,
                  xstart_mse=xstart_mse, eps_mse=eps_mse)
