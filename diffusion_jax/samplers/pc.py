"""Predictor-corrector sampling of the reverse-time SDE (Song et al. 2021, Sec. 4.2, Algorithms 2-3).

A predictor takes one step of a numerical solver of the reverse SDE from t to the next grid
point; a corrector then runs score-based MCMC (Langevin dynamics) at the new noise level. Both
only need a score_fn(x, t) (`sde.score_fn_from_model` turns any eps / x0 / v / score model into
one), so one trained DDPM model runs under every predictor.

Predictors (`PREDICTORS`), each a map (x, t, t_next, z) -> (x_next, mean without noise):
  euler_maruyama     x + [f - g^2 s] dt + g sqrt(|dt|) z on any grid (Song Eq. 6 discretized).
  reverse_diffusion  x - f_i + G_i^2 s + G_i z: the forward chain's step run backwards (Eq. 46).
  ancestral          the exact ancestral step of the discrete chain (Eq. 47): for VP
                     (x + beta_i s) / sqrt(1 - beta_i) + sqrt(beta_i) z, DDPM's Algorithm 2; for VE
                     NCSN's x + (sigma_i^2 - sigma_{i-1}^2) s + tau_i z.
  none               no step (corrector-only sampling).
The two discrete predictors walk the SDE's own N steps (build the SDE with the N you want).

Correctors (`CORRECTORS`): "langevin" (Algorithms 4-5: eps = 2 alpha (r ||z|| / ||s||)^2,
x <- x + eps s + sqrt(2 eps) z, r the signal-to-noise ratio `snr`, alpha = 1 - beta_i on VP-type
SDEs and 1 otherwise), "none". As in the reference code, ||z|| and ||s|| are batch means of the
per-example norms, so the step (not the noise) depends on the batch a sample is drawn in (under
pmap: the per-device batch). Per-example norms would be batch-independent but blow the step up
wherever a sample's score is near zero (a mode), which low-dimensional data hits constantly.

The grid: M points t_0 = 1 > ... > t_{M-1} = t_min, the SDE's steps t_min = `step_to_time(0)`
(1/N for VP, where sigma = sqrt(beta_0); 0 for VE, sigma = sigma_min); M = N gives exactly the
SDE's steps, other M a uniform grid (euler_maruyama / none only). At each point the corrector
runs, then the predictor moves to the next point; at t_min the final denoising step (optional)
jumps to t = 0 without noise: the discrete predictors take their last step's mean (DDPM's
noise-free last step; Tweedie's formula for VE), euler_maruyama and none Tweedie's formula
E[x0 | x] = (x + sigma^2 s) / a. Without it the samples keep the noise of t_min.

Randomness: x_T from split(key)[0]; grid point n (counted like DDPM's timesteps, n = M-1 first)
draws from fold_in(split(key)[1], n), split in two (predictor, corrector) when a corrector runs.
So with no corrector the ancestral predictor on `VPSDE()` draws exactly the noise of
`ancestral.p_sample_loop` with the same key.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import sde as sde_lib
from diffusion_jax.diffusion import MEAN_TYPES, check_option
from diffusion_jax.samplers import registry
from diffusion_jax.schedules import DiffusionSchedule
from diffusion_jax.sde import SDE, ScoreFn, batch_time, expand

Predictor = Literal["euler_maruyama", "reverse_diffusion", "ancestral", "none"]
Corrector = Literal["langevin", "none"]
PREDICTORS: tuple[str, ...] = ("euler_maruyama", "reverse_diffusion", "ancestral", "none")
CORRECTORS: tuple[str, ...] = ("langevin", "none")
DISCRETE_PREDICTORS: tuple[str, ...] = ("reverse_diffusion", "ancestral")
StepFn = Callable[..., tuple[jnp.ndarray, jnp.ndarray]]


# ---------------------------------------------------------------------------------------------
# Predictors: (sde, score_fn, x, t, t_next, z) -> (x_next, mean).


def euler_maruyama_step(sde: SDE, score_fn: ScoreFn, x, t, t_next, z):
  """x + drift dt + g sqrt(-dt) z with dt = t_next - t < 0, on the reverse SDE (Song Eq. 6)."""
  drift, g = sde.reverse(score_fn).sde(x, t)
  dt = expand(batch_time(x, t_next) - batch_time(x, t), x)
  mean = x + drift * dt
  return mean + g * jnp.sqrt(-dt) * z, mean


def reverse_diffusion_step(sde: SDE, score_fn: ScoreFn, x, t, t_next, z):
  """x - f_rev + G z with f_rev = f - G^2 s: the forward step into t run backwards (Song Eq. 46)."""
  del t_next  # the step is the chain's own
  f_rev, big_g = sde.reverse(score_fn).discretize(x, t)
  mean = x - f_rev
  return mean + big_g * z, mean


def ancestral_step(sde: SDE, score_fn: ScoreFn, x, t, t_next, z):
  """The discrete chain's ancestral step from step i (at t) to i - 1 (Song Eq. 47)."""
  del t_next
  t = batch_time(x, t)
  score, i = score_fn(x, t), sde.step_index(t)
  if isinstance(sde, sde_lib.VPChainSDE):  # DDPM: x_{i-1} = (x_i + beta_i s) / sqrt(1 - beta_i) + sqrt(beta_i) z
    beta = expand(sde.discrete_betas[i], x)
    mean = (x + beta * score) / jnp.sqrt(1.0 - beta)
    return mean + jnp.sqrt(beta) * z, mean
  if isinstance(sde, sde_lib.VESDE):  # NCSN: x_{i-1} = x_i + (s_i^2 - s_{i-1}^2) s + tau_i z
    sigmas = sde.discrete_sigmas
    var, prev_var = jnp.square(sigmas[i]), jnp.where(i == 0, 0.0, jnp.square(sigmas[jnp.maximum(i - 1, 0)]))
    mean = x + expand(var - prev_var, x) * score
    tau = jnp.sqrt(prev_var * (var - prev_var) / var)  # the std of q(x_{i-1} | x_i, x_0)
    return mean + expand(tau, x) * z, mean
  raise ValueError(f"predictor='ancestral' is defined for VP-type SDEs and VESDE, not "
                   f"{type(sde).__name__}; use 'reverse_diffusion' or 'euler_maruyama'.")


