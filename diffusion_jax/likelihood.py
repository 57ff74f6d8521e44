"""Exact likelihoods along the probability-flow ODE, in bits/dim (Song et al. 2021, Sec. 4.3, App. D.2).

The ODE dx/dt = F(x, t) (`samplers.ode.probability_flow`) is a continuous normalizing flow, so
the instantaneous change of variables (Chen et al. 2018) gives

  log p_{t_min}(x) = log p_1(x(1)) + int_{t_min}^{1} div_x F(x(t), t) dt,

integrated together with x(t) from x(t_min) = x up to t = 1 by one adaptive diffrax solve. The
divergence is either exact (the trace of the Jacobian from D Jacobian-vector products: small D
only) or the Hutchinson-Skilling estimate E_v[v^T (dF/dx) v] with Rademacher or Gaussian probes v,
drawn once per example and kept for the whole solve (one or several, averaged), which makes
log p an unbiased estimate. Each solve step needs F and vector-Jacobian products v^T (dF/dx),
computed together by `jax.vjp` (reverse mode: the U-Net's GroupNorm has a written-out backward
pass, `models.ops`, and no forward-mode rule).

Bits/dim of 8-bit images, and the convention written next to every number (`Protocol`):

* Data scaling: pixels k in {0..255} are x = k / 127.5 - 1 (this package's input pipeline), so
  neighbouring values are 2/255 apart; x is read as the centre of a bin of that width.
* Dequantization ("uniform", the default): x + (u - 1/2) 2/255, u ~ U[0, 1)^D, so the density of
  the dequantized data bounds the discrete probability: -log2 P(k) / D <= E_u[bpd].
  "none" evaluates the density at the bin centres (not a bound; same offset).
* Offset: bits/dim = -log p(x) / (D ln 2) + log2(255 / 2). The shift is -log2 of the bin
  width: 8 bits for 256 values on [0, 1), less 1 bit because [-1, 1] is twice as wide, less
  log2(256/255) because our 256 bins are 2/255 wide (they tile [-1 - 1/255, 1 + 1/255]).
  score_sde's convention ((k + u) / 256 on [0, 1), then scaled to [-1, 1]) has offset 7 and
  feeds the model data scaled by 255/256; its numbers are comparable up to that.
* t_min: the density is that of the ODE at t_min (by default the chain's step 0; Song et al.
  use 1e-5 for VP models), evaluated at the (dequantized) data.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal

import flax.struct
import jax
import jax.numpy as jnp

from diffusion_jax import sde as sde_lib
from diffusion_jax.diffusion import VarType, check_option
from diffusion_jax.samplers import ode

Estimator = Literal["hutchinson", "exact"]
Probe = Literal["rademacher", "gaussian"]
Dequantization = Literal["uniform", "none"]
ESTIMATORS: tuple[str, ...] = ("hutchinson", "exact")
PROBES: tuple[str, ...] = ("rademacher", "gaussian")
DEQUANTIZATIONS: tuple[str, ...] = ("uniform", "none")
BIN_WIDTH = 2.0 / 255.0                       # neighbouring 8-bit values in x = k / 127.5 - 1
OFFSET_BITS_PER_DIM = -math.log2(BIN_WIDTH)   # log2(127.5) = 8 - 1 - log2(256 / 255)


def _sum_per_example(x: jnp.ndarray) -> jnp.ndarray:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def draw_probes(key: jax.Array, shape, *, probe: Probe = "rademacher", num_probes: int = 1) -> jnp.ndarray:
  """Hutchinson probes [num_probes, *shape] with E[v v^T] = I: Rademacher (+-1) or N(0, I)."""
  check_option("probe", probe, PROBES)
  if num_probes < 1:
    raise ValueError(f"num_probes={num_probes} must be >= 1.")
  full = (num_probes,) + tuple(shape)
  if probe == "rademacher":
    return jax.random.rademacher(key, full, jnp.float32)
  return jax.random.normal(key, full)


def divergence_fn(fn: Callable[[jnp.ndarray], jnp.ndarray], *, estimator: Estimator = "hutchinson",
                  probes: jnp.ndarray | None = None) -> Callable:
  """x -> (fn(x), div_x fn(x) [B]) for a per-example map fn: [B, ...] -> [B, ...].

  Args:
    fn: the map; example b of the output may depend on example b of the input only.
    estimator: "exact" (trace of the Jacobian from its D rows, one vector-Jacobian product
      each: small D) or "hutchinson" (mean over the probes of v^T J v, unbiased).
    probes: [K, B, ...] from `draw_probes` (Hutchinson only).
  """
  check_option("estimator", estimator, ESTIMATORS)
  if estimator == "hutchinson" and probes is None:
    raise ValueError("estimator='hutchinson' needs probes (see draw_probes).")

  def div(x):
    y, pullback = jax.vjp(fn, x)
    vjp = lambda v: pullback(v)[0]  # v^T (dF/dx)
    if estimator == "hutchinson":
      vj = jax.vmap(vjp)(probes)                                              # [K, B, ...]
      return y, jnp.mean(jax.vmap(_sum_per_example)(probes * vj), axis=0)
    batch, dim = x.shape[0], math.prod(x.shape[1:])
    basis = jnp.eye(dim, dtype=x.dtype).reshape((dim, 1) + x.shape[1:])       # e_d for every example
    rows = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, x.shape)))(basis)       # [D, B, ...]
    diagonal = jnp.einsum("dbd->b", rows.reshape(dim, batch, dim))
    return y, diagonal

  return div


def ode_log_likelihood(score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, x: jnp.ndarray, key: jax.Array, *,
                       t_min: float, estimator: Estimator = "hutchinson", probe: Probe = "rademacher",
                       num_probes: int = 1, solver: ode.SolverName = "tsit5", rtol: float = 1e-5,
                       atol: float = 1e-5, max_steps: int = 8192):
  """log p_{t_min}(x) by the instantaneous change of variables along the probability-flow ODE.

  Args:
    score_fn: score_fn(x, t) -> grad log p_t(x) (e.g. `sde.score_fn_from_model`).
    sde: the SDE (its prior p_1 closes the integral).
    x: points [B, ...] at t_min (the data).
    key: PRNG key for the probes (unused by the exact trace).
    t_min: the time x lives at.
    estimator, probe, num_probes: the divergence (see `divergence_fn`, `draw_probes`).
    solver, rtol, atol, max_steps: see `samplers.ode.solve`.

  Returns:
    (log p [B], z = x(1) [B, ...], prior log p_1(z) [B], delta = int div F dt [B],
    `ode.SolverStats`); log p = prior + delta, in nats.
  """
  field = ode.probability_flow(sde, score_fn)
  probes = (draw_probes(key, x.shape, probe=probe, num_probes=num_probes)
            if estimator == "hutchinson" else None)

  def augmented(t, state):
    x_t, _ = state
    dx, div = divergence_fn(lambda y: field(t, y), estimator=estimator, probes=probes)(x_t)
    return dx, div

  (z, delta), stats = ode.solve(augmented, (x, jnp.zeros(x.shape[0], jnp.float32)), t_min, 1.0,
                                solver=solver, rtol=rtol, atol=atol, max_steps=max_steps)
  prior = sde.prior_logp(z)
  return prior + delta, z, prior, delta, stats


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How a bits/dim number was computed; `as_dict()` goes into the JSON next to it."""
  estimator: str
  probe: str | None
  num_probes: int | None
  dequantization: str
  t_min: float
  sde: str
  solver: str
  rtol: float
  atol: float
  data_scaling: str = "x = k / 127.5 - 1 for pixels k in 0..255 (bins of width 2/255)"
  offset_bits_per_dim: float = OFFSET_BITS_PER_DIM
  offset: str = ("bpd = -log p(x) / (D ln 2) + log2(255/2): 8 bits (256 values), -1 bit for the "
                 "[-1, 1] scaling, -log2(256/255) for bins of 2/255")

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def make_protocol(sde: sde_lib.SDE, *, estimator: Estimator = "hutchinson", probe: Probe = "rademacher",
                  num_probes: int = 1, dequantization: Dequantization = "uniform",
                  t_min: float | None = None, solver: ode.SolverName = "tsit5", rtol: float = 1e-5,
                  atol: float = 1e-5) -> Protocol:
  """The `Protocol` of `bits_per_dim` with these options (t_min None = the chain's step 0)."""
  hutchinson = estimator == "hutchinson"
  return Protocol(estimator=estimator, probe=probe if hutchinson else None,
                  num_probes=num_probes if hutchinson else None, dequantization=dequantization,
                  t_min=ode.default_t_min(sde) if t_min is None else float(t_min),
                  sde=type(sde).__name__, solver=solver, rtol=rtol, atol=atol)


