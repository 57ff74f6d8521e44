"""EDM's samplers (Karras et al. 2022): the deterministic Heun sampler (Algorithm 1) and the
stochastic sampler (Algorithm 2), for any DDPM-trained model.

EDM writes a diffusion as y = x_0 + sigma n and its probability-flow ODE as

  dy/dsigma = (y - D(y; sigma)) / sigma                              (EDM Eq. 3, sigma(t) = t)

with D(y; sigma) = E[x_0 | y] the denoiser. A DDPM (variance-preserving) model sees
x_t = alpha x_0 + sigma_t eps instead; the change of variables (EDM App. C.1)

  y = x_t / alpha,   sigma = sigma_t / alpha = sqrt((1 - abar) / abar) = exp(-lambda)

maps one onto the other, and the slope (y - D) / sigma is exactly the model's eps. The model is
called with x_t = alpha y and the ORIGINAL timestep whose abar matches sigma: a float between two
steps, from the same continuous-time view of the schedule DPM-Solver uses (`grids.u_from_lambda`,
log alpha piecewise linear between steps).

The grid is computed once in float64: sigma_0 > ... > sigma_{N-1} from Karras' Eq. 5 (rho = 7)
between sigma_max and sigma_min (by default the schedule's own ends, steps T-1 and 0), then
sigma_N = 0. Steps 0..N-2 are Heun steps (Euler + trapezoidal correction, two evaluations); the
last step to sigma = 0 is a plain Euler step, since the correction would divide by sigma = 0. That
is 2N - 1 model evaluations for N steps (EDM Sec. 3; 18 steps = 35 NFE).

Algorithm 2 first raises the noise level of step i to sigma_hat = (1 + gamma_i) sigma_i by adding
fresh noise ("churn"), gamma_i = min(S_churn / N, sqrt(2) - 1) for sigma_i in [S_tmin, S_tmax]
and 0 elsewhere, then takes the same Heun step from sigma_hat. Here sigma_hat is also capped at
sigma_max, the highest noise level the model was trained on. With S_churn = 0 it is Algorithm 1.

Starting noise: as every sampler of this package, x_T ~ N(0, I) in the model's (VP)
coordinates, so y_0 = x_T / alpha(sigma_max); EDM draws y_0 ~ N(0, sigma_max^2 I), a
sqrt(1 + 1/sigma_max^2) smaller scale (1.00002 at the linear schedule's sigma_max = 157).
"""

from __future__ import annotations

from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion
from diffusion_jax import sde as sde_lib
from diffusion_jax.diffusion import VarType, check_option
from diffusion_jax.samplers import grids, registry
from diffusion_jax.samplers.ddim import Trajectory
from diffusion_jax.schedules import DiffusionSchedule

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def num_function_evals(num_steps: int) -> int:
  """Model evaluations of an N-step EDM sampler: N - 1 Heun steps and a final Euler step."""
  return 2 * num_steps - 1


def schedule_sigma_range(schedule: DiffusionSchedule) -> tuple[float, float]:
  """(sigma_min, sigma_max) = EDM noise levels sqrt((1 - abar)/abar) at steps 0 and T-1."""
  lam_max, lam_min = grids.lambda_at(schedule, np.array([0.0, schedule.num_timesteps - 1.0]))
  return float(np.exp(-lam_max)), float(np.exp(-lam_min))


