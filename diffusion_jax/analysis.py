"""The DDPM paper's analyses of a trained model (Ho et al. 2020, Sec. 4.3), as pure functions.

* `progressive_generation`: the model's estimate x0_hat at chosen t along one reverse chain
  (Fig. 6).
* `shared_latent_samples`: several reverse chains from the same x_t ~ q(x_t | x_0), for several
  t (Fig. 7): the larger t, the less of x_0 the samples keep.
* `interpolate`: encode two images with q at one t, mix the latents linearly, decode through the
  reverse chain with the same noise for every mixing weight (Fig. 8); `ddim_interpolate` does the
  same through DDIM's deterministic latent x_T with spherical interpolation (DDIM Sec. 5.3).
* `rate_distortion`: progressive lossy compression (Sec. 4.3, Algorithms 3-4, Fig. 5) from the
  terms of `losses.calc_bpd_loop`: after receiving x_t the receiver has paid the prior and every
  KL term above t, and holds x0_hat(x_t).

`reverse_from` runs the reverse chain from an intermediate x_t; its step may be traced, so one
compiled loop serves every t, and it draws the noise of `ancestral.p_sample_loop` step for step.
"""

from __future__ import annotations

from typing import Callable, Sequence

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion, losses
from diffusion_jax.diffusion import MeanType, VarType
from diffusion_jax.samplers import ancestral, ddim
from diffusion_jax.schedules import DiffusionSchedule

ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def _check_timesteps(schedule: DiffusionSchedule, timesteps: Sequence[int]) -> list[int]:
  steps = [int(t) for t in timesteps]
  if not steps or min(steps) < 0 or max(steps) >= schedule.num_timesteps:
    raise ValueError(f"timesteps must be non-empty steps in [0, {schedule.num_timesteps - 1}], "
                     f"got {list(timesteps)}.")
  return steps


def reverse_from(model_fn: ModelFn, schedule: DiffusionSchedule, x_t: jnp.ndarray,
                 t: int | jnp.ndarray, key: jax.Array, *, mean_type: MeanType = "eps",
                 var_type: VarType = "fixedlarge", clip_denoised: bool = True) -> jnp.ndarray:
  """Runs the reverse chain (DDPM Algorithm 2) from x_t at step t down to x_0.

  The step t may be traced (one compilation serves every t): the loop runs t + 1 reverse
  steps of `ancestral.p_sample`, and step s draws its noise from fold_in(split(key)[1], s), the
  key layout of `ancestral.p_sample_loop`, so continuing a chain of p_sample_loop from its
  state at step t with the same key reproduces that chain's x_0.

  Args:
    model_fn: model_fn(x_t, t_original) -> output.
    schedule: the diffusion.
    x_t: [B, H, W, C], the state at step t (before the step at t).
    t: the step of x_t in [0, T), a Python int (checked) or an int32 scalar.
    key: PRNG key.

  Returns:
    x_0 [B, H, W, C].
  """
  if isinstance(t, int):
    _check_timesteps(schedule, [t])
  t = jnp.asarray(t, jnp.int32)
  _, key_steps = jax.random.split(key)
  steps = jnp.ones((x_t.shape[0],), jnp.int32)

  def step(i, x):
    s = t - i
    noise = jax.random.normal(jax.random.fold_in(key_steps, s), x.shape, x.dtype)
    return ancestral.p_sample(model_fn, schedule, x, s * steps, noise, mean_type=mean_type,
                              var_type=var_type, clip_denoised=clip_denoised)[0]

  return jax.lax.fori_loop(0, t + 1, step, x_t)