def none_step(sde: SDE, score_fn: ScoreFn, x, t, t_next, z):
  """The identity (corrector-only sampling)."""
  del sde, score_fn, t, t_next, z
  return x, x


_PREDICTOR_STEPS: dict[str, StepFn] = {
    "euler_maruyama": euler_maruyama_step, "reverse_diffusion": reverse_diffusion_step,
    "ancestral": ancestral_step, "none": none_step}


# ---------------------------------------------------------------------------------------------
# Corrector.


def langevin_step(sde: SDE, score_fn: ScoreFn, x, t, z, snr: float):
  """One Langevin step at the noise level of t with step size set by the SNR (Song Algs. 4-5).

  eps = 2 alpha (snr ||z|| / ||s||)^2 with the batch means of the per-example norms, as in the
  reference code; x <- x + eps s + sqrt(2 eps) z.

  Returns:
    (x [B, ...], mean [B, ...]).
  """
  t = batch_time(x, t)
  score = score_fn(x, t)
  if isinstance(sde, (sde_lib.VPChainSDE, sde_lib.subVPSDE)):
    alpha = 1.0 - sde.discrete_betas[sde.step_index(t)]
  else:
    alpha = jnp.ones_like(t)
  norm = lambda v: jnp.mean(jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=-1)))  # noqa: E731
  step = 2.0 * alpha * jnp.square(snr * norm(z) / norm(score))
  mean = x + expand(step, x) * score
  return mean + expand(jnp.sqrt(2.0 * step), x) * z, mean


# ---------------------------------------------------------------------------------------------
# The loop.


