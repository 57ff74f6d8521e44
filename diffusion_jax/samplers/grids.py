"""Time grids of the fast samplers, computed once in float64 numpy.

Two kinds of grid live here:

* integer grids (`ddim_timesteps`): which steps of a discrete schedule a DDIM-style sampler
  visits, in sampling order. Our grids always start at T-1 and end at 0, so the whole chain is
  covered (grids that miss T-1 start from the wrong noise level, a known bug class).
* continuous grids (`continuous_timesteps`, `TimeGrid`): DPM-Solver's view of a discrete
  schedule as a continuous-time process (Lu et al. 2022, App. D): log alpha is interpolated
  piecewise-linearly between the steps, so lambda(u) = log alpha - log sigma is defined for any
  u in [0, T-1] (u is the step index of the schedule, a float) and can be inverted exactly.

A `TimeGrid` carries everything a solver needs at each point: alpha, sigma, lambda and the
timestep shown to the model (the ORIGINAL timestep, `schedule.timestep_map` interpolated).
Its last point may be sigma = 0 (a final jump to the denoised x_0).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.diffusion import check_option
from diffusion_jax.schedules import DiffusionSchedule

DDIM_SPACINGS: tuple[str, ...] = ("uniform", "quadratic", "karras")
TIME_GRIDS: tuple[str, ...] = ("logSNR", "time_uniform", "time_quadratic", "karras")
FINAL_STEPS: tuple[str, ...] = ("zero", "sigma_min")
DdimSpacing = Literal["uniform", "quadratic", "karras"]
TimeGridName = Literal["logSNR", "time_uniform", "time_quadratic", "karras"]
FinalStep = Literal["zero", "sigma_min"]


def concrete_alphas_cumprod(schedule: DiffusionSchedule) -> np.ndarray:
  """The schedule's alpha-bar table as float64 numpy; the schedule must not be traced."""
  try:
    return np.asarray(schedule.alphas_cumprod, dtype=np.float64)
  except jax.errors.TracerArrayConversionError:
    raise ValueError(
        "This sampler computes its time grid in numpy from the schedule's values, so `schedule` "
        "must be concrete: close over it (lambda x: sampler(model_fn, schedule, ...)) instead of "
        "passing it as a traced argument of jit/pmap.") from None


def strictly_decreasing_ints(values: np.ndarray, num_timesteps: int) -> np.ndarray:
  """Rounds a decreasing grid from T-1 to 0 to distinct integers, keeping both ends.

  Point i (of n) is first clipped to [n-1-i, T-1-i], the range that leaves room for distinct
  neighbours on both sides; then, from the end upwards, each point is pushed to at least one
  above the next, which never leaves that range.
  """
  n = len(values)
  i = np.arange(n)
  ints = np.clip(np.round(values).astype(np.int64), n - 1 - i, num_timesteps - 1 - i)
  for k in range(n - 2, -1, -1):
    ints[k] = max(ints[k], ints[k + 1] + 1)
  return ints


def karras_sigmas(sigma_max: float, sigma_min: float, num_points: int, rho: float = 7.0) -> np.ndarray:
  """Karras et al. (2022) Eq. 5: sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho.

  sigma is the EDM noise level sigma = sqrt(1 - abar) / sqrt(abar) = exp(-lambda).
  """
  ramp = np.linspace(0.0, 1.0, num_points) if num_points > 1 else np.zeros(1)
  inv_max, inv_min = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
  return (inv_max + ramp * (inv_min - inv_max)) ** rho


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: DdimSpacing = "uniform", *,
                   schedule: DiffusionSchedule | None = None, rho: float = 7.0) -> np.ndarray:
  """The integer steps a DDIM-style sampler visits, descending from T-1 to 0.

  Args:
    num_timesteps: T of the schedule.
    num_steps: number of grid points (= model evaluations), 1 <= num_steps <= T.
    spacing: "uniform" (round(linspace(T-1, 0, S))), "quadratic" (DDIM's quadratic skip,
      (T-1) (i/(S-1))^2, denser near the data) or "karras" (Karras et al.'s rho = 7 spacing of
      sigma = exp(-lambda), rounded to integers; needs `schedule`). Points that round onto each
      other are pushed apart so there are exactly `num_steps` distinct steps.
    schedule: the schedule (only for "karras").
    rho: Karras' rho.

  Returns:
    int64 [num_steps], strictly decreasing, first T-1 and (for num_steps > 1) last 0.
  """
  check_option("spacing", spacing, DDIM_SPACINGS)
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"num_steps={num_steps} must be in [1, num_timesteps={num_timesteps}].")
  if num_steps == 1:
    return np.array([num_timesteps - 1], np.int64)
  frac = np.linspace(1.0, 0.0, num_steps)
  if spacing == "uniform":
    values = (num_timesteps - 1) * frac
  elif spacing == "quadratic":
    values = (num_timesteps - 1) * frac**2
  else:
    if schedule is None:
      raise ValueError("spacing='karras' needs the `schedule` (its sigmas set the grid).")
    values = continuous_timesteps(schedule, num_steps, "karras", rho=rho)
  return strictly_decreasing_ints(values, num_timesteps)