def edm_sigmas(schedule: DiffusionSchedule, num_steps: int, *, sigma_min: float | None = None,
               sigma_max: float | None = None, rho: float = 7.0) -> np.ndarray:
  """The sampling grid sigma_0 > ... > sigma_{N-1} > sigma_N = 0 (EDM Eq. 5), float64 [N + 1].

  Args:
    schedule: the (concrete) diffusion the model was trained with.
    num_steps: N >= 1.
    sigma_min, sigma_max: the grid's ends; None = the schedule's (steps 0 and T-1). They must
      lie inside the schedule's range: the model has never seen other noise levels.
    rho: Karras' rho (7 in the paper).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps} must be >= 1.")
  lo, hi = schedule_sigma_range(schedule)
  sigma_min = lo if sigma_min is None else float(sigma_min)
  sigma_max = hi if sigma_max is None else float(sigma_max)
  tol = 1e-9 * hi
  if not lo - tol <= sigma_min < sigma_max <= hi + tol:
    raise ValueError(f"need {lo:.6g} <= sigma_min < sigma_max <= {hi:.6g} (the schedule's noise "
                     f"levels, steps 0 and T-1), got sigma_min={sigma_min}, sigma_max={sigma_max}.")
  sigmas = grids.karras_sigmas(min(sigma_max, hi), max(sigma_min, lo), num_steps, rho)
  return np.append(sigmas, 0.0)


def churn_sigmas(sigmas: np.ndarray, *, s_churn: float, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), sigma_max: float | None = None) -> np.ndarray:
  """sigma_hat_i = (1 + gamma_i) sigma_i of Algorithm 2 for i < N, float64 [N].

  gamma_i = min(S_churn / N, sqrt(2) - 1) where S_tmin <= sigma_i <= S_tmax, else 0; sigma_hat
  is capped at sigma_max (default sigmas[0]).
  """
  if s_churn < 0:
    raise ValueError(f"s_churn={s_churn} must be >= 0.")
  sigmas = np.asarray(sigmas[:-1], np.float64)
  gamma = min(s_churn / len(sigmas), np.sqrt(2.0) - 1.0)
  gammas = np.where((sigmas >= s_tmin) & (sigmas <= s_tmax), gamma, 0.0)
  cap = sigmas[0] if sigma_max is None else sigma_max
  return np.minimum((1.0 + gammas) * sigmas, cap)


def vp_points(schedule: DiffusionSchedule, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """alpha = 1/sqrt(1 + sigma^2) and the model's (original, float) timestep at EDM levels sigma.

  sigma = 0 gives alpha = 1 and timestep NaN (no model evaluation happens there).
  """
  sigmas = np.asarray(sigmas, np.float64)
  positive = sigmas > 0
  lam = -np.log(np.where(positive, sigmas, 1.0))
  model_t = np.where(positive, grids.model_time_at(schedule, grids.u_from_lambda(schedule, lam)), np.nan)
  return 1.0 / np.sqrt(1.0 + sigmas**2), model_t


def eps_and_x0(model_output: jnp.ndarray, x_t: jnp.ndarray, alpha, sigma_t, *,
               mean_type: sde_lib.Prediction) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(eps, x_0) from a model output at a VP noise level x_t = alpha x_0 + sigma_t eps.

  The continuous-level form of `diffusion.predict_start_from_noise` / `predict_start_from_v`
  (alpha^2 + sigma_t^2 = 1): x0 = (x_t - sigma_t eps) / alpha; v = alpha eps - sigma_t x0, so
  x0 = alpha x_t - sigma_t v; a score s of x_t gives eps = -sigma_t s (`sde.eps_from_score`).
  """
  if mean_type == "x0":
    return (x_t - alpha * model_output) / sigma_t, model_output
  if mean_type == "v":
    x0 = alpha * x_t - sigma_t * model_output
    return (x_t - alpha * x0) / sigma_t, x0
  eps = sde_lib.eps_from_score(model_output, sigma_t) if mean_type == "score" else model_output
  return eps, (x_t - sigma_t * eps) / alpha


def _slope_fn(model_fn: ModelFn, batch: int, *, mean_type: sde_lib.Prediction, var_type: VarType,
              clip_denoised: bool):
  """slope(y, sigma, alpha, t) -> ((y - D(y; sigma)) / sigma, D(y; sigma)), both [B, H, W, C]."""
  check_option("var_type", var_type, diffusion.VAR_TYPES)
  check_option("mean_type", mean_type, sde_lib.PREDICTIONS)

  def slope(y, sigma, alpha, model_t):
    x_t = alpha * y
    output, _ = diffusion.split_model_output(model_fn(x_t, jnp.full((batch,), model_t)), x_t, var_type)
    eps, x0 = eps_and_x0(output, x_t, alpha, alpha * sigma, mean_type=mean_type)
    if clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (y - x0) / sigma
    return eps, x0

  return slope


