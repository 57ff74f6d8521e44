"""Ancestral sampling of the learned reverse process (DDPM Algorithm 2)."""

from __future__ import annotations

from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp

from diffusion_jax import diffusion, schedules
from diffusion_jax.diffusion import MeanType, VarType, check_option
from diffusion_jax.samplers import registry
from diffusion_jax.schedules import DiffusionSchedule, model_timesteps

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def p_sample(model_fn: ModelFn, schedule: DiffusionSchedule, x_t: jnp.ndarray, t: jnp.ndarray,
             noise: jnp.ndarray, *, mean_type: MeanType, var_type: VarType,
             clip_denoised: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
  """One reverse step x_{t-1} = mu_theta(x_t, t) + sigma_t z, with no noise at t = 0.

  Args:
    model_fn: model_fn(x_t, t_original) -> output.
    schedule: the diffusion; `t` indexes it.
    x_t: [B, H, W, C].
    t: int32 [B].
    noise: z ~ N(0, I), [B, H, W, C].

  Returns:
    (x_{t-1} [B, H, W, C], pred_xstart [B, H, W, C]).
  """
  out = diffusion.p_mean_variance(schedule, model_fn(x_t, model_timesteps(schedule, t)), x_t, t,
                                  mean_type=mean_type, var_type=var_type,
                                  clip_denoised=clip_denoised)
  nonzero = (t != 0).astype(x_t.dtype).reshape((-1,) + (1,) * (x_t.ndim - 1))
  return out.mean + nonzero * jnp.exp(0.5 * out.log_variance) * noise, out.pred_xstart


def p_sample_loop(model_fn: ModelFn, schedule: DiffusionSchedule, shape: Sequence[int],
                  key: jax.Array, *, mean_type: MeanType = "eps", var_type: VarType = "fixedlarge",
                  clip_denoised: bool = True, x_T: jnp.ndarray | None = None,
                  return_trajectory: bool = False):
  """Samples x_0 by running the reverse chain from x_{T-1} ~ N(0, I) down to t = 0.

  One `lax.scan` over the T steps, so the loop compiles once whatever T is. Step t draws its
  noise from fold_in(key_steps, t), so a given key always produces the same chain.

  Args:
    model_fn: model_fn(x_t, t_original) -> output.
    schedule: the diffusion (a respaced schedule samples in fewer steps).
    shape: [B, H, W, C] of the samples.
    key: PRNG key.
    mean_type, var_type, clip_denoised: see `diffusion.p_mean_variance`.
    x_T: optional starting noise [B, H, W, C] (default: drawn from `key`), to reuse latents.
    return_trajectory: also return pred_x0 at every step, [T, B, H, W, C] in sampling order
      (t = T-1 first), for progressive-generation figures. Holds T copies of the batch.

  Returns:
    x_0 [B, H, W, C], or (x_0, trajectory) when return_trajectory.
  """
  check_option("mean_type", mean_type, diffusion.MEAN_TYPES)
  check_option("var_type", var_type, diffusion.VAR_TYPES)
  shape = tuple(shape)
  key_init, key_steps = jax.random.split(key)
  if x_T is None:
    x_T = jax.random.normal(key_init, shape)
  chex.assert_shape(x_T, shape)

  def step(x, i):
    t = jnp.full((shape[0],), i, dtype=jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(key_steps, i), shape, x.dtype)
    x, pred_xstart = p_sample(model_fn, schedule, x, t, noise, mean_type=mean_type,
                              var_type=var_type, clip_denoised=clip_denoised)
    return x, pred_xstart if return_trajectory else None

  steps = jnp.arange(schedule.num_timesteps - 1, -1, -1, dtype=jnp.int32)
  x_0, trajectory = jax.lax.scan(step, x_T, steps)
  return (x_0, trajectory) if return_trajectory else x_0


def _run(model_fn: ModelFn, schedule: DiffusionSchedule, shape: Sequence[int], key: jax.Array, *,
         num_steps: int | None, **common):
  """The registered sampler: the full chain, or the respaced one on `num_steps` evenly spaced
  steps (Improved DDPM Sec. 4; the model still sees the original timesteps)."""
  if num_steps is not None and num_steps != schedule.num_timesteps:
    kept = schedules.space_timesteps(schedule.num_timesteps, [num_steps])
    schedule, _ = schedules.respace(schedule, kept)
  return p_sample_loop(model_fn, schedule, shape, key, **common)


registry.register(registry.Sampler(
    name="ancestral", run=_run, check=registry.at_most_num_timesteps,
    summary="DDPM Algorithm 2; respaced to num_steps evenly spaced steps when fewer than T "
            "(Improved DDPM Sec. 4)"))
