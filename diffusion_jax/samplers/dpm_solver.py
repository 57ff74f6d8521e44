"""DPM-Solver (Lu et al. 2022a) and DPM-Solver++ (Lu et al. 2022b): exponential integrators of the
probability-flow ODE, orders 1-3, singlestep and multistep.

In lambda = log(alpha / sigma) the diffusion ODE has the exact solution (DPM-Solver Eq. 3.4)

  x_t = (alpha_t / alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps(x_lambda) dlambda,

or, in terms of the data prediction x0 (DPM-Solver++ Eq. 8),

  x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} x0(x_lambda) dlambda.

A k-th order solver Taylor-expands eps (or x0) in lambda to order k-1 and integrates the rest
exactly. With h = lambda_t - lambda_s, the first-order step (= DDIM, eta = 0) is

  x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) eps_s           (DPM-Solver-1)
  x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_s          (DPM-Solver++-1).

Singlestep solvers evaluate the model at k points inside each step (Algorithms 1-2, r1 = 1/2
for order 2, r1 = 1/3, r2 = 2/3 for order 3); multistep solvers reuse the previous k - 1
evaluations (Algorithms of DPM-Solver++ Sec. 4, "dpmsolver" / midpoint form).

The discrete schedule is made continuous by interpolating log alpha piecewise linearly between
its steps (DPM-Solver App. D; `grids.TimeGrid`); the model sees the original timestep at each
point, interpolated (a float) when a point falls between steps. Every step is a fixed linear
combination of the state and the model outputs, so the combination weights are computed once
in float64 numpy (`multistep_coefficients`, `singlestep_coefficients`) and the loop is a plain
`lax.scan`.

How the last step ends is explicit (`final`): "zero" ends with a jump to sigma = 0 (x_0 is the
data prediction at the last grid point, the way DDIM and diffusers end), "sigma_min" stops at
the last grid point (step 0, sigma_min = sqrt(1 - abar_0)), as DPM-Solver's reference code
does. Our default grids run from step T-1 to step 0 in both cases.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion
from diffusion_jax.diffusion import MeanType, VarType, check_option
from diffusion_jax.samplers import grids, registry
from diffusion_jax.samplers.ddim import Trajectory
from diffusion_jax.schedules import DiffusionSchedule

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
ALGORITHMS: tuple[str, ...] = ("dpmsolver", "dpmsolver++")
METHODS: tuple[str, ...] = ("multistep", "singlestep")
Algorithm = Literal["dpmsolver", "dpmsolver++"]
Method = Literal["multistep", "singlestep"]
LOWER_ORDER_FINAL_BELOW = 15  # diffusers' threshold (DPM-Solver's reference code uses 10)


# ---------------------------------------------------------------------------------------------
# Step coefficients (float64 numpy). A step maps (x, m_0, m_1, m_2) to A x + sum_l B_l m_l, where
# the m are model predictions (eps for "dpmsolver", x0 for "dpmsolver++").

_E = np.eye(3)  # basis vectors e0, e1, e2 of the model predictions


def _first_order(algorithm: str, grid: grids.TimeGrid, s: int, t: int) -> tuple[float, np.ndarray]:
  """DPM-Solver-1 / ++-1 from point s to point t: (A, B) with x_t = A x_s + B . m."""
  a_s, a_t, s_s, s_t = grid.alpha[s], grid.alpha[t], grid.sigma[s], grid.sigma[t]
  h = grid.lam[t] - grid.lam[s]
  if algorithm == "dpmsolver++":
    return s_t / s_s, -a_t * np.expm1(-h) * _E[0]
  # sigma_t (e^h - 1) = alpha_t sigma_s / alpha_s - sigma_t: also finite at sigma_t = 0.
  return a_t / a_s, -(a_t * s_s / a_s - s_t) * _E[0]


def _phis(algorithm: str, h: float) -> tuple[float, float, float]:
  """phi_1, phi_2, phi_3 of the Taylor terms (DPM-Solver Eq. 3.6 / DPM-Solver++ Eq. 9)."""
  if algorithm == "dpmsolver++":
    phi_1 = np.expm1(-h)
    phi_2 = phi_1 / h + 1.0
  else:
    phi_1 = np.expm1(h)
    phi_2 = phi_1 / h - 1.0
  return phi_1, phi_2, phi_2 / h - 0.5


def multistep_coefficients(algorithm: str, grid: grids.TimeGrid, orders: Sequence[int]
                           ) -> tuple[np.ndarray, np.ndarray]:
  """A [N] and B [N, 3] of the multistep solver: x_{i+1} = A_i x_i + sum_l B_il m_{i-l}.

  Step i goes from grid point i to i+1 with orders[i] (1, 2 or 3), using the predictions at
  points i, i-1, i-2 (DPM-Solver++ Algorithms 2 and the third-order multistep of App. B).
  """
  A, B = np.zeros(len(orders)), np.zeros((len(orders), 3))
  for i, order in enumerate(orders):
    A[i], B[i] = _first_order(algorithm, grid, i, i + 1)
    if order == 1:
      continue
    s, t = i, i + 1
    h = grid.lam[t] - grid.lam[s]
    # ++: x_t = [1st order] - 0.5 alpha_t phi_1 D1 (order 2) or + alpha_t (phi_2 D1 - phi_3 D2);
    # noise: x_t = [1st order] - 0.5 sigma_t phi_1 D1 (order 2) or - sigma_t (phi_2 D1 + phi_3 D2).
    plus = algorithm == "dpmsolver++"
    scale = grid.alpha[t] if plus else grid.sigma[t]
    phi_1, phi_2, phi_3 = _phis(algorithm, h)
    r0 = (grid.lam[s] - grid.lam[s - 1]) / h
    d1_0 = (_E[0] - _E[1]) / r0
    if order == 2:
      B[i] += -0.5 * scale * phi_1 * d1_0
    else:
      r1 = (grid.lam[s - 1] - grid.lam[s - 2]) / h
      d1_1 = (_E[1] - _E[2]) / r1
      d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
      d2 = (d1_0 - d1_1) / (r0 + r1)
      B[i] += scale * ((1.0 if plus else -1.0) * phi_2 * d1 - phi_3 * d2)
  return A, B


def singlestep_coefficients(algorithm: str, grid: grids.TimeGrid, start: int, order: int
                            ) -> tuple[np.ndarray, np.ndarray]:
  """Stage weights of one singlestep block: A [order], B [order, 3].

  The block starts at grid point `start` (prediction m_0), evaluates at the intermediate
  points start+1, ... (m_1, m_2) and ends at start+order. Row j gives the state at point
  start+j+1: rows 0..order-2 are the intermediate states u_1, u_2, the last row is x_t
  (DPM-Solver Algorithms 1-2, DPM-Solver++ Algorithm 1, with r_j from the points' lambdas).
  """
  s, t = start, start + order
  A, B = np.zeros(order), np.zeros((order, 3))
  A[0], B[0] = _first_order(algorithm, grid, s, s + 1)          # u_1 (or x_t for order 1)
  if order == 1:
    return A, B
  plus = algorithm == "dpmsolver++"
  h = grid.lam[t] - grid.lam[s]
  phi_1, phi_2, _ = _phis(algorithm, h)
  A[-1] = _first_order(algorithm, grid, s, t)[0]
  base = _first_order(algorithm, grid, s, t)[1]
  r1 = (grid.lam[s + 1] - grid.lam[s]) / h
  if order == 2:
    # x_t = [first order] - (0.5 / r1) (alpha_t | sigma_t) phi_1 (m_1 - m_0)
    scale = grid.alpha[t] if plus else grid.sigma[t]
    B[1] = base - (0.5 / r1) * scale * phi_1 * (_E[1] - _E[0])
    return A, B
  r2 = (grid.lam[s + 2] - grid.lam[s]) / h
  # u_2 at lambda_s + r2 h, second order with the r2 / r1 weighted difference.
  s2 = s + 2
  A[1], base_2 = _first_order(algorithm, grid, s, s2)
  phi_12 = np.expm1(-r2 * h) if plus else np.expm1(r2 * h)
  phi_22 = phi_12 / (r2 * h) + (1.0 if plus else -1.0)
  if plus:
    B[1] = base_2 + (r2 / r1) * grid.alpha[s2] * phi_22 * (_E[1] - _E[0])
    B[2] = base + (1.0 / r2) * grid.alpha[t] * phi_2 * (_E[2] - _E[0])
  else:
    B[1] = base_2 - (r2 / r1) * grid.sigma[s2] * phi_22 * (_E[1] - _E[0])
    B[2] = base - (1.0 / r2) * grid.sigma[t] * phi_2 * (_E[2] - _E[0])
  return A, B


# ---------------------------------------------------------------------------------------------
# Grids and order schedules.


def multistep_orders(num_steps: int, order: int, *, lower_order_final: bool = True,
                     final_zero: bool = False) -> list[int]:
  """Order of each multistep step: warm-up 1, 2, ..., then `order`; lower orders at the end.

  With lower_order_final and fewer than 15 steps the last step is first order and the one
  before at most second order (stabler at few steps); a final jump to sigma = 0 is always first
  order (h is infinite there).
  """
  orders = [min(order, i + 1) for i in range(num_steps)]
  if lower_order_final and num_steps < LOWER_ORDER_FINAL_BELOW:
    orders = [min(o, num_steps - i) for i, o in enumerate(orders)]
  if final_zero:
    orders[-1] = 1
  return orders


def _lu_singlestep_orders(nfe: int, order: int) -> list[int]:
  """DPM-Solver's split of an NFE budget into singlestep blocks (its `get_orders_and_timesteps...`)."""
  if order == 3:
    k = nfe // 3 + 1
    if nfe % 3 == 0:
      return [3] * (k - 2) + [2, 1]
    if nfe % 3 == 1:
      return [3] * (k - 1) + [1]
    return [3] * (k - 1) + [2]
  if order == 2:
    return [2] * (nfe // 2) if nfe % 2 == 0 else [2] * (nfe // 2) + [1]
  return [1] * nfe


def singlestep_orders(nfe: int, order: int, *, final_zero: bool = False) -> list[int]:
  """Block orders summing to `nfe`; with a final jump to sigma = 0 the last block is order 1."""
  orders = _lu_singlestep_orders(nfe, order)
  if final_zero and orders[-1] != 1:
    orders = _lu_singlestep_orders(nfe - 1, order) + [1] if nfe > 1 else [1]
  return orders


def make_time_grid(schedule: DiffusionSchedule, num_steps: int, *, method: Method = "multistep",
                   order: int = 2, time_grid: grids.TimeGridName = "logSNR",
                   final: grids.FinalStep = "zero", timesteps: Sequence[float] | None = None,
                   orders: Sequence[int] | None = None, lower_order_final: bool = True,
                   rho: float = 7.0, integer_timesteps: bool = False
                   ) -> tuple[grids.TimeGrid, list[int]]:
  """The points a solver visits and the order of each (multi)step, for a budget of num_steps NFE.

  Default grids (timesteps=None) run from step T-1 to step 0 of the schedule: with
  final="sigma_min" the NFE evaluations happen at all points but the last (step 0); with
  final="zero" the last evaluation is at step 0 and the solver then jumps to sigma = 0. For
  singlestep solvers the outer grid has one interval per block and the intermediate points
  sit at lambda_s + r h (r = 1/2; 1/3, 2/3).

  Args:
    timesteps: explicit model-evaluation points (descending schedule steps, floats allowed),
      num_steps of them, instead of a named grid; with final="sigma_min" the last one is the
      end point and is not evaluated (then num_steps + 1 points). Singlestep blocks take the
      points in order (their intermediate points are the given ones).
    orders: explicit per-step (multistep) or per-block (singlestep) orders.
    integer_timesteps: round the named grid's points (intermediate ones included) to distinct
      integer steps, for models that only accept int timesteps (e.g. table lookups). The
      solver's weights use the lambdas of the rounded points, so it stays consistent.

  Returns:
    (TimeGrid, orders).
  """
  check_option("method", method, METHODS)
  check_option("time_grid", time_grid, grids.TIME_GRIDS)
  check_option("final", final, grids.FINAL_STEPS)
  if order not in (1, 2, 3):
    raise ValueError(f"order={order} is not supported; choose 1, 2 or 3.")
  if num_steps < 1:
    raise ValueError(f"num_steps={num_steps} must be >= 1.")
  final_zero = final == "zero"
  if orders is None:
    orders = (multistep_orders(num_steps, order, lower_order_final=lower_order_final,
                               final_zero=final_zero) if method == "multistep"
              else singlestep_orders(num_steps, order, final_zero=final_zero))
  orders = [int(o) for o in orders]
  budget = len(orders) if method == "multistep" else sum(orders)
  if budget != num_steps or any(o not in (1, 2, 3) for o in orders):
    raise ValueError(f"orders={orders} must be 1, 2 or 3 and use exactly num_steps={num_steps} evaluations.")
  if method == "multistep" and any(o > i + 1 for i, o in enumerate(orders)):
    raise ValueError(f"orders={orders}: multistep step i can use at most i + 1 predictions.")
  if final_zero and orders[-1] != 1:
    raise ValueError(f"final='zero' needs a first-order last step (orders={orders}).")
  if timesteps is not None:
    expected = num_steps + (0 if final_zero else 1)
    if len(timesteps) != expected:
      raise ValueError(f"timesteps has {len(timesteps)} points; num_steps={num_steps} with final={final!r} needs {expected}.")
    return grids.TimeGrid.from_steps(schedule, timesteps, final=final), orders
  # Points of the outer grid: one interval per (multi)step or block, from T-1 to 0; with a
  # final jump to sigma = 0 the last step needs no point of its own.
  num_points = (num_steps if method == "multistep" else len(orders)) + (0 if final_zero else 1)
  u = (np.array([schedule.num_timesteps - 1.0]) if num_points == 1
       else grids.continuous_timesteps(schedule, num_points, time_grid, rho=rho))
  if method == "singlestep":  # insert each block's intermediate points at lambda_s + r h
    lam = grids.lambda_at(schedule, u)
    points = []
    for b in range(num_points - 1):
      fractions = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}[orders[b]]
      points.append(u[b])
      points.extend(grids.u_from_lambda(schedule, lam[b] + np.array(fractions) * (lam[b + 1] - lam[b])))
    u = np.array(points + [u[-1]])
  if integer_timesteps:
    u = grids.strictly_decreasing_ints(u, schedule.num_timesteps).astype(np.float64)
  return grids.TimeGrid.from_steps(schedule, u, final=final), orders


# ---------------------------------------------------------------------------------------------
# The solver.


def dynamic_threshold(x0: jnp.ndarray, ratio: float = 0.995, max_value: float = 1.0) -> jnp.ndarray:
  """Dynamic thresholding (Saharia et al. 2022; DPM-Solver++ Sec. 5), per example.

  s = max(quantile_ratio(|x0|), max_value), then x0 <- clip(x0, -s, s) / s: where fewer than
  (1 - ratio) of the pixels exceed max_value this is plain clipping to [-max_value, max_value]
  divided by max_value; otherwise the prediction is clipped at its own quantile and rescaled
  into [-1, 1]. (diffusers' `sample_max_value` instead caps s at max_value.)

  Args:
    x0: [B, ...] data predictions.
    ratio: the quantile p of |x0| (0.995 in the papers).
    max_value: the smallest threshold s (1 for data in [-1, 1]).

  Returns:
    [B, ...] thresholded x0.
  """
  batch = x0.shape[0]
  s = jnp.quantile(jnp.abs(x0.reshape(batch, -1)), ratio, axis=1)
  s = jnp.maximum(s, max_value).reshape((batch,) + (1,) * (x0.ndim - 1))
  return jnp.clip(x0, -s, s) / s


def dpm_solver_sample(model_fn: ModelFn, schedule: DiffusionSchedule, shape: Sequence[int],
                      key: jax.Array, *, num_steps: int = 20, order: int = 2,
                      method: Method = "multistep", algorithm: Algorithm = "dpmsolver++",
                      time_grid: grids.TimeGridName = "logSNR", final: grids.FinalStep = "zero",
                      timesteps: Sequence[float] | None = None, orders: Sequence[int] | None = None,
                      lower_order_final: bool = True, rho: float = 7.0,
                      integer_timesteps: bool = False, mean_type: MeanType = "eps",
                      var_type: VarType = "fixedlarge", clip_denoised: bool = False,
                      thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                      sample_max_value: float = 1.0, x_T: jnp.ndarray | None = None,
                      return_trajectory: bool = False):
  """Samples with DPM-Solver / DPM-Solver++ in `num_steps` model evaluations (NFE).

  Args:
    model_fn: model_fn(x_t [B, H, W, C], t [B]) -> output; t is the original timestep, int32
      when every evaluation falls on a step of the schedule, else float32 (between steps).
    schedule: the (concrete) diffusion the model was trained with.
    shape: [B, H, W, C].
    key: PRNG key for x_T (the solver itself is deterministic).
    num_steps: NFE budget (the paper's 10, 15, 20, 50 ...).
    order: 1, 2 or 3.
    method: "multistep" (DPM-Solver++(2M)/(3M)) or "singlestep" (DPM-Solver-2/3).
    algorithm: "dpmsolver" (noise prediction) or "dpmsolver++" (data prediction).
    time_grid: "logSNR" | "time_uniform" | "time_quadratic" | "karras" (see
      `grids.continuous_timesteps`); ignored when `timesteps` is given.
    final: "zero" (end with the x_0 prediction at the last point) or "sigma_min" (stop there).
    timesteps, orders, lower_order_final, rho, integer_timesteps: see `make_time_grid`.
    mean_type, var_type: what the model outputs ("mean" is not supported: it is only defined
      on the discrete chain).
    clip_denoised: clip every x0 prediction to [-1, 1] (for "dpmsolver" eps is re-derived).
    thresholding: dynamic thresholding of x0 (DPM-Solver++ only), with
      dynamic_thresholding_ratio and sample_max_value as in `dynamic_threshold`.
    x_T: optional starting noise [B, H, W, C] at step T-1 (or at timesteps[0]).
    return_trajectory: also return a `Trajectory` (state and x0 prediction per step/block).

  Returns:
    x_0 [B, H, W, C] (or x at sigma_min), or (x_0, Trajectory).
  """
  check_option("algorithm", algorithm, ALGORITHMS)
  check_option("mean_type", mean_type, ("eps", "x0", "v"))
  check_option("var_type", var_type, diffusion.VAR_TYPES)
  if thresholding and algorithm != "dpmsolver++":
    raise ValueError("thresholding=True needs algorithm='dpmsolver++' (it acts on x0 predictions).")
  shape = tuple(shape)
  grid, orders = make_time_grid(schedule, num_steps, method=method, order=order, time_grid=time_grid,
                                final=final, timesteps=timesteps, orders=orders,
                                lower_order_final=lower_order_final, rho=rho,
                                integer_timesteps=integer_timesteps)
  time_dtype = jnp.int32 if grid.integer_times else jnp.float32
  x = jax.random.normal(key, shape) if x_T is None else x_T
  chex.assert_shape(x, shape)

  def predict(x, model_t, alpha, sigma):
    """The model's prediction m (x0 for ++, eps otherwise) and its x0, both [B, H, W, C]."""
    t = jnp.full((shape[0],), model_t).astype(time_dtype)
    output, _ = diffusion.split_model_output(model_fn(x, t), x, var_type)
    # x_t = alpha x0 + sigma eps at this point (predict_start_from_noise / _from_v, at
    # continuous alpha, sigma).
    if mean_type == "eps":
      x0 = (x - sigma * output) / alpha
    elif mean_type == "x0":
      x0 = output
    else:
      x0 = alpha * x - sigma * output
    if thresholding:
      x0 = dynamic_threshold(x0, dynamic_thresholding_ratio, sample_max_value)
    elif clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
    if algorithm == "dpmsolver++":
      return x0, x0
    if mean_type == "eps" and not (clip_denoised or thresholding):
      return output, x0
    return (x - alpha * x0) / sigma, x0

  f32 = lambda a: jnp.asarray(a, jnp.float32)
  if method == "multistep":
    A, B = multistep_coefficients(algorithm, grid, orders)
    evals = slice(0, len(orders))

    def step(carry, inputs):
      x, m_1, m_2 = carry                   # predictions at the previous two points
      model_t, alpha, sigma, a, b = inputs
      m_0, x0 = predict(x, model_t, alpha, sigma)
      x = a * x + b[0] * m_0 + b[1] * m_1 + b[2] * m_2
      return (x, m_0, m_1), (x, x0) if return_trajectory else None

    zeros = jnp.zeros_like(x)
    inputs = (f32(grid.model_t[evals]), f32(grid.alpha[evals]), f32(grid.sigma[evals]), f32(A), f32(B))
    (x, _, _), traj = jax.lax.scan(step, (x, zeros, zeros), inputs)
    return (x, Trajectory(x=traj[0], pred_x0=traj[1])) if return_trajectory else x

  # Singlestep: blocks of equal order run as one scan each.
  starts = np.cumsum([0] + orders[:-1])
  trajectories = []
  b = 0
  while b < len(orders):
    k = orders[b]
    end = b
    while end < len(orders) and orders[end] == k:
      end += 1
    group = range(b, end)
    coefs = [singlestep_coefficients(algorithm, grid, starts[g], k) for g in group]
    A = np.stack([c[0] for c in coefs])
    B = np.stack([c[1] for c in coefs])
    idx = np.array([[starts[g] + j for j in range(k)] for g in group])

    def block(x, inputs, k=k):
      model_t, alpha, sigma, a, b = inputs
      x_s, ms, x0_s = x, [], None
      for j in range(k):                    # stage j evaluates at the block's j-th point
        m, x0 = predict(x, model_t[j], alpha[j], sigma[j])
        ms.append(m)
        x0_s = x0 if j == 0 else x0_s
        x = a[j] * x_s + sum(b[j, l] * ms[l] for l in range(j + 1))
      return x, (x, x0_s) if return_trajectory else None

    inputs = (f32(grid.model_t[idx]), f32(grid.alpha[idx]), f32(grid.sigma[idx]), f32(A), f32(B))
    x, traj = jax.lax.scan(block, x, inputs)
    trajectories.append(traj)
    b += len(group)
  if not return_trajectory:
    return x
  return x, Trajectory(x=jnp.concatenate([t[0] for t in trajectories]),
                       pred_x0=jnp.concatenate([t[1] for t in trajectories]))


_OPTIONS = (
    registry.Option("order", 2, "solver order", choices=(1, 2, 3)),
    registry.Option("method", "multistep", "multistep (++(2M)/(3M)) or singlestep (DPM-Solver-2/3)",
                    choices=METHODS),
    registry.Option("time_grid", "logSNR", "continuous time grid (grids.continuous_timesteps)",
                    choices=grids.TIME_GRIDS),
    registry.Option("final_step", "zero", "last step: zero (x0 jump to sigma 0) or sigma_min "
                    "(stop at step 0)", choices=grids.FINAL_STEPS),
    registry.Option("lower_order_final", True, f"lower orders on the last steps when NFE < "
                    f"{LOWER_ORDER_FINAL_BELOW}"),
    registry.Option("integer_timesteps", False, "round the grid's points to integer steps"),
    registry.Option("thresholding", False, "dynamic thresholding of x0 (dpm_solver++ only)"),
    registry.Option("thresholding_ratio", 0.995, "quantile p of |x0| for thresholding",
                    minimum=0.0, maximum=1.0),
    registry.Option("thresholding_max_value", 1.0, "smallest threshold s for thresholding",
                    minimum=0.0),
)


def _register(name: str, algorithm: Algorithm, summary: str) -> None:

  def run(model_fn, schedule, shape, key, *, num_steps, final_step, thresholding_ratio,
          thresholding_max_value, **options):
    return dpm_solver_sample(
        model_fn, schedule, shape, key, algorithm=algorithm,
        num_steps=schedule.num_timesteps if num_steps is None else num_steps, final=final_step,
        dynamic_thresholding_ratio=thresholding_ratio, sample_max_value=thresholding_max_value,
        **options)

  def check(options, num_steps, num_timesteps):
    if options["thresholding"] and algorithm != "dpmsolver++":
      return "thresholding=True acts on data predictions: use sampler 'dpm_solver++'."
    return registry.at_most_num_timesteps(options, num_steps, num_timesteps)

  registry.register(registry.Sampler(name=name, run=run, check=check, section="dpm_solver",
                                     options=_OPTIONS, summary=summary))


_register("dpm_solver", "dpmsolver", "DPM-Solver (Lu et al. 2022a), noise prediction, orders 1-3")
_register("dpm_solver++", "dpmsolver++", "DPM-Solver++ (Lu et al. 2022b), data prediction, orders 1-3")