# ---------------------------------------------------------------------------------------------
# DPM-Solver's continuous-time view of a discrete schedule (Lu et al. 2022, App. D).


def log_alphas_cumprod(schedule: DiffusionSchedule) -> np.ndarray:
  """log abar_t [T] in float64, summed from the betas.

  Ratios abar_t / abar_s = exp(log abar_t - log abar_s) computed from this are accurate to
  float64 even for neighbouring steps, where 1 - abar_t / abar_s (~beta_t) would lose three
  digits if formed from the float32 alpha-bar table.
  """
  try:
    betas = np.asarray(schedule.betas, dtype=np.float64)
  except jax.errors.TracerArrayConversionError:
    concrete_alphas_cumprod(schedule)  # raises the explanatory error
    raise
  return np.cumsum(np.log1p(-betas))


def _log_alpha_table(schedule: DiffusionSchedule) -> np.ndarray:
  return 0.5 * log_alphas_cumprod(schedule)


def lambda_from_log_alpha(log_alpha, xp=np):
  """lambda = log alpha - log sigma with sigma^2 = 1 - alpha^2 (numpy, or jnp with xp=jnp)."""
  return log_alpha - 0.5 * xp.log(-xp.expm1(2.0 * log_alpha))


def log_alpha_from_lambda(lam, xp=np):
  """The inverse of `lambda_from_log_alpha`: log alpha = -1/2 log(1 + e^{-2 lambda})."""
  return -0.5 * xp.logaddexp(0.0, -2.0 * lam)


def interp_log_alpha(u, table, xp=np):
  """log alpha at continuous steps u from the per-step table [T]: piecewise linear in u."""
  return xp.interp(u, xp.arange(table.shape[0], dtype=table.dtype), table)


def interp_step(log_alpha, table, xp=np):
  """The inverse of `interp_log_alpha` (exact: log alpha decreases strictly with u)."""
  # interp needs increasing abscissae; log alpha decreases with u.
  return xp.interp(log_alpha, table[::-1], xp.arange(table.shape[0], dtype=table.dtype)[::-1])


def log_alpha_at(schedule: DiffusionSchedule, u: np.ndarray) -> np.ndarray:
  """log alpha(u) by piecewise-linear interpolation over the steps u = 0, 1, ..., T-1."""
  return interp_log_alpha(np.asarray(u, np.float64), _log_alpha_table(schedule))


def lambda_at(schedule: DiffusionSchedule, u: np.ndarray) -> np.ndarray:
  """lambda(u) = log(alpha/sigma), half the log-SNR, of the continuous-time process."""
  return lambda_from_log_alpha(log_alpha_at(schedule, u))


def u_from_lambda(schedule: DiffusionSchedule, lam: np.ndarray) -> np.ndarray:
  """The inverse of `lambda_at` (exact: log alpha is monotone and piecewise linear in u)."""
  return interp_step(log_alpha_from_lambda(np.asarray(lam, np.float64)), _log_alpha_table(schedule))


def model_time_at(schedule: DiffusionSchedule, u: np.ndarray) -> np.ndarray:
  """The ORIGINAL timestep to show the model at continuous steps u (`timestep_map` interpolated)."""
  timestep_map = np.asarray(schedule.timestep_map, np.float64)
  return np.interp(np.asarray(u, np.float64), np.arange(timestep_map.shape[0]), timestep_map)