@flax.struct.dataclass
class BitsPerDim:
  """Bits/dim of a batch and everything it came from; a pytree (jit / pmap return it).

  bpd: bits/dim per example [B] (with the offset, see `Protocol`).
  log_p: log density of the (dequantized) data at t_min [B], nats = prior_logp + delta_logp.
  prior_logp: log p_1(z) [B]; delta_logp: the integrated divergence [B].
  z: the latent x(1) [B, ...].
  stats: the solver's `ode.SolverStats` (each evaluation: one model call and its
    Jacobian-vector products).
  protocol: the `Protocol` (static).
  """
  bpd: jnp.ndarray
  log_p: jnp.ndarray
  prior_logp: jnp.ndarray
  delta_logp: jnp.ndarray
  z: jnp.ndarray
  stats: ode.SolverStats
  protocol: Protocol = flax.struct.field(pytree_node=False)


def dequantize(x: jnp.ndarray, key: jax.Array, kind: Dequantization = "uniform") -> jnp.ndarray:
  """Uniform noise over each pixel's bin: x + (u - 1/2) 2/255, u ~ U[0, 1); "none" returns x."""
  check_option("dequantization", kind, DEQUANTIZATIONS)
  if kind == "none":
    return x
  return x + (jax.random.uniform(key, x.shape, x.dtype) - 0.5) * BIN_WIDTH


