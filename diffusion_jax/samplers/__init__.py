"""Samplers: functions of `model_fn(x_t, t) -> output` that turn noise into data.

Every sampler module registers itself in `registry` (name, function, typed options, optional
once-per-model preparation); `sample` is the one dispatch on a name, and `python -m
diffusion_jax.samplers` lists every sampler with its options. Built in:

  ancestral       DDPM Algorithm 2 (respaced to num_steps when asked; Improved DDPM Sec. 4)
  ddim            DDIM (eta = 0 deterministic, eta = 1 DDPM-like), `ddim.ddim_sample_loop`
  dpm_solver      DPM-Solver (noise prediction), orders 1-3, `dpm_solver.dpm_solver_sample`
  dpm_solver++    DPM-Solver++ (data prediction), orders 1-3
  analytic_ddpm   Analytic-DPM's optimal variance on the DDPM-type process (prepared: ms_eps)
  analytic_ddim   Analytic-DPM's optimal variance on the DDIM-type process (prepared: ms_eps)
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import schedules
from diffusion_jax.diffusion import MeanType, VarType
from diffusion_jax.samplers import registry  # before the samplers, which register in it
# Registration order is the listing order.
from diffusion_jax.samplers import ancestral, ddim, dpm_solver, analytic, grids  # noqa: F401,I001

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
SAMPLERS: tuple[str, ...] = registry.names()  # the built-in ones; registry.names() has all


def sample(model_fn: ModelFn, schedule: schedules.DiffusionSchedule, shape: Sequence[int],
           key: jax.Array, *, sampler: str = "ancestral", num_steps: int | None = None,
           mean_type: MeanType = "eps", var_type: VarType = "fixedlarge",
           clip_denoised: bool = True, x_T: jnp.ndarray | None = None,
           return_trajectory: bool = False, **options):
  """Draws samples [B, H, W, C] with the named sampler.

  Args:
    model_fn: model_fn(x_t [B, H, W, C], t [B]) -> output (t: the ORIGINAL timestep).
    schedule: the diffusion the model was trained with; must be concrete (closed over) for
      every sampler but "ancestral" on the full chain, since grids are computed in numpy.
    shape: [B, H, W, C].
    key: PRNG key.
    sampler: a registered name (`registry.names()`).
    num_steps: number of model evaluations; None = the sampler's default (all T steps).
    mean_type, var_type: what the model outputs (config.diffusion).
    clip_denoised: clip the x_0 prediction to [-1, 1] at every step.
    x_T: optional starting noise [B, H, W, C].
    return_trajectory: also return the sampler's trajectory (see each sampler).
    **options: the sampler's declared options (`python -m diffusion_jax.samplers` lists them;
      omitted ones take their defaults) and, for samplers with a prepare step, its outputs
      (e.g. Analytic-DPM's `ms_eps`, see `prepare`).

  Returns:
    x_0 [B, H, W, C], or (x_0, trajectory).
  """
  spec = registry.get(sampler)
  prepared = {name: options.pop(name) for name in spec.prepared if name in options}
  missing = [name for name in spec.prepared if name not in prepared]
  if missing:
    raise ValueError(f"sampler={sampler!r} needs {', '.join(missing)} from its once-per-model "
                     f"prepare step: compute it with samplers.prepare(...) or "
                     f"{spec.prepare.__module__}.{spec.prepare.__name__}.")
  resolved = registry.resolve_options(sampler, options, num_steps=num_steps,
                                      num_timesteps=schedule.num_timesteps)
  return spec.run(model_fn, schedule, tuple(shape), key, num_steps=num_steps,
                  mean_type=mean_type, var_type=var_type, clip_denoised=clip_denoised, x_T=x_T,
                  return_trajectory=return_trajectory, **resolved, **prepared)


def prepare(model_fn: ModelFn, schedule: schedules.DiffusionSchedule, key: jax.Array,
            load_images: Callable[[int], np.ndarray], *, sampler: str,
            mean_type: MeanType = "eps", var_type: VarType = "fixedlarge", **options) -> dict:
  """Runs the named sampler's once-per-model preparation; {} for samplers without one.

  Args:
    model_fn, schedule, mean_type, var_type: as in `sample`.
    key: PRNG key of the preparation (e.g. Analytic-DPM's Monte-Carlo noise).
    load_images: n -> n training images [n, H, W, C] in [-1, 1].
    sampler: a registered name.
    **options: the sampler's declared options (omitted ones take their defaults).

  Returns:
    The keyword arguments to pass on to `sample` (e.g. {"ms_eps": ...}).
  """
  spec = registry.get(sampler)
  if spec.prepare is None:
    return {}
  resolved = registry.resolve_options(sampler, options, num_steps=None,
                                      num_timesteps=schedule.num_timesteps)
  return spec.prepare(model_fn, schedule, key, load_images, mean_type=mean_type,
                      var_type=var_type, **resolved)