def continuous_timesteps(schedule: DiffusionSchedule, num_points: int, kind: TimeGridName = "logSNR",
                         *, rho: float = 7.0) -> np.ndarray:
  """A decreasing grid of continuous steps u from T-1 to 0 (DPM-Solver's `get_time_steps`).

  Args:
    schedule: the discrete schedule.
    num_points: number of points, both ends included.
    kind: "logSNR" (uniform in lambda), "time_uniform" (uniform in u), "time_quadratic"
      (uniform in sqrt(t) with DPM-Solver's t = (u + 1) / T, denser near the data) or "karras"
      (Karras et al.'s rho-spacing of sigma = exp(-lambda)).

  Returns:
    float64 [num_points]: u_0 = T-1 > ... > u_{N-1} = 0.
  """
  check_option("kind", kind, TIME_GRIDS)
  num_timesteps = schedule.num_timesteps
  if num_points < 2:
    raise ValueError(f"num_points={num_points} must be >= 2 (both ends of the grid).")
  if kind == "time_uniform":
    u = np.linspace(num_timesteps - 1, 0.0, num_points)
  elif kind == "time_quadratic":
    t = np.linspace(1.0, np.sqrt(1.0 / num_timesteps), num_points) ** 2
    u = num_timesteps * t - 1.0
  else:
    lam_max, lam_min = lambda_at(schedule, np.array([0.0, num_timesteps - 1.0]))
    if kind == "logSNR":
      lam = np.linspace(lam_min, lam_max, num_points)
    else:
      lam = -np.log(karras_sigmas(np.exp(-lam_min), np.exp(-lam_max), num_points, rho))
    u = u_from_lambda(schedule, lam)
  u[0], u[-1] = num_timesteps - 1.0, 0.0  # exact ends despite the round trip through lambda
  return u


@dataclasses.dataclass(frozen=True)
class TimeGrid:
  """The points of a sampling path in float64 numpy, in sampling order (noise first).

  Attributes:
    u: continuous step index of each point [P]; NaN for a final sigma = 0 point.
    alpha, sigma: sqrt(abar) and sqrt(1 - abar) [P] (1 and 0 at a final sigma = 0 point).
    lam: log(alpha / sigma) [P] (+inf at sigma = 0).
    model_t: the timestep shown to the model at each point [P] (the ORIGINAL timestep,
      interpolated between steps; NaN at sigma = 0).
  """
  u: np.ndarray
  alpha: np.ndarray
  sigma: np.ndarray
  lam: np.ndarray
  model_t: np.ndarray

  def __len__(self) -> int:
    return self.u.shape[0]

  @property
  def integer_times(self) -> bool:
    """True when every model evaluation falls on a step of the schedule (int timesteps)."""
    finite = self.model_t[np.isfinite(self.model_t)]
    return bool(np.all(finite == np.round(finite)))

  @classmethod
  def from_steps(cls, schedule: DiffusionSchedule, u: Sequence[float], *, final: FinalStep
                 ) -> "TimeGrid":
    """Builds the grid through the points u (descending); final="zero" appends sigma = 0."""
    u = np.asarray(u, np.float64)
    if u.ndim != 1 or u.size < 1 or np.any(np.diff(u) >= 0):
      raise ValueError(f"timesteps must be a strictly decreasing 1-D sequence, got {u}.")
    if u[0] > schedule.num_timesteps - 1 or u[-1] < 0:
      raise ValueError(f"timesteps must lie in [0, {schedule.num_timesteps - 1}], got {u[0]}..{u[-1]}.")
    check_option("final", final, FINAL_STEPS)
    log_alpha = log_alpha_at(schedule, u)
    alpha = np.exp(log_alpha)
    sigma = np.sqrt(-np.expm1(2.0 * log_alpha))
    lam = log_alpha - np.log(sigma)
    model_t = model_time_at(schedule, u)
    if final == "zero":
      u, alpha, sigma, lam, model_t = (np.append(a, v) for a, v in (
          (u, np.nan), (alpha, 1.0), (sigma, 0.0), (lam, np.inf), (model_t, np.nan)))
    elif len(u) < 2:
      raise ValueError("final='sigma_min' needs at least 2 points (a start and an end).")
    return cls(u=u, alpha=alpha, sigma=sigma, lam=lam, model_t=model_t)


def alphas_cumprod_at(schedule: DiffusionSchedule, t: jnp.ndarray) -> jnp.ndarray:
  """abar at (possibly fractional) steps t of `schedule`, jnp: log abar interpolated linearly.

  The same continuous-time process the solvers assume, for building exact denoisers that
  accept float timesteps (e.g. a Gaussian-mixture oracle); integer t gives the table values
  exactly (indexed, not interpolated).
  """
  t = jnp.asarray(t)
  if jnp.issubdtype(t.dtype, jnp.integer):
    return schedule.alphas_cumprod[t]
  log_abar = jnp.log(schedule.alphas_cumprod)
  return jnp.exp(jnp.interp(jnp.asarray(t, jnp.float32), jnp.arange(log_abar.shape[0], dtype=jnp.float32),
                            log_abar))