def bits_per_dim(model_fn: Callable, process: ode.Process, x: jnp.ndarray, key: jax.Array, *,
                 mean_type: sde_lib.Prediction = "eps", var_type: VarType = "fixedlarge",
                 time_input: sde_lib.TimeInput = "continuous",
                 dequantization: Dequantization = "uniform", estimator: Estimator = "hutchinson",
                 probe: Probe = "rademacher", num_probes: int = 1, t_min: float | None = None,
                 solver: ode.SolverName = "tsit5", rtol: float = 1e-5, atol: float = 1e-5,
                 max_steps: int = 8192) -> BitsPerDim:
  """Bits/dim of 8-bit data under a model's probability-flow ODE (jit- and pmap-able).

  Args:
    model_fn: model_fn(x_t, time) -> output (as for `samplers.ode.ode_sample`).
    process: the model's `DiffusionSchedule` (through `samplers.ode.LogSNRVPSDE`) or `sde.SDE`.
    x: data [B, H, W, C] in [-1, 1] on the 8-bit grid k / 127.5 - 1.
    key: PRNG key: the dequantization noise from split(key)[0], the probes from split(key)[1].
    mean_type, var_type, time_input: see `samplers.ode.score_fn_for`.
    dequantization: "uniform" or "none" (see the module docstring).
    estimator, probe, num_probes: the divergence (`divergence_fn`).
    t_min: where the data sits on the ODE; None = the chain's step 0 (`ode.default_t_min`).
    solver, rtol, atol, max_steps: the adaptive solve (`samplers.ode.solve`).

  Returns:
    `BitsPerDim` (per-example numbers, the latent, solver stats and the protocol).
  """
  sde, score_fn = ode.score_fn_for(model_fn, process, mean_type=mean_type, var_type=var_type,
                                   time_input=time_input)
  protocol = make_protocol(sde, estimator=estimator, probe=probe, num_probes=num_probes,
                           dequantization=dequantization, t_min=t_min, solver=solver, rtol=rtol,
                           atol=atol)
  t_min = protocol.t_min
  key_dequant, key_probes = jax.random.split(key)
  data = dequantize(x, key_dequant, dequantization)
  log_p, z, prior, delta, stats = ode_log_likelihood(
      score_fn, sde, data, key_probes, t_min=t_min, estimator=estimator, probe=probe,
      num_probes=num_probes, solver=solver, rtol=rtol, atol=atol, max_steps=max_steps)
  dim = math.prod(x.shape[1:])
  bpd = -log_p / (dim * math.log(2.0)) + OFFSET_BITS_PER_DIM
  return BitsPerDim(bpd=bpd, log_p=log_p, prior_logp=prior, delta_logp=delta, z=z, stats=stats,
                    protocol=protocol)
