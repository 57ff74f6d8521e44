"""DDIM (Song, Meng & Ermon 2021): non-Markovian sampling of a DDPM in few steps, and its inversion.

On a decreasing grid tau_S = T-1 > ... > tau_1 = 0 of steps of the schedule, one step is DDIM
Eq. 12 with abar = abar_{tau_i}, abar_prev = abar_{tau_{i-1}} (and abar_prev = 1 after tau_1):

  x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
  sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev)      (Eq. 16)

x0_hat is the model's estimate of x_0 (clipped to [-1, 1] when asked) and eps_hat is re-derived
from it, so the step stays consistent with the clipped x0. The last step
returns x0_hat. eta = 0 is the deterministic DDIM (the probability-flow ODE's Euler step in
sigma/alpha); eta = 1 on the full grid is ancestral sampling with beta-tilde variances.

The grid only needs abar at its points, gathered from the full schedule's table; the model is
called with the original timesteps (`schedule.timestep_map`). Coefficients are computed once in
float64 numpy from the schedule's betas, so the schedule must be concrete (closed over, not a
traced argument); the loop is one `lax.scan`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion
from diffusion_jax.diffusion import MeanType, VarType, check_option
from diffusion_jax.samplers import grids, registry
from diffusion_jax.schedules import DiffusionSchedule, model_timesteps

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


@flax.struct.dataclass
class Trajectory:
  """What a sampler visited, one entry per step in sampling order.

  x: the state after each step [S, B, H, W, C] (the last entry is the returned sample).
  pred_x0: the model's x_0 estimate at each step [S, B, H, W, C].
  """
  x: jnp.ndarray
  pred_x0: jnp.ndarray


def resolve_timesteps(schedule: DiffusionSchedule, num_steps: int | None,
                      timesteps: Sequence[int] | None, spacing: grids.DdimSpacing = "uniform"
                      ) -> np.ndarray:
  """The descending integer grid: `timesteps` as given, or `ddim_timesteps(T, num_steps, spacing)`."""
  if timesteps is not None:
    if num_steps is not None and num_steps != len(timesteps):
      raise ValueError(f"pass num_steps or timesteps, not both (num_steps={num_steps}, "
                       f"len(timesteps)={len(timesteps)}).")
    grid = np.asarray(timesteps, np.int64)
    if grid.ndim != 1 or grid.size < 1 or np.any(np.diff(grid) >= 0):
      raise ValueError(f"timesteps must be strictly decreasing integers, got {timesteps}.")
    if grid[0] >= schedule.num_timesteps or grid[-1] < 0:
      raise ValueError(f"timesteps must lie in [0, {schedule.num_timesteps - 1}], got {timesteps}.")
    return grid
  num_steps = schedule.num_timesteps if num_steps is None else num_steps
  return grids.ddim_timesteps(schedule.num_timesteps, num_steps, spacing, schedule=schedule)


def ddim_coefficients(schedule: DiffusionSchedule, grid: np.ndarray, eta: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Float64 coefficients (sqrt(abar_prev), sqrt(1 - abar_prev - sigma^2), sigma) of Eq. 12 per step."""
  log_abar = grids.log_alphas_cumprod(schedule)
  log_abar_t = log_abar[grid]
  log_abar_prev = np.append(log_abar[grid[1:]], 0.0)           # abar_prev = 1 after the last step
  one_minus_abar = -np.expm1(log_abar_t)
  one_minus_abar_prev = -np.expm1(log_abar_prev)
  one_minus_ratio = -np.expm1(log_abar_t - log_abar_prev)      # 1 - abar / abar_prev
  sigma = eta * np.sqrt(one_minus_abar_prev / one_minus_abar * one_minus_ratio)   # Eq. 16
  return (np.exp(0.5 * log_abar_prev), np.sqrt(np.maximum(one_minus_abar_prev - sigma**2, 0.0)),
          sigma)