def sampling_times(sde: SDE, num_steps: int | None = None,
                   predictor: Predictor = "euler_maruyama") -> np.ndarray:
  """The grid t_0 = 1 > ... > t_{M-1} = t_min in float64 (see the module docstring).

  Args:
    sde: the SDE.
    num_steps: M; None = the SDE's N steps.
    predictor: the discrete predictors accept only M = N.

  Returns:
    float64 [M], descending.
  """
  check_option("predictor", predictor, PREDICTORS)
  num_steps = sde.N if num_steps is None else int(num_steps)
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps} must be >= 1.")
  if num_steps == sde.N:
    return sde.step_times()[::-1].copy()
  if predictor in DISCRETE_PREDICTORS:
    raise ValueError(
        f"predictor={predictor!r} walks the SDE's own N={sde.N} steps, so num_steps={num_steps} is not "
        f"possible; build the SDE with N={num_steps} (e.g. dataclasses.replace(sde, N={num_steps})) or "
        "use predictor='euler_maruyama'.")
  return np.linspace(1.0, float(sde.step_to_time(0.0)), num_steps)


def pc_sample_loop(score_fn: ScoreFn, sde: SDE, shape: Sequence[int], key: jax.Array, *,
                   predictor: Predictor = "reverse_diffusion", corrector: Corrector = "langevin",
                   snr: float = 0.16, n_corrector_steps: int = 1, num_steps: int | None = None,
                   denoise: bool = True, x_T: jnp.ndarray | None = None,
                   return_trajectory: bool = False):
  """Predictor-corrector sampling (Song et al. 2021, Algorithm 1's loop with Algorithms 2-5).

  One `lax.scan` over the grid. Score evaluations: M predictor steps (M - 1 without `denoise`)
  plus n_corrector_steps at each of the M points.

  Args:
    score_fn: score_fn(x [B, ...], t [B]) -> grad log p_t(x).
    sde: the forward SDE (its prior starts the chain, its N fixes the discrete predictors' steps).
    shape: [B, ...] of the samples.
    key: PRNG key.
    predictor: one of PREDICTORS.
    corrector: one of CORRECTORS.
    snr: the corrector's signal-to-noise ratio r (0.16 in Song et al.'s CIFAR-10 configs).
    n_corrector_steps: Langevin steps per grid point.
    num_steps: grid points M; None = the SDE's N.
    denoise: end with the noise-free jump from t_min to t = 0.
    x_T: optional start [B, ...] (default: drawn from the prior).
    return_trajectory: also return x after every grid point, [M, B, ...] (the last entry is the
      output).

  Returns:
    x_0 [B, ...], or (x_0, trajectory).
  """
  check_option("predictor", predictor, PREDICTORS)
  check_option("corrector", corrector, CORRECTORS)
  if corrector != "none" and (not snr > 0 or n_corrector_steps < 1):
    raise ValueError(f"corrector={corrector!r} needs snr > 0 and n_corrector_steps >= 1, got "
                     f"snr={snr}, n_corrector_steps={n_corrector_steps}.")
  times = sampling_times(sde, num_steps, predictor)
  shape = tuple(shape)
  key_init, key_steps = jax.random.split(key)
  x = sde.prior_sampling(key_init, shape) if x_T is None else x_T
  chex.assert_shape(x, shape)
  predict = _PREDICTOR_STEPS[predictor]

  def point_keys(n):
    key_n = jax.random.fold_in(key_steps, n)
    return (key_n, None) if corrector == "none" else tuple(jax.random.split(key_n))

  def correct(x, t, key):
    if corrector == "none":
      return x

    def one(x, k):
      return langevin_step(sde, score_fn, x, t, jax.random.normal(k, shape), snr)[0], None

    return jax.lax.scan(one, x, jax.random.split(key, n_corrector_steps))[0]

  def step(x, inputs):
    t, t_next, n = inputs
    key_predictor, key_corrector = point_keys(n)
    x = correct(x, t, key_corrector)
    x, _ = predict(sde, score_fn, x, t, t_next, jax.random.normal(key_predictor, shape))
    return x, x if return_trajectory else None

  m = len(times)
  grid = (jnp.asarray(times[:-1], jnp.float32), jnp.asarray(times[1:], jnp.float32),
          jnp.arange(m - 1, 0, -1, dtype=jnp.int32))
  x, trajectory = jax.lax.scan(step, x, grid)

  # The last point t_min: correct, then (optionally) the noise-free jump to the data.
  t_min = jnp.float32(times[-1])
  x = correct(x, t_min, point_keys(0)[1])
  if denoise:
    if predictor in DISCRETE_PREDICTORS:
      x = predict(sde, score_fn, x, t_min, 0.0, jnp.zeros(shape))[1]
    else:
      x = sde_lib.denoise(score_fn, sde, x, t_min)
  if not return_trajectory:
    return x
  return x, jnp.concatenate([trajectory, x[None]], axis=0)


