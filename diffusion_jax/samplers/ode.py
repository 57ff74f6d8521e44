"""The probability-flow ODE (Song et al. 2021, Eq. 13), solved with diffrax's adaptive solvers.

Every SDE dx = f(x, t) dt + g(t) dw has a deterministic twin with the same marginals p_t:

  dx/dt = f(x, t) - 1/2 g(t)^2 grad_x log p_t(x),

so integrating it from x(1) ~ p_1 down to t_min samples the data, and integrating it upwards
from data gives exact likelihoods (`diffusion_jax.likelihood`). The solvers are diffrax's
explicit Runge-Kutta methods with its PID step-size controller (rtol, atol); the model is
called wherever the solver asks, at float times.

Which SDE: a DDPM model (a `DiffusionSchedule`) runs through `LogSNRVPSDE`, the VP SDE whose
marginals are the schedule's alpha-bars at every step and whose time runs linearly in log-SNR
between steps T-1 and 0 (smooth coefficients, as adaptive solvers need); its model sees the
fractional step of the schedule's continuous-time view (the same one DPM-Solver and EDM use in
this package). Continuous-time models pass their `sde.SDE` (VP, sub-VP, VE) directly.

Where it ends: at t_min, by default the SDE's step 0 (t = 0 for `LogSNRVPSDE` and VE, 1/N for
VPSDE), the lowest noise level a discrete model was trained on. With `denoise` (the default)
the sample is then E[x_0 | x(t_min)] (Tweedie's formula, Song et al.'s "noise removal"), one
more model evaluation.

Function evaluations (NFE): diffrax counts steps, not evaluations. Its FSAL solvers (tsit5,
dopri5, dopri8, bosh3) evaluate the first stage on the first step, then reuse each step's last
stage, so NFE = (stages - 1) * num_steps + 1, plus one for every rejection of the very first step
(diffrax re-evaluates the first stage then); heun costs 2 per step. `SolverStats.nfe` is that
formula, exact unless the first step is rejected (tests count the calls).
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

from absl import logging
import chex
import diffrax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import sde as sde_lib
from diffusion_jax.diffusion import VarType, check_option
from diffusion_jax.samplers import grids, registry
from diffusion_jax.schedules import DiffusionSchedule

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
Process = DiffusionSchedule | sde_lib.SDE
SolverName = Literal["tsit5", "dopri5", "dopri8", "bosh3", "heun"]
# name -> (diffrax solver, stages per step, first-same-as-last)
_SOLVERS = {"tsit5": (diffrax.Tsit5, 7, True), "dopri5": (diffrax.Dopri5, 7, True),
            "dopri8": (diffrax.Dopri8, 14, True), "bosh3": (diffrax.Bosh3, 4, True),
            "heun": (diffrax.Heun, 2, False)}
SOLVERS: tuple[str, ...] = tuple(_SOLVERS)


@flax.struct.dataclass
class SolverStats:
  """What one adaptive solve cost, int32 scalars (per device under pmap).

  nfe: vector-field evaluations (see the module docstring); num_steps = num_accepted_steps +
  num_rejected_steps.
  """
  nfe: jnp.ndarray
  num_steps: jnp.ndarray
  num_accepted_steps: jnp.ndarray
  num_rejected_steps: jnp.ndarray

  def as_dict(self) -> dict[str, int]:
    """Plain ints, for logs and JSON (on concrete values)."""
    names = ("nfe", "num_steps", "num_accepted_steps", "num_rejected_steps")
    return {name: int(getattr(self, name)) for name in names}


def solve(vector_field: Callable, y0, t0: float, t1: float, *, solver: SolverName = "tsit5",
          rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 8192,
          first_step: float = 0.01) -> tuple[object, SolverStats]:
  """Integrates dy/dt = vector_field(t, y) from t0 to t1 (either direction) with diffrax.

  Args:
    vector_field: (t scalar, y pytree) -> dy/dt, same structure as y.
    y0: the initial state (a pytree of arrays).
    t0, t1: the ends.
    solver: one of SOLVERS (explicit Runge-Kutta, adaptive with a PID controller).
    rtol, atol: the controller's tolerances (per element, RMS norm over the whole state).
    max_steps: diffrax raises if the solve needs more steps.
    first_step: the first step's size as a fraction of |t1 - t0|.

  Returns:
    (y(t1), SolverStats).
  """
  check_option("solver", solver, SOLVERS)
  solver_cls, stages, fsal = _SOLVERS[solver]
  solution = diffrax.diffeqsolve(
      diffrax.ODETerm(lambda t, y, args: vector_field(t, y)), solver_cls(), t0, t1,
      first_step * (t1 - t0), y0, stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
  num_steps = jnp.asarray(solution.stats["num_steps"], jnp.int32)
  nfe = (stages - 1) * num_steps + 1 if fsal else stages * num_steps
  stats = SolverStats(nfe=nfe, num_steps=num_steps,
                      num_accepted_steps=jnp.asarray(solution.stats["num_accepted_steps"], jnp.int32),
                      num_rejected_steps=jnp.asarray(solution.stats["num_rejected_steps"], jnp.int32))
  return jax.tree.map(lambda y: y[0], solution.ys), stats


@flax.struct.dataclass
class LogSNRVPSDE(sde_lib.VPChainSDE):
  """The VP SDE of a DDPM schedule with time running linearly in log-SNR: smooth and exact.

  t in [0, 1] maps to lambda(t) = lambda_max + t (lambda_min - lambda_max), lambda = log(alpha /
  sigma), from the schedule's step 0 (t = 0, lambda_max) to its step T-1 (t = 1, lambda_min), so
  a(t)^2 = sigmoid(2 lambda) = exp(-B(t)) with B(t) = softplus(-2 lambda(t)), and

    f = -beta(t) x / 2,  g = sqrt(beta(t)),
    beta(t) = dB/dt = 2 (lambda_max - lambda_min) sigmoid(-2 lambda(t)),

  smooth in t (the PF-ODE is dx/dlambda = sigma^2 x - sigma eps). The model's time input is the
  fractional DDPM step with the same lambda on the schedule's continuous-time view (log alpha
  piecewise linear between steps, `grids.interp_step`), so at integer steps the marginals are
  the schedule's alpha-bars. (`sde.PiecewiseVPSDE` has the same marginals at the steps, but its
  beta(t) jumps at each of them, which costs adaptive solvers many rejected steps.) Unlike the
  other VP SDEs, t = 0 is step 0 (sigma_min), not the clean data; B(t) counts from the data.

  Attributes:
    schedule: the DDPM schedule (its discrete chain).
    log_alphas: log sqrt(alpha-bar) at steps 0..N-1, float32 [N].
    lambda_max, lambda_min: lambda at steps 0 and N-1 (static floats).
  """
  schedule: DiffusionSchedule
  log_alphas: jnp.ndarray
  lambda_max: float = flax.struct.field(pytree_node=False, default=0.0)
  lambda_min: float = flax.struct.field(pytree_node=False, default=0.0)
  N: int = flax.struct.field(pytree_node=False, default=1000)

  @classmethod
  def from_schedule(cls, schedule: DiffusionSchedule) -> "LogSNRVPSDE":
    """From the schedule the model was trained with (on its original steps)."""
    if not np.array_equal(np.asarray(schedule.timestep_map), np.arange(schedule.num_timesteps)):
      raise ValueError("the schedule is respaced (its timestep_map is not 0..T-1); pass the "
                       "original schedule the model was trained with.")
    # The ends from the stored float32 table, so that step_to_time(0) = 0 and (N-1) -> 1.
    table = np.asarray(0.5 * grids.log_alphas_cumprod(schedule), np.float32)
    lam = grids.lambda_from_log_alpha(table[[0, -1]].astype(np.float64))
    return cls(schedule=schedule, log_alphas=jnp.asarray(table), lambda_max=float(lam[0]),
               lambda_min=float(lam[1]), N=schedule.num_timesteps)

  def lam(self, t):
    return self.lambda_max + jnp.asarray(t, jnp.float32) * (self.lambda_min - self.lambda_max)

  def beta(self, t):
    return 2.0 * (self.lambda_max - self.lambda_min) * jax.nn.sigmoid(-2.0 * self.lam(t))

  def integrated_beta(self, t):
    return jax.nn.softplus(-2.0 * self.lam(t))

  @property
  def discrete_schedule(self):
    return self.schedule

  def step_to_time(self, n):
    log_alpha = grids.interp_log_alpha(jnp.asarray(n, jnp.float32), self.log_alphas, jnp)
    lam = grids.lambda_from_log_alpha(log_alpha, jnp)
    return (self.lambda_max - lam) / (self.lambda_max - self.lambda_min)

  def time_to_step(self, t):
    return grids.interp_step(grids.log_alpha_from_lambda(self.lam(t), jnp), self.log_alphas, jnp)


def as_sde(process: Process) -> sde_lib.SDE:
  """The SDE of a process: a DDPM schedule becomes its `LogSNRVPSDE`; an SDE stays itself."""
  if isinstance(process, DiffusionSchedule):
    return LogSNRVPSDE.from_schedule(process)
  if isinstance(process, sde_lib.SDE):
    return process
  raise TypeError(f"process must be a DiffusionSchedule or an sde.SDE, got {type(process).__name__}.")


def score_fn_for(model_fn: ModelFn, process: Process, *, mean_type: sde_lib.Prediction = "eps",
                 var_type: VarType = "fixedlarge", time_input: sde_lib.TimeInput = "continuous"):
  """(sde, score_fn(x, t)) of a model on a process, for the ODE solvers.

  time_input="continuous" (the default: the solvers need a vector field continuous in t) shows
  the model the fractional step `sde.time_to_step(t)`; "discrete" rounds it, as a model that
  only accepts integer steps needs (a vector field piecewise constant in t: adaptive solvers then
  take many more steps).
  """
  check_option("mean_type", mean_type, sde_lib.PREDICTIONS)
  sde = as_sde(process)
  return sde, sde_lib.score_fn_from_model(model_fn, sde, prediction=mean_type, time_input=time_input,
                                          var_type=var_type)


def probability_flow(sde: sde_lib.SDE, score_fn: sde_lib.ScoreFn) -> Callable:
  """The vector field (t, x) -> f(x, t) - 1/2 g(t)^2 score(x, t) of Song et al.'s Eq. 13."""
  ode = sde.reverse(score_fn, probability_flow=True)
  return lambda t, x: ode.sde(x, t)[0]