def ddim_sample_loop(model_fn: ModelFn, schedule: DiffusionSchedule, shape: Sequence[int],
                     key: jax.Array, *, num_steps: int | None = None,
                     timesteps: Sequence[int] | None = None, spacing: grids.DdimSpacing = "uniform",
                     eta: float = 0.0, mean_type: MeanType = "eps", var_type: VarType = "fixedlarge",
                     clip_denoised: bool = True, x_T: jnp.ndarray | None = None,
                     return_trajectory: bool = False):
  """Samples with DDIM (Song et al. 2021, Eq. 12) on a sub-grid of the schedule.

  Args:
    model_fn: model_fn(x_t [B, H, W, C], t_original int32 [B]) -> output.
    schedule: the diffusion the model was trained with (a respaced one works too).
    shape: [B, H, W, C] of the samples.
    key: PRNG key: x_T from split(key)[0] unless given; the noise of the step at grid point
      t from fold_in(split(key)[1], t), so eta = 1 on the full grid reproduces
      `ancestral.p_sample_loop` with var_type="fixedsmall" draw for draw.
    num_steps: model evaluations S (grid from `grids.ddim_timesteps(T, S, spacing)`; None = T).
    timesteps: an explicit descending grid of schedule steps instead of num_steps.
    spacing: "uniform" | "quadratic" | "karras" (see `grids.ddim_timesteps`).
    eta: 0 = deterministic DDIM, 1 = DDPM-like variances (Eq. 16).
    mean_type, var_type: what the model outputs (a learned variance is ignored).
    clip_denoised: clip x0_hat to [-1, 1] (eps is re-derived from the clipped x0_hat).
    x_T: optional starting noise [B, H, W, C].
    return_trajectory: also return a `Trajectory` (x and x0_hat after every step).

  Returns:
    x_0 [B, H, W, C], or (x_0, Trajectory).
  """
  grid = resolve_timesteps(schedule, num_steps, timesteps, spacing)
  c_x0, c_eps, sigma = ddim_coefficients(schedule, grid, eta)
  return generalized_sample_loop(model_fn, schedule, shape, key, grid, c_x0, c_eps, sigma,
                                 mean_type=mean_type, var_type=var_type,
                                 clip_denoised=clip_denoised, x_T=x_T,
                                 return_trajectory=return_trajectory)


def generalized_sample_loop(model_fn: ModelFn, schedule: DiffusionSchedule, shape: Sequence[int],
                            key: jax.Array, grid: np.ndarray, c_x0: np.ndarray, c_eps: np.ndarray,
                            sigma: np.ndarray, *, mean_type: MeanType, var_type: VarType,
                            clip_denoised: bool, x_T: jnp.ndarray | None = None,
                            return_trajectory: bool = False):
  """The loop shared by DDIM and Analytic-DPM: x_prev = c_x0 x0_hat + c_eps eps_hat + sigma z.

  Args:
    grid: descending schedule steps [S]; c_x0, c_eps, sigma: per-step coefficients [S].
    Others: as in `ddim_sample_loop`.
  """
  check_option("mean_type", mean_type, diffusion.MEAN_TYPES)
  check_option("var_type", var_type, diffusion.VAR_TYPES)
  shape = tuple(shape)
  key_init, key_steps = jax.random.split(key)
  x = jax.random.normal(key_init, shape) if x_T is None else x_T
  chex.assert_shape(x, shape)

  def step(x, inputs):
    t_index, c_x0, c_eps, sigma = inputs
    t = jnp.full((shape[0],), t_index, jnp.int32)
    output = model_fn(x, model_timesteps(schedule, t))
    x0 = diffusion.p_mean_variance(schedule, output, x, t, mean_type=mean_type, var_type=var_type,
                                   clip_denoised=clip_denoised).pred_xstart
    eps = diffusion.predict_noise_from_start(schedule, x, t, x0)
    z = jax.random.normal(jax.random.fold_in(key_steps, t_index), shape, x.dtype)
    x = c_x0 * x0 + c_eps * eps + sigma * z                     # DDIM Eq. 12
    return x, (x, x0) if return_trajectory else None

  f32 = lambda a: jnp.asarray(a, jnp.float32)
  x, traj = jax.lax.scan(step, x, (jnp.asarray(grid, jnp.int32), f32(c_x0), f32(c_eps), f32(sigma)))
  return (x, Trajectory(x=traj[0], pred_x0=traj[1])) if return_trajectory else x