# ---------------------------------------------------------------------------------------------
# The registry's view: any model_fn on a DDPM schedule or an SDE.

TIME_INPUT_OPTIONS: tuple[str, ...] = ("auto",) + sde_lib.TIME_INPUTS


def score_model(model_fn, process: DiffusionSchedule | SDE, *, mean_type: str, var_type: str,
                time_input: str = "auto") -> tuple[SDE, ScoreFn, str]:
  """The SDE and score_fn of a model trained on `process`, for the score-based samplers.

  A DDPM schedule becomes its exact `PiecewiseVPSDE` and the model sees the int steps it was
  trained on; an SDE is used as it is and, with time_input="auto", the model sees the fractional
  step (the convention of every score model this trainer makes, NCSN's included).

  Returns:
    (sde, score_fn, resolved time_input).
  """
  check_option("time_input", time_input, TIME_INPUT_OPTIONS)
  if mean_type not in sde_lib.PREDICTIONS:
    check_option("mean_type", mean_type, tuple(m for m in MEAN_TYPES if m in sde_lib.PREDICTIONS))
  if isinstance(process, DiffusionSchedule):
    sde, auto = sde_lib.PiecewiseVPSDE.from_schedule(process), "discrete"
  else:
    sde, auto = process, "continuous"
  time_input = auto if time_input == "auto" else time_input
  return sde, sde_lib.score_fn_from_model(model_fn, sde, prediction=mean_type, time_input=time_input,
                                          var_type=var_type), time_input


def _run(model_fn, process, shape, key, *, num_steps, mean_type, var_type, clip_denoised, x_T,
         return_trajectory, time_input, **options):
  del clip_denoised  # score samplers have no x0 prediction to clip (the final step is Tweedie's)
  sde, score_fn, _ = score_model(model_fn, process, mean_type=mean_type, var_type=var_type,
                                 time_input=time_input)
  return pc_sample_loop(score_fn, sde, shape, key, num_steps=num_steps, x_T=x_T,
                        return_trajectory=return_trajectory, **options)


def _check(options, num_steps, num_timesteps):
  if options["predictor"] in DISCRETE_PREDICTORS and num_steps not in (None, num_timesteps):
    return (f"predictor={options['predictor']!r} walks the chain's own {num_timesteps} steps "
            f"(diffusion.num_timesteps), so num_steps={num_steps} is not possible: leave "
            "sampling.num_steps unset, or use predictor='euler_maruyama' (any grid). For a "
            "continuous-time model, diffusion.num_timesteps may be changed at sampling time.")
  return None


TIME_INPUT_OPTION = registry.Option(
    "time_input", "auto", "the model's time input: auto (int steps on a DDPM schedule, the "
    "fractional step on an SDE) | discrete | continuous", choices=TIME_INPUT_OPTIONS)

registry.register(registry.Sampler(
    name="pc", run=_run, check=_check, accepts_sde=True,
    summary="predictor-corrector sampling of the reverse SDE (Song et al. 2021, Algorithms 2-5)",
    options=(
        registry.Option("predictor", "reverse_diffusion", "reverse-SDE solver step",
                        choices=PREDICTORS),
        registry.Option("corrector", "langevin", "score-based MCMC at each grid point",
                        choices=CORRECTORS),
        registry.Option("snr", 0.16, "Langevin signal-to-noise ratio r", minimum=0.0),
        registry.Option("n_corrector_steps", 1, "Langevin steps per grid point", minimum=1),
        registry.Option("denoise", True, "end with the noise-free step to t = 0"),
        TIME_INPUT_OPTION,
    )))