def _sample(model_fn: ModelFn, schedule: DiffusionSchedule, shape: Sequence[int], key: jax.Array, *,
            num_steps: int, rho: float, sigma_min: float | None, sigma_max: float | None,
            s_churn: float, s_tmin: float, s_tmax: float, s_noise: float, stochastic: bool,
            mean_type: sde_lib.Prediction, var_type: VarType, clip_denoised: bool,
            x_T: jnp.ndarray | None, return_trajectory: bool):
  shape = tuple(shape)
  sigmas = edm_sigmas(schedule, num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
  # Algorithm 2's raised levels; Algorithm 1 steps from sigma_i itself.
  sigma_hat = (churn_sigmas(sigmas, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                            sigma_max=schedule_sigma_range(schedule)[1])
               if stochastic else sigmas[:-1])
  noise_scale = s_noise * np.sqrt(np.maximum(sigma_hat**2 - sigmas[:-1]**2, 0.0))
  alpha_hat, t_hat = vp_points(schedule, sigma_hat)
  alpha_next, t_next = vp_points(schedule, sigmas[1:])
  slope = _slope_fn(model_fn, shape[0], mean_type=mean_type, var_type=var_type,
                    clip_denoised=clip_denoised)

  key_init, key_steps = jax.random.split(key)
  x_T = jax.random.normal(key_init, shape) if x_T is None else x_T
  chex.assert_shape(x_T, shape)
  y = x_T * jnp.float32(np.sqrt(1.0 + sigmas[0]**2))                # y_0 = x_T / alpha(sigma_max)

  def step(y, inputs, last=False):
    i, scale, s_hat, s_next, a_hat, a_next, t_hat, t_next = inputs
    if stochastic:                                                  # Alg. 2 lines 5-6: churn
      y = y + scale * jax.random.normal(jax.random.fold_in(key_steps, i), shape, y.dtype)
    d_cur, x0 = slope(y, s_hat, a_hat, t_hat)
    y_next = y + (s_next - s_hat) * d_cur                           # Euler step
    if not last:                                                    # 2nd-order correction
      d_next, _ = slope(y_next, s_next, a_next, t_next)
      y_next = y + (s_next - s_hat) * (0.5 * d_cur + 0.5 * d_next)
    return y_next, (a_next * y_next, x0) if return_trajectory else None

  f32 = lambda a: jnp.asarray(a, jnp.float32)
  inputs = (jnp.arange(num_steps), f32(noise_scale), f32(sigma_hat), f32(sigmas[1:]),
            f32(alpha_hat), f32(alpha_next), f32(t_hat), f32(t_next))
  y, traj = jax.lax.scan(step, y, jax.tree.map(lambda a: a[:-1], inputs))
  y, last = step(y, jax.tree.map(lambda a: a[-1], inputs), last=True)  # sigma_N = 0: Euler
  if not return_trajectory:
    return y
  return y, Trajectory(x=jnp.concatenate([traj[0], last[0][None]]),
                       pred_x0=jnp.concatenate([traj[1], last[1][None]]))


def heun_sample(model_fn: ModelFn, schedule: DiffusionSchedule, shape: Sequence[int], key: jax.Array,
                *, num_steps: int = 18, rho: float = 7.0, sigma_min: float | None = None,
                sigma_max: float | None = None, mean_type: sde_lib.Prediction = "eps",
                var_type: VarType = "fixedlarge", clip_denoised: bool = False,
                x_T: jnp.ndarray | None = None, return_trajectory: bool = False):
  """EDM Algorithm 1: deterministic Heun steps on the Karras grid, 2N - 1 model evaluations.

  Args:
    model_fn: model_fn(x_t [B, H, W, C], t float32 [B]) -> output; t is the original timestep
      matching each noise level (between steps, so a float).
    schedule: the (concrete) diffusion the model was trained with.
    shape: [B, H, W, C].
    key: PRNG key for x_T (split(key)[0], as in DDIM; the sampler is deterministic).
    num_steps: N (EDM's 18 for CIFAR-10: 35 NFE).
    rho, sigma_min, sigma_max: the grid (`edm_sigmas`).
    mean_type: what the model predicts: "eps", "x0", "v" or "score" (of x_t).
    var_type: a learned variance channel is split off and ignored.
    clip_denoised: clip D to [-1, 1] (EDM does not).
    x_T: optional starting noise [B, H, W, C] in the model's coordinates at sigma_max.
    return_trajectory: also return a `Trajectory`: x_t = alpha y after each step and D at the
      start of each step, [N, B, H, W, C].

  Returns:
    x_0 [B, H, W, C], or (x_0, Trajectory).
  """
  return _sample(model_fn, schedule, shape, key, num_steps=num_steps, rho=rho, sigma_min=sigma_min,
                 sigma_max=sigma_max, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0,
                 stochastic=False, mean_type=mean_type, var_type=var_type,
                 clip_denoised=clip_denoised, x_T=x_T, return_trajectory=return_trajectory)


def stochastic_sample(model_fn: ModelFn, schedule: DiffusionSchedule, shape: Sequence[int],
                      key: jax.Array, *, num_steps: int = 18, s_churn: float = 0.0,
                      s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                      rho: float = 7.0, sigma_min: float | None = None,
                      sigma_max: float | None = None, mean_type: sde_lib.Prediction = "eps",
                      var_type: VarType = "fixedlarge", clip_denoised: bool = False,
                      x_T: jnp.ndarray | None = None, return_trajectory: bool = False):
  """EDM Algorithm 2: churn (add noise up to sigma_hat), then a Heun step; 2N - 1 evaluations.

  Args:
    s_churn: total stochasticity (gamma_i = min(S_churn / N, sqrt(2) - 1)); 0 = Algorithm 1.
    s_tmin, s_tmax: churn only where S_tmin <= sigma_i <= S_tmax (EDM sigma).
    s_noise: scale of the added noise (EDM's 1.003-1.007 counter the denoiser's over-smoothing).
    key: x_T from split(key)[0] (the same x_T as `heun_sample`), the churn noise of step i
      from fold_in(split(key)[1], i).
    Others: as in `heun_sample`.

  Returns:
    x_0 [B, H, W, C], or (x_0, Trajectory).
  """
  return _sample(model_fn, schedule, shape, key, num_steps=num_steps, rho=rho, sigma_min=sigma_min,
                 sigma_max=sigma_max, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                 s_noise=s_noise, stochastic=True, mean_type=mean_type, var_type=var_type,
                 clip_denoised=clip_denoised, x_T=x_T, return_trajectory=return_trajectory)


# ---------------------------------------------------------------------------------------------
# Registry: num_steps is EDM's N (2N - 1 model evaluations; None = 18, the paper's CIFAR-10 N).

DEFAULT_NUM_STEPS = 18
_GRID_OPTIONS = (
    registry.Option("rho", 7.0, "Karras grid exponent (Eq. 5)", minimum=1.0),
    registry.Option("sigma_min", None, "lowest EDM sigma of the grid; None = the schedule's step 0",
                    minimum=0.0, kind=float),
    registry.Option("sigma_max", None, "highest EDM sigma; None = the schedule's step T-1",
                    minimum=0.0, kind=float),
)


def _run_heun(model_fn, schedule, shape, key, *, num_steps, **options):
  return heun_sample(model_fn, schedule, shape, key,
                     num_steps=DEFAULT_NUM_STEPS if num_steps is None else num_steps, **options)


def _run_stochastic(model_fn, schedule, shape, key, *, num_steps, s_tmax, **options):
  return stochastic_sample(model_fn, schedule, shape, key,
                           num_steps=DEFAULT_NUM_STEPS if num_steps is None else num_steps,
                           s_tmax=float("inf") if s_tmax is None else s_tmax, **options)


registry.register(registry.Sampler(
    name="edm_heun", run=_run_heun, section="edm",
    summary="EDM (Karras et al. 2022) Algorithm 1: Heun on the Karras sigma grid; num_steps = N "
            "steps, 2N - 1 model evaluations (default 18)",
    options=_GRID_OPTIONS))
registry.register(registry.Sampler(
    name="edm_stochastic", run=_run_stochastic, section="edm_stochastic",
    summary="EDM Algorithm 2: churn noise (S_churn, S_tmin, S_tmax, S_noise) + Heun; num_steps = N, "
            "2N - 1 evaluations",
    options=_GRID_OPTIONS + (
        registry.Option("s_churn", 0.0, "total stochasticity; gamma_i = min(S_churn / N, sqrt 2 - 1)",
                        minimum=0.0),
        registry.Option("s_tmin", 0.0, "churn only for sigma_i >= S_tmin", minimum=0.0),
        registry.Option("s_tmax", None, "churn only for sigma_i <= S_tmax; None = no bound",
                        minimum=0.0, kind=float),
        registry.Option("s_noise", 1.0, "scale of the churn noise (EDM: 1.003-1.007)", minimum=0.0),
    )))
