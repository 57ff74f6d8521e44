"""Samplers: functions of `model_fn(x_t, t) -> output` that turn noise into data.

`sample` is the one dispatch on a sampler's name (what `config.sampling.sampler` selects).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from diffusion_jax import schedules
from diffusion_jax.diffusion import MeanType, VarType, check_option
from diffusion_jax.samplers import ancestral

SAMPLERS: tuple[str, ...] = ("ancestral",)


def sample(model_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
           schedule: schedules.DiffusionSchedule, shape: Sequence[int], key: jax.Array, *,
           sampler: str = "ancestral", num_steps: int | None = None, eta: float = 0.0,
           mean_type: MeanType = "eps", var_type: VarType = "fixedlarge",
           clip_denoised: bool = True, x_T: jnp.ndarray | None = None) -> jnp.ndarray:
  """Draws samples [B, H, W, C] with the named sampler.

  Args:
    sampler: one of SAMPLERS.
    num_steps: number of model evaluations; None means the full chain. For "ancestral" a
      shorter chain is the respaced process (Improved DDPM Sec. 4) on evenly spaced
      timesteps, which requires a concrete (not traced) `schedule`.
    eta: stochasticity of DDIM-family samplers (unused by "ancestral").
  """
  check_option("sampler", sampler, SAMPLERS)
  del eta  # Only DDIM-family samplers use it.
  if num_steps is not None and num_steps != schedule.num_timesteps:
    schedule, _ = schedules.respace(schedule, schedules.space_timesteps(schedule.num_timesteps, [num_steps]))
  return ancestral.p_sample_loop(model_fn, schedule, shape, key, mean_type=mean_type,
                                 var_type=var_type, clip_denoised=clip_denoised, x_T=x_T)
