"""Samplers: functions of `model_fn(x_t, t) -> output` that turn noise into data.

`sample` is the one dispatch on a sampler's name (what `config.sampling.sampler` selects):

  ancestral       DDPM Algorithm 2 (respaced to num_steps when asked; Improved DDPM Sec. 4)
  ddim            DDIM (eta = 0 deterministic, eta = 1 DDPM-like), `ddim.ddim_sample_loop`
  dpm_solver      DPM-Solver (noise prediction), orders 1-3, `dpm_solver.dpm_solver_sample`
  dpm_solver++    DPM-Solver++ (data prediction), orders 1-3
  analytic_ddpm   Analytic-DPM's optimal variance on the DDPM-type process (needs ms_eps)
  analytic_ddim   Analytic-DPM's optimal variance on the DDIM-type process (needs ms_eps)
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import schedules
from diffusion_jax.diffusion import MeanType, VarType, check_option
from diffusion_jax.samplers import analytic, ancestral, ddim, dpm_solver, grids

SAMPLERS: tuple[str, ...] = ("ancestral", "ddim", "dpm_solver", "dpm_solver++", "analytic_ddpm",
                             "analytic_ddim")


def sample(model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
           schedule: schedules.DiffusionSchedule, shape: Sequence[int], key: jax.Array, *,
           sampler: str = "ancestral", num_steps: int | None = None, eta: float = 0.0,
           mean_type: MeanType = "eps", var_type: VarType = "fixedlarge",
           clip_denoised: bool = True, x_T: jnp.ndarray | None = None,
           spacing: grids.DdimSpacing = "uniform", solver_order: int = 2,
           solver_method: dpm_solver.Method = "multistep",
           time_grid: grids.TimeGridName = "logSNR", final_step: grids.FinalStep = "zero",
           lower_order_final: bool = True, thresholding: bool = False,
           integer_timesteps: bool = False,
           ms_eps: np.ndarray | None = None, analytic_clip_last_steps: int = 1,
           return_trajectory: bool = False):
  """Draws samples [B, H, W, C] with the named sampler.

  Args:
    model_fn: model_fn(x_t [B, H, W, C], t [B]) -> output (t: the ORIGINAL timestep).
    schedule: the diffusion the model was trained with; must be concrete (closed over) for
      every sampler but "ancestral" on the full chain, since grids are computed in numpy.
    shape: [B, H, W, C].
    key: PRNG key.
    sampler: one of SAMPLERS.
    num_steps: number of model evaluations; None means T. For "ancestral" a shorter chain is
      the respaced process on evenly spaced timesteps (Improved DDPM Sec. 4).
    eta: DDIM stochasticity ("ddim" only; analytic_ddpm / analytic_ddim fix it to 1 / 0).
    mean_type, var_type: what the model outputs (config.diffusion).
    clip_denoised: clip the x_0 prediction to [-1, 1] at every step.
    x_T: optional starting noise [B, H, W, C].
    spacing: integer grid of ddim / analytic_*: "uniform" | "quadratic" | "karras".
    solver_order, solver_method, time_grid, final_step, lower_order_final, thresholding,
      integer_timesteps: DPM-Solver options (see `dpm_solver.dpm_solver_sample`). Its grids
      put model evaluations between steps (float t) unless integer_timesteps.
    ms_eps: Analytic-DPM's Gamma [T] from `analytic.eps_mean_square` (required by analytic_*).
    analytic_clip_last_steps: Analytic-DPM's sampling clip of the last noisy steps (0 = off).
    return_trajectory: also return the sampler's trajectory (see each sampler).

  Returns:
    x_0 [B, H, W, C], or (x_0, trajectory).
  """
  check_option("sampler", sampler, SAMPLERS)
  common = dict(mean_type=mean_type, var_type=var_type, clip_denoised=clip_denoised, x_T=x_T,
                return_trajectory=return_trajectory)
  if sampler == "ancestral":
    if num_steps is not None and num_steps != schedule.num_timesteps:
      schedule, _ = schedules.respace(schedule, schedules.space_timesteps(schedule.num_timesteps, [num_steps]))
    return ancestral.p_sample_loop(model_fn, schedule, shape, key, **common)
  if sampler == "ddim":
    return ddim.ddim_sample_loop(model_fn, schedule, shape, key, num_steps=num_steps,
                                 spacing=spacing, eta=eta, **common)
  if sampler in ("dpm_solver", "dpm_solver++"):
    return dpm_solver.dpm_solver_sample(
        model_fn, schedule, shape, key,
        num_steps=schedule.num_timesteps if num_steps is None else num_steps, order=solver_order,
        method=solver_method, algorithm=sampler.replace("_", ""), time_grid=time_grid,
        final=final_step, lower_order_final=lower_order_final, thresholding=thresholding,
        integer_timesteps=integer_timesteps, **common)
  if ms_eps is None:
    raise ValueError(f"sampler={sampler!r} needs ms_eps, Analytic-DPM's E||eps||^2/d per timestep: "
                     "compute it once per model with diffusion_jax.samplers.analytic.eps_mean_square.")
  return analytic.analytic_sample_loop(model_fn, schedule, shape, key, ms_eps=ms_eps,
                                       num_steps=num_steps, spacing=spacing,
                                       eta=1.0 if sampler == "analytic_ddpm" else 0.0,
                                       clip_last_steps=analytic_clip_last_steps, **common)