def ddim_reverse_loop(model_fn: ModelFn, schedule: DiffusionSchedule, x_0: jnp.ndarray, *,
                      num_steps: int | None = None, timesteps: Sequence[int] | None = None,
                      spacing: grids.DdimSpacing = "uniform", mean_type: MeanType = "eps",
                      var_type: VarType = "fixedlarge", clip_denoised: bool = False,
                      return_trajectory: bool = False):
  """Deterministic DDIM inversion x_0 -> x_{T-1}: the eta = 0 ODE run forwards in time.

  It mirrors `ddim_sample_loop(eta=0)` on the same grid, so decoding the result reconstructs
  x_0 up to the discretization error. On the ascending grid g_0 = 0 < ... < g_{S-1} = T-1,
  step j moves to level g_j with eps evaluated at the previous point (Euler in sigma/alpha):

    x_{g_j} = sqrt(abar_{g_j}) x0_hat + sqrt(1 - abar_{g_j}) eps(x_{g_{j-1}}, g_{j-1}),

  where the first step starts from the data itself (x0_hat = x_0, eps taken at g_0). S steps,
  S model evaluations, like decoding.

  Args:
    model_fn, schedule, num_steps, timesteps, spacing, mean_type, var_type: as in
      `ddim_sample_loop` (the grid is the same one, walked upwards).
    x_0: data [B, H, W, C].
    clip_denoised: clip x0_hat (off by default: inversion should be exact, not bounded).
    return_trajectory: also return a `Trajectory` (states and x0_hat after every step).

  Returns:
    x_{T-1} [B, H, W, C] (the latent to feed as `x_T`), or (x_{T-1}, Trajectory).
  """
  check_option("mean_type", mean_type, diffusion.MEAN_TYPES)
  check_option("var_type", var_type, diffusion.VAR_TYPES)
  grid = resolve_timesteps(schedule, num_steps, timesteps, spacing)[::-1]      # ascending
  log_abar = grids.log_alphas_cumprod(schedule)[grid]
  sqrt_abar_next = jnp.asarray(np.exp(0.5 * log_abar), jnp.float32)
  sqrt_one_minus_abar_next = jnp.asarray(np.sqrt(-np.expm1(log_abar)), jnp.float32)
  model_steps = jnp.asarray(np.append(grid[0], grid[:-1]), jnp.int32)
  batch = x_0.shape[0]

  def step(x, inputs):
    j, t_index, c_x0, c_eps = inputs
    t = jnp.full((batch,), t_index, jnp.int32)
    output = model_fn(x, model_timesteps(schedule, t))
    x0 = diffusion.p_mean_variance(schedule, output, x, t, mean_type=mean_type, var_type=var_type,
                                   clip_denoised=clip_denoised).pred_xstart
    eps = diffusion.predict_noise_from_start(schedule, x, t, x0)
    x0 = jnp.where(j == 0, x, x0)  # the first step starts from the data, where x0_hat = x_0
    x = c_x0 * x0 + c_eps * eps
    return x, (x, x0) if return_trajectory else None

  inputs = (jnp.arange(len(grid)), model_steps, sqrt_abar_next, sqrt_one_minus_abar_next)
  x, traj = jax.lax.scan(step, x_0, inputs)
  return (x, Trajectory(x=traj[0], pred_x0=traj[1])) if return_trajectory else x


def slerp(z_0: jnp.ndarray, z_1: jnp.ndarray, alpha: jnp.ndarray | float) -> jnp.ndarray:
  """Spherical interpolation of latents (DDIM Sec. 5.3), per example.

  slerp = sin((1 - a) theta) / sin(theta) z_0 + sin(a theta) / sin(theta) z_1, with theta the
  angle between the flattened z_0 and z_1; falls back to linear interpolation when they are
  (nearly) parallel.

  Args:
    z_0, z_1: [B, ...] latents (e.g. x_T from `ddim_reverse_loop`).
    alpha: scalar or [B] interpolation weight in [0, 1].

  Returns:
    [B, ...].
  """
  chex.assert_equal_shape([z_0, z_1])
  batch = z_0.shape[0]
  a = jnp.broadcast_to(jnp.asarray(alpha, z_0.dtype), (batch,))
  flat_0, flat_1 = z_0.reshape(batch, -1), z_1.reshape(batch, -1)
  cos = jnp.sum(flat_0 * flat_1, -1) / (jnp.linalg.norm(flat_0, axis=-1) * jnp.linalg.norm(flat_1, axis=-1))
  theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
  sin = jnp.sin(theta)
  parallel = sin < 1e-6
  safe_sin = jnp.where(parallel, 1.0, sin)
  w_0 = jnp.where(parallel, 1.0 - a, jnp.sin((1.0 - a) * theta) / safe_sin)
  w_1 = jnp.where(parallel, a, jnp.sin(a * theta) / safe_sin)
  expand = (batch,) + (1,) * (z_0.ndim - 1)
  return w_0.reshape(expand) * z_0 + w_1.reshape(expand) * z_1


def _run(model_fn: ModelFn, schedule: DiffusionSchedule, shape: Sequence[int], key: jax.Array,
         **options):
  return ddim_sample_loop(model_fn, schedule, shape, key, **options)


registry.register(registry.Sampler(
    name="ddim", run=_run, check=registry.at_most_num_timesteps,
    summary="DDIM (Song et al. 2021), Eq. 12 on an integer grid from T-1 to 0",
    options=(
        registry.Option("eta", 0.0, "stochasticity (Eq. 16): 0 deterministic, 1 DDPM-like",
                        minimum=0.0),
        registry.Option("spacing", "uniform", "integer step grid (grids.ddim_timesteps; karras: "
                        "rho 7)", choices=grids.DDIM_SPACINGS),
    )))