def progressive_generation(model_fn: ModelFn, schedule: DiffusionSchedule, shape: Sequence[int],
                           key: jax.Array, *, timesteps: Sequence[int], mean_type: MeanType = "eps",
                           var_type: VarType = "fixedlarge", clip_denoised: bool = True
                           ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """x0_hat predicted at chosen steps of one ancestral chain per example (DDPM Fig. 6).

  Holds the whole trajectory (T copies of the batch) before selecting from it: fine for small
  images, use few examples for large ones.

  Args:
    shape: [B, H, W, C] of the samples.
    timesteps: steps t at which to read x0_hat (the prediction made from x_t).

  Returns:
    (x_0 [B, H, W, C], x0_hat [len(timesteps), B, H, W, C]).
  """
  steps = _check_timesteps(schedule, timesteps)
  x_0, trajectory = ancestral.p_sample_loop(model_fn, schedule, shape, key, mean_type=mean_type,
                                            var_type=var_type, clip_denoised=clip_denoised,
                                            return_trajectory=True)
  # The trajectory is in sampling order: entry i is the prediction made at step T - 1 - i.
  order = jnp.asarray([schedule.num_timesteps - 1 - t for t in steps])
  return x_0, trajectory[order]


def shared_latent_samples(model_fn: ModelFn, schedule: DiffusionSchedule, x_start: jnp.ndarray,
                          key: jax.Array, *, timesteps: Sequence[int], num_samples: int,
                          mean_type: MeanType = "eps", var_type: VarType = "fixedlarge",
                          clip_denoised: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Several reverse chains from one x_t ~ q(x_t | x_0) for each t (DDPM Fig. 7).

  Args:
    x_start: the images to encode, x_0 [B, H, W, C].
    key: x_t at step t uses noise fold_in(split(key)[0], t); chain j from it uses the key
      fold_in(split(key)[1], j) (the same j-th key at every t).
    timesteps: steps t of the shared latents.
    num_samples: chains per latent.

  Returns:
    (x_t [len(timesteps), B, H, W, C], samples [len(timesteps), num_samples, B, H, W, C]).
  """
  steps = _check_timesteps(schedule, timesteps)
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
  key_encode, key_chains = jax.random.split(key)
  latents = []
  for t in steps:
    noise = jax.random.normal(jax.random.fold_in(key_encode, t), x_start.shape, x_start.dtype)
    steps_t = jnp.full((x_start.shape[0],), t, jnp.int32)
    latents.append(diffusion.q_sample(schedule, x_start, steps_t, noise))
  latents = jnp.stack(latents)
  chain_keys = jnp.stack([jax.random.fold_in(key_chains, j) for j in range(num_samples)])

  def decode(inputs):  # the chains of one latent, batched; one compiled loop serves every t
    i, t = inputs
    chain = lambda k: reverse_from(model_fn, schedule, latents[i], t, k, mean_type=mean_type,
                                   var_type=var_type, clip_denoised=clip_denoised)
    return jax.vmap(chain)(chain_keys)

  samples = jax.lax.map(decode, (jnp.arange(len(steps)), jnp.asarray(steps, jnp.int32)))
  return latents, samples


def interpolate(model_fn: ModelFn, schedule: DiffusionSchedule, x_a: jnp.ndarray, x_b: jnp.ndarray,
                key: jax.Array, *, t: int, lambdas: Sequence[float], mean_type: MeanType = "eps",
                var_type: VarType = "fixedlarge", clip_denoised: bool = True
                ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Interpolation in the latent x_t through the reverse chain (DDPM Sec. 4.3, Fig. 8).

  x_t = q_sample(x_a, t, eps_a), x'_t = q_sample(x_b, t, eps_b); each mix
  (1 - lambda) x_t + lambda x'_t is decoded by the reverse chain from step t with the same key,
  so the chains differ only through their starting points.

  Args:
    x_a, x_b: the two images of each pair, [B, H, W, C].
    key: split into the encoding noises eps_a, eps_b and the (shared) decoding key.
    t: the step of the latents; lambdas: mixing weights in [0, 1].

  Returns:
    (decoded [len(lambdas), B, H, W, C], the mixed latents [len(lambdas), B, H, W, C]).
  """
  chex.assert_equal_shape([x_a, x_b])
  (t,) = _check_timesteps(schedule, [t])
  key_a, key_b, key_decode = jax.random.split(key, 3)
  steps = jnp.full((x_a.shape[0],), t, jnp.int32)
  z_a = diffusion.q_sample(schedule, x_a, steps, jax.random.normal(key_a, x_a.shape, x_a.dtype))
  z_b = diffusion.q_sample(schedule, x_b, steps, jax.random.normal(key_b, x_b.shape, x_b.dtype))
  lam = jnp.asarray(lambdas, x_a.dtype).reshape((-1,) + (1,) * x_a.ndim)
  mixed = (1.0 - lam) * z_a[None] + lam * z_b[None]
  # vmap over the weights with an unbatched key: every weight's chain draws the same noise.
  decode = lambda z: reverse_from(model_fn, schedule, z, t, key_decode, mean_type=mean_type,
                                  var_type=var_type, clip_denoised=clip_denoised)
  return jax.vmap(decode)(mixed), mixed


def ddim_interpolate(model_fn: ModelFn, schedule: DiffusionSchedule, x_a: jnp.ndarray,
                     x_b: jnp.ndarray, *, lambdas: Sequence[float], num_steps: int | None = None,
                     mean_type: MeanType = "eps", var_type: VarType = "fixedlarge",
                     clip_denoised: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Deterministic interpolation through DDIM's latent x_T (DDIM Sec. 5.3).

  Each image is inverted to x_T with `ddim.ddim_reverse_loop`, the latents are mixed with
  `ddim.slerp`, and each mix is decoded with `ddim.ddim_sample_loop` (eta = 0), all on the same
  `num_steps` grid.

  Returns:
    (decoded [len(lambdas), B, H, W, C], the latents [len(lambdas), B, H, W, C]).
  """
  chex.assert_equal_shape([x_a, x_b])
  common = dict(num_steps=num_steps, mean_type=mean_type, var_type=var_type)
  # Both images inverted in one batch (one loop), then split.
  z_a, z_b = jnp.split(ddim.ddim_reverse_loop(model_fn, schedule, jnp.concatenate([x_a, x_b]),
                                              **common), 2)
  latents = jnp.stack([ddim.slerp(z_a, z_b, lam) for lam in lambdas])
  flat = latents.reshape((-1,) + x_a.shape[1:])
  decoded = ddim.ddim_sample_loop(model_fn, schedule, flat.shape, jax.random.PRNGKey(0), eta=0.0,
                                  x_T=flat, clip_denoised=clip_denoised, **common)
  return decoded.reshape(latents.shape), latents


@flax.struct.dataclass
class RateDistortion:
  """Progressive lossy compression of a test set (DDPM Sec. 4.3), float64 numpy, ascending t.

  rate_bpd [T]: bits/dim received once the receiver holds x_t: the prior KL plus every KL term
    above t (sum over s > t of L_s in the library's indexing).
  distortion_rmse [T]: RMSE on the [0, 255] scale of x0_hat(x_t) against the data.
  total_bpd: the lossless end point, after the decoder term L_0: the bits/dim of
    `calc_bpd_loop` (what --mode=eval reports on the same images and keys), at distortion 0.
  """
  rate_bpd: np.ndarray
  distortion_rmse: np.ndarray
  total_bpd: float


def rate_distortion(terms: losses.BpdTerms) -> RateDistortion:
  """The rate-distortion curve from the terms of `losses.calc_bpd_loop` over N images.

  Args:
    terms: BpdTerms whose arrays hold N examples (e.g. batches concatenated along axis 0):
      terms_bpd and xstart_mse [N, T], prior_bpd and total_bpd [N].

  Returns:
    RateDistortion (averages over the N examples; RMSE pools all pixels of all examples).
  """
  kl = np.asarray(terms.terms_bpd, np.float64)
  prior = np.asarray(terms.prior_bpd, np.float64)
  # Bits paid above t: sum_{s > t} L_s. The t = 0 column (decoder NLL) enters only the total.
  above = np.cumsum(kl[:, ::-1], axis=1)[:, ::-1] - kl
  rate = np.mean(prior[:, None] + above, axis=0)
  rmse = np.sqrt(np.mean(np.asarray(terms.xstart_mse, np.float64), axis=0)) * 127.5
  return RateDistortion(rate_bpd=rate, distortion_rmse=rmse,
                        total_bpd=float(np.mean(np.asarray(terms.total_bpd, np.float64))))
