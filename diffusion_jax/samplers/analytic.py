"""Analytic-DPM (Bao, Li, Zhu & Zhang 2022): the optimal reverse variance in closed form.

For the reverse step from step n to step s < n of a (DDIM-family) process whose mean is
sqrt(abar_s) x0_hat + sqrt(1 - abar_s - lambda_n^2) eps_hat, the variance minimizing the KL
to the forward process is (Analytic-DPM Theorem 1, written with the x_0 coefficient gamma_n of
the mean):

  sigma*_n^2 = lambda_n^2 + gamma_n^2 Var[x_0 | x_n],
  Var[x_0 | x_n] = (1 - abar_n) / abar_n (1 - Gamma_n),   Gamma_n = E_q ||eps(x_n, n)||^2 / d,
  gamma_n = sqrt(abar_s) - sqrt(1 - abar_s - lambda_n^2) sqrt(abar_n / (1 - abar_n)).

Gamma_n depends only on the model and the data: it is estimated once per model by Monte
Carlo (`eps_mean_square`, an array of length T) and then serves every grid. lambda_n^2 =
eta^2 beta-tilde_n (eta = 1: DDPM's posterior variance; eta = 0: DDIM). Var[x_0 | x_n] is
clipped to [0, ((b - a) / 2)^2] for data in [a, b] (the bounds of Theorem 2, which keep
sigma*^2 between lambda^2 and lambda^2 + gamma^2 ((b - a)/2)^2), and for sampling the
variance of the last noisy steps can also be clipped so that E|sigma z| <= clip_pixel * 2/255
(the paper's sampling clip, App. F).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion
from diffusion_jax.diffusion import MeanType, VarType, check_option
from diffusion_jax.samplers import ddim, grids, registry
from diffusion_jax.schedules import DiffusionSchedule, extract, model_timesteps

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def eps_mean_square(model_fn: ModelFn, schedule: DiffusionSchedule, x_0: jnp.ndarray, key: jax.Array,
                    *, timesteps: Sequence[int] | None = None, mean_type: MeanType = "eps",
                    var_type: VarType = "fixedlarge", batch_size: int = 256) -> np.ndarray:
  """Gamma_n = E ||eps_theta(x_n, n)||^2 / d by Monte Carlo over data (once per model).

  Args:
    model_fn: model_fn(x_t, t_original) -> output.
    schedule: the diffusion.
    x_0: data samples [N, H, W, C] in [-1, 1]; each is noised once per timestep with fresh noise
      (noise of timestep n and chunk c from fold_in(fold_in(key, c), n)).
    key: PRNG key.
    timesteps: which steps to estimate (default: all T); the others are NaN.
    mean_type, var_type: what the model outputs (eps is derived from it).
    batch_size: examples per model call.

  Returns:
    float64 numpy [T].
  """
  check_option("mean_type", mean_type, diffusion.MEAN_TYPES)
  steps = np.arange(schedule.num_timesteps) if timesteps is None else np.asarray(timesteps, np.int64)

  @jax.jit
  def chunk_sums(x0_chunk, chunk_key):
    def one(_, n):
      t = jnp.full((x0_chunk.shape[0],), n, jnp.int32)
      noise = jax.random.normal(jax.random.fold_in(chunk_key, n), x0_chunk.shape)
      x_t = diffusion.q_sample(schedule, x0_chunk, t, noise)
      out = model_fn(x_t, model_timesteps(schedule, t))
      x0_hat = diffusion.p_mean_variance(schedule, out, x_t, t, mean_type=mean_type,
                                         var_type=var_type, clip_denoised=False).pred_xstart
      eps = diffusion.predict_noise_from_start(schedule, x_t, t, x0_hat)
      return None, jnp.sum(jnp.mean(jnp.square(eps).reshape(eps.shape[0], -1), axis=1))
    return jax.lax.scan(one, None, jnp.asarray(steps, jnp.int32))[1]

  total = np.zeros(len(steps))
  for c, start in enumerate(range(0, x_0.shape[0], batch_size)):
    total += np.asarray(chunk_sums(x_0[start:start + batch_size], jax.random.fold_in(key, c)), np.float64)
  result = np.full(schedule.num_timesteps, np.nan)
  result[steps] = total / x_0.shape[0]
  return result


def analytic_variance(schedule: DiffusionSchedule, ms_eps: np.ndarray, grid: Sequence[int], *,
                      eta: float = 1.0, data_range: tuple[float, float] = (-1.0, 1.0),
                      clip_last_steps: int = 0, clip_pixel: float = 2.0
                      ) -> tuple[np.ndarray, np.ndarray]:
  """The optimal reverse variances on a descending grid of steps (Analytic-DPM Theorem 1).

  Args:
    schedule: the diffusion.
    ms_eps: Gamma [T] from `eps_mean_square` (needed at the grid points).
    grid: descending steps tau_S > ... > tau_1 (e.g. `ddim.resolve_timesteps`).
    eta: the base variance lambda^2 = eta^2 beta-tilde: 1 for the DDPM-type process (posterior
      mean of the sub-chain), 0 for the DDIM-type one.
    data_range: (a, b): Var[x_0 | x_n] is clipped to [0, ((b - a)/2)^2].
    clip_last_steps: clip sigma of this many noisy steps before the last one so that
      E|sigma z| <= clip_pixel * 2/255 (the paper's sampling clip; 0 = off).
    clip_pixel: that bound in 8-bit pixel units.

  Returns:
    (sigma2 [S], lambda2 [S]) in float64: the optimal variance and the base variance of each
    step. The last entry (to the data) is Var[x_0 | x_{tau_1}], the variance of x_0's posterior;
    samplers add no noise at that step.
  """
  grid = np.asarray(grid, np.int64)
  gamma_n = np.asarray(ms_eps, np.float64)[grid]
  if np.any(~np.isfinite(gamma_n)):
    raise ValueError("ms_eps has no estimate at some grid steps; estimate them with eps_mean_square.")
  log_abar = grids.log_alphas_cumprod(schedule)
  log_n = log_abar[grid]
  log_s = np.append(log_abar[grid[1:]], 0.0)
  one_minus_n, one_minus_s = -np.expm1(log_n), -np.expm1(log_s)
  lambda2 = eta**2 * one_minus_s / one_minus_n * -np.expm1(log_n - log_s)   # eta^2 beta-tilde
  gamma = np.exp(0.5 * log_s) - np.sqrt(np.maximum(one_minus_s - lambda2, 0.0)) * np.exp(
      0.5 * log_n) / np.sqrt(one_minus_n)
  var_x0 = one_minus_n / np.exp(log_n) * (1.0 - gamma_n)                    # Var[x_0 | x_n]
  var_x0 = np.clip(var_x0, 0.0, ((data_range[1] - data_range[0]) / 2.0) ** 2)
  sigma2 = lambda2 + gamma**2 * var_x0
  if clip_last_steps > 0:
    bound = (clip_pixel * 2.0 / 255.0 * math.sqrt(math.pi / 2.0)) ** 2
    noisy = len(grid) - 1                      # the last step adds no noise
    clipped = slice(max(noisy - clip_last_steps, 0), noisy)
    sigma2[clipped] = np.minimum(sigma2[clipped], bound)
  return sigma2, lambda2


def analytic_sample_loop(model_fn: ModelFn, schedule: DiffusionSchedule, shape: Sequence[int],
                         key: jax.Array, *, ms_eps: np.ndarray, num_steps: int | None = None,
                         timesteps: Sequence[int] | None = None,
                         spacing: grids.DdimSpacing = "uniform", eta: float = 1.0,
                         mean_type: MeanType = "eps", var_type: VarType = "fixedlarge",
                         clip_denoised: bool = True, clip_last_steps: int = 1,
                         clip_pixel: float = 2.0, x_T: jnp.ndarray | None = None,
                         return_trajectory: bool = False):
  """Samples the DDPM-type (eta = 1) or DDIM-type (eta = 0) process with the optimal variance.

  x_prev = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - lambda^2) eps_hat + sigma* z: the mean is the
  process' own (for eta = 1 the posterior mean of the sub-chain), only the noise scale changes.

  Args:
    ms_eps: Gamma [T] from `eps_mean_square`.
    eta, clip_last_steps, clip_pixel: see `analytic_variance` (the default clips the second
      to last step as the paper does for sampling).
    Others: as in `ddim.ddim_sample_loop`.

  Returns:
    x_0 [B, H, W, C], or (x_0, Trajectory).
  """
  grid = ddim.resolve_timesteps(schedule, num_steps, timesteps, spacing)
  c_x0, c_eps, _ = ddim.ddim_coefficients(schedule, grid, eta)
  sigma2, _ = analytic_variance(schedule, ms_eps, grid, eta=eta, clip_last_steps=clip_last_steps,
                                clip_pixel=clip_pixel)
  sigma = np.sqrt(sigma2)
  sigma[-1] = 0.0
  return ddim.generalized_sample_loop(model_fn, schedule, shape, key, grid, c_x0, c_eps, sigma,
                                      mean_type=mean_type, var_type=var_type,
                                      clip_denoised=clip_denoised, x_T=x_T,
                                      return_trajectory=return_trajectory)


def with_log_variance(model_fn: ModelFn, log_variance_by_t: np.ndarray, *,
                      var_type: VarType = "fixedlarge") -> ModelFn:
  """Wraps an eps/x0/v model so it also outputs a log-variance (var_type="learned" layout).

  With a respaced schedule and `losses.calc_bpd_loop(..., var_type="learned")` this evaluates
  the variational bound of the reverse process with any per-step variance, e.g. Analytic-DPM's.

  Args:
    model_fn: the model (with fixed variances).
    log_variance_by_t: [T_original] log-variances indexed by the ORIGINAL timestep the model
      sees.
    var_type: the model's own var_type (a learned variance part is dropped).

  Returns:
    model_fn(x_t, t) -> [B, H, W, 2C].
  """
  table = jnp.asarray(log_variance_by_t, jnp.float32)

  def wrapped(x_t, t):
    mean_part, _ = diffusion.split_model_output(model_fn(x_t, t), x_t, var_type)
    log_var = jnp.broadcast_to(extract(table, t, x_t.shape), x_t.shape)
    return jnp.concatenate([mean_part, log_var], axis=-1)

  return wrapped


def prepare_eps_mean_square(model_fn: ModelFn, schedule: DiffusionSchedule, key: jax.Array,
                            load_images: Callable[[int], np.ndarray], *, mean_type: MeanType,
                            var_type: VarType, num_samples: int, **unused) -> dict:
  """The registered prepare step: Gamma from `num_samples` training images (`eps_mean_square`)."""
  del unused
  return {"ms_eps": eps_mean_square(model_fn, schedule, jnp.asarray(load_images(num_samples)),
                                    key, mean_type=mean_type, var_type=var_type)}


_OPTIONS = (
    registry.Option("spacing", "uniform", "integer step grid (grids.ddim_timesteps)",
                    choices=grids.DDIM_SPACINGS),
    registry.Option("clip_last_steps", 1, "clip sigma of this many final noisy steps (App. F); "
                    "0 = off", minimum=0),
    registry.Option("num_samples", 1024, "training images for the E||eps||^2 estimate", minimum=1),
)


def _register(name: str, eta: float, summary: str) -> None:

  def run(model_fn, schedule, shape, key, *, ms_eps, num_samples, **options):
    del num_samples  # used by the prepare step
    return analytic_sample_loop(model_fn, schedule, shape, key, ms_eps=ms_eps, eta=eta, **options)

  registry.register(registry.Sampler(
      name=name, run=run, section="analytic", options=_OPTIONS, summary=summary,
      prepare=prepare_eps_mean_square, prepared=("ms_eps",),
      check=registry.at_most_num_timesteps))


_register("analytic_ddpm", 1.0, "Analytic-DPM (Bao et al. 2022) optimal variance, DDPM-type process")
_register("analytic_ddim", 0.0, "Analytic-DPM (Bao et al. 2022) optimal variance, DDIM-type process")