def default_t_min(sde: sde_lib.SDE) -> float:
  """The SDE's step 0: the lowest noise level of its discrete chain (VP: t = 1/N; VE, LogSNRVPSDE: 0)."""
  if isinstance(sde, LogSNRVPSDE):
    return 0.0    # by construction (and without reading its table, which may be traced)
  return float(sde.step_to_time(0.0))


def ode_sample(model_fn: ModelFn, process: Process, shape: Sequence[int], key: jax.Array, *,
               mean_type: sde_lib.Prediction = "eps", var_type: VarType = "fixedlarge",
               time_input: sde_lib.TimeInput = "continuous", solver: SolverName = "tsit5",
               rtol: float = 1e-5, atol: float = 1e-5, t_min: float | None = None,
               denoise: bool = True, clip_denoised: bool = False, max_steps: int = 8192,
               x_T: jnp.ndarray | None = None, return_stats: bool = False,
               stats_callback: Callable[[SolverStats], None] | None = None):
  """Samples by solving the probability-flow ODE from t = 1 to t_min with an adaptive solver.

  Args:
    model_fn: model_fn(x_t [B, H, W, C], time [B]) -> output (time: see `score_fn_for`).
    process: the model's `DiffusionSchedule` (through `LogSNRVPSDE`) or its `sde.SDE`.
    shape: [B, H, W, C].
    key: PRNG key for x(1) (`sde.prior_sampling`) unless x_T is given.
    mean_type: "eps", "x0", "v" or "score".
    var_type: a learned variance's channels are dropped.
    time_input: "continuous" (fractional steps) or "discrete" (see `score_fn_for`).
    solver, rtol, atol, max_steps: see `solve` (score_sde used RK45 at 1e-5 / 1e-5).
    t_min: where the ODE stops; None = `default_t_min` (the chain's step 0).
    denoise: end with E[x_0 | x(t_min)] (one more evaluation, counted in the stats).
    clip_denoised: clip that final E[x_0 | x] to [-1, 1].
    x_T: optional x(1) [B, H, W, C] (for a DDPM schedule: x_{T-1}, as every sampler here).
    return_stats: also return the `SolverStats`.
    stats_callback: called (through `jax.debug.callback`, so also under jit / pmap) with the
      concrete `SolverStats`, e.g. to log the NFE.

  Returns:
    x_0 [B, H, W, C], or (x_0, SolverStats).
  """
  shape = tuple(shape)
  sde, score_fn = score_fn_for(model_fn, process, mean_type=mean_type, var_type=var_type,
                               time_input=time_input)
  t_min = default_t_min(sde) if t_min is None else float(t_min)
  if not 0.0 <= t_min < 1.0:
    raise ValueError(f"t_min={t_min} must be in [0, 1).")
  x = sde.prior_sampling(key, shape) if x_T is None else x_T
  chex.assert_shape(x, shape)
  x, stats = solve(probability_flow(sde, score_fn), x, 1.0, t_min, solver=solver, rtol=rtol,
                   atol=atol, max_steps=max_steps)
  if denoise:
    x = sde_lib.denoise(score_fn, sde, x, t_min)
    x = jnp.clip(x, -1.0, 1.0) if clip_denoised else x
    stats = stats.replace(nfe=stats.nfe + 1)
  if stats_callback is not None:
    jax.debug.callback(stats_callback, stats)
  return (x, stats) if return_stats else x


