"""NCSN's annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

For the noise levels sigma_1 > ... > sigma_L (largest first), run T Langevin steps at each level

  alpha_i = eps sigma_i^2 / sigma_L^2,      x <- x + (alpha_i / 2) s(x, sigma_i) + sqrt(alpha_i) z,

warm-starting each level from the last. The levels are the steps of an `sde.SDE` (NCSN is the
VE SDE with N = L: `VESDE(sigma_min=sigma_L, sigma_max=sigma_1, N=L)`, level i = step L - i);
sigma_i is the discrete chain's std at that step. An optional final denoising step replaces the
last sample by Tweedie's E[x0 | x] = (x + sigma_L^2 s(x, sigma_L)) / a (Jolicoeur-Martineau et
al. 2021; Song & Ermon 2020), which removes the sigma_L noise NCSN's samples otherwise keep.

NCSN's CIFAR-10 settings are sigma 1 -> 0.01 (L = 10), T = 100, eps = 2e-5 on data in [0, 1].
For data in [-1, 1] the same process has twice the sigmas (2 -> 0.02) and four times the step
(eps = 8e-5): alpha_i scales with a variance.
"""

from __future__ import annotations

from typing import Literal, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import sde as sde_lib
from diffusion_jax.diffusion import check_option
from diffusion_jax.samplers import pc, registry
from diffusion_jax.sde import SDE, ScoreFn

Init = Literal["uniform", "prior"]
INITS: tuple[str, ...] = ("uniform", "prior")


def annealed_langevin_sample(score_fn: ScoreFn, sde: SDE, shape: Sequence[int], key: jax.Array, *,
                             n_steps_each: int = 100, step_size: float = 2e-5, denoise: bool = True,
                             init: Init = "uniform", x_T: jnp.ndarray | None = None,
                             return_trajectory: bool = False):
  """Annealed Langevin dynamics over the SDE's N levels, one `lax.scan` of N * T steps.

  Args:
    score_fn: score_fn(x [B, ...], t [B]) -> grad log p(x) at the level of t (the level of step
      n is at t = sde.step_to_time(n)).
    sde: the levels (usually a `VESDE` with N = L).
    shape: [B, ...] of the samples.
    key: PRNG key.
    n_steps_each: T, Langevin steps per level.
    step_size: eps, the step at the smallest level (alpha_L = eps).
    denoise: end with Tweedie's formula at the smallest level (one more score evaluation).
    init: the start when x_T is None: "uniform" (NCSN: U(-1, 1), the range of our data) or
      "prior" (the SDE's prior, N(0, sigma_max^2 I) for VE).
    x_T: optional start [B, ...].
    return_trajectory: also return x at the end of each level (before the final denoising),
      [N, B, ...], largest sigma first.

  Returns:
    x_0 [B, ...], or (x_0, trajectory).
  """
  check_option("init", init, INITS)
  if n_steps_each < 1 or not step_size > 0:
    raise ValueError(f"need n_steps_each >= 1 and step_size > 0, got {n_steps_each}, {step_size}.")
  shape = tuple(shape)
  key_init, key_steps = jax.random.split(key)
  if x_T is None:
    x_T = (jax.random.uniform(key_init, shape, minval=-1.0, maxval=1.0) if init == "uniform"
           else sde.prior_sampling(key_init, shape))
  chex.assert_shape(x_T, shape)

  # Level n = N-1 (largest sigma) first; alpha_n = eps sigma_n^2 / sigma_min^2, in float64.
  levels = np.arange(sde.N - 1, -1, -1)
  with jax.ensure_compile_time_eval():  # the SDE is closed over (concrete), as a grid must be
    sigmas = np.asarray(sde.step_marginal_coefs(jnp.asarray(levels))[1], np.float64)
  alphas = step_size * sigmas**2 / sigmas[-1] ** 2
  times = np.repeat(sde.step_times()[levels], n_steps_each)
  alphas = np.repeat(alphas, n_steps_each)

  def step(x, inputs):
    t, alpha, k = inputs
    z = jax.random.normal(jax.random.fold_in(key_steps, k), shape)
    return x + 0.5 * alpha * score_fn(x, t) + jnp.sqrt(alpha) * z, x

  inputs = (jnp.asarray(times, jnp.float32), jnp.asarray(alphas, jnp.float32),
            jnp.arange(len(times), dtype=jnp.int32))
  x_last, states = jax.lax.scan(step, x_T, inputs)
  x = sde_lib.denoise(score_fn, sde, x_last, jnp.float32(times[-1])) if denoise else x_last
  if not return_trajectory:
    return x
  # states[k] is the state before step k, so a level ends where the next one starts.
  return x, jnp.concatenate([states[n_steps_each::n_steps_each], x_last[None]], axis=0)


def _run(model_fn, process, shape, key, *, num_steps, mean_type, var_type, clip_denoised, x_T,
         return_trajectory, time_input, **options):
  del num_steps, clip_denoised  # the cost is N * n_steps_each (+ 1); nothing to clip
  sde, score_fn, _ = pc.score_model(model_fn, process, mean_type=mean_type, var_type=var_type,
                                    time_input=time_input)
  return annealed_langevin_sample(score_fn, sde, shape, key, x_T=x_T,
                                  return_trajectory=return_trajectory, **options)


def _check(options, num_steps, num_timesteps):
  del options, num_timesteps
  if num_steps is not None:
    return (f"num_steps={num_steps}: annealed Langevin runs n_steps_each steps at each of the "
            "diffusion.num_timesteps levels; leave sampling.num_steps unset and set "
            "sampling.annealed_langevin.n_steps_each.")
  return None


registry.register(registry.Sampler(
    name="annealed_langevin", run=_run, check=_check, accepts_sde=True,
    summary="NCSN's annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1)",
    options=(
        registry.Option("n_steps_each", 100, "Langevin steps T per noise level", minimum=1),
        registry.Option("step_size", 2e-5, "eps: the step at the smallest level (NCSN: 2e-5 on "
                        "[0, 1] data, 8e-5 on [-1, 1])", minimum=0.0),
        registry.Option("denoise", True, "end with Tweedie's formula at the smallest level"),
        registry.Option("init", "uniform", "start: uniform U(-1, 1) (NCSN) | prior", choices=INITS),
        pc.TIME_INPUT_OPTION,
    )))