# ---------------------------------------------------------------------------------------------
# Registry. The tolerances, not num_steps, set the cost; each solve logs its NFE.


def log_stats(stats: SolverStats) -> None:
  """A `stats_callback` that logs the solve's cost (once per device under pmap)."""
  logging.info("probability-flow ODE: %s", stats.as_dict())


def _run(model_fn, schedule, shape, key, *, num_steps, mean_type, var_type, clip_denoised, x_T,
         return_trajectory, **options):
  if return_trajectory:
    raise ValueError("sampler 'ode' keeps no trajectory (diffrax saves only the end point).")
  if num_steps is not None:
    logging.info("sampler 'ode' ignores num_steps=%s: config.sampling.ode.rtol / atol set its "
                 "cost.", num_steps)
  return ode_sample(model_fn, schedule, shape, key, mean_type=mean_type, var_type=var_type,
                    clip_denoised=clip_denoised, x_T=x_T, stats_callback=log_stats, **options)


registry.register(registry.Sampler(
    name="ode", run=_run, accepts_sde=True,
    summary="probability-flow ODE (Song et al. 2021, Eq. 13) with diffrax's adaptive solvers; the "
            "tolerances set the NFE (num_steps is ignored), logged per solve",
    options=(
        registry.Option("solver", "tsit5", "diffrax solver", choices=SOLVERS),
        registry.Option("rtol", 1e-5, "relative tolerance of the PID step-size controller", minimum=0.0),
        registry.Option("atol", 1e-5, "absolute tolerance", minimum=0.0),
        registry.Option("t_min", None, "end time of the ODE; None = the chain's step 0",
                        minimum=0.0, maximum=1.0, kind=float),
        registry.Option("denoise", True, "end with E[x_0 | x(t_min)] (Tweedie; one more NFE)"),
        registry.Option("time_input", "continuous", "model time: fractional steps (continuous) or "
                        "rounded (discrete)", choices=sde_lib.TIME_INPUTS),
        registry.Option("max_steps", 8192, "solver step limit", minimum=1),
    )))
