"""Tests of diffusion_jax.analysis against hand-written chains and the exact mixture denoiser."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analysis, diffusion, losses, schedules
from diffusion_jax.gaussian_mixture import GaussianMixture

T = 100
BETAS = schedules.get_beta_schedule("linear_scaled", T)
SCHED = schedules.DiffusionSchedule.from_betas(BETAS)
# Two well separated components in 4x4x1 "images".
MIXTURE = GaussianMixture.create(
    [0.4, 0.6], np.stack([np.full((4, 4, 1), -0.5), np.full((4, 4, 1), 0.5)]), [0.15, 0.15])
EPS = MIXTURE.eps_model_fn(SCHED)
KW = dict(mean_type="eps", var_type="fixedsmall")
B = 4  # one batch size throughout, so REVERSE compiles once
REVERSE = jax.jit(lambda x_t, t, key: analysis.reverse_from(EPS, SCHED, x_t, t, key, **KW))


@jax.jit
def manual_chain(x_T, key):
  """DDPM Algorithm 2 written out: the state before each step t and x0_hat at t ([T, ...] indexed
  by t), and x_0."""
  _, key_steps = jax.random.split(key)  # the key layout documented by ancestral.p_sample_loop

  def step(x, t):
    steps = jnp.full((x.shape[0],), t, jnp.int32)
    out = diffusion.p_mean_variance(SCHED, EPS(x, steps), x, steps, clip_denoised=True, **KW)
    noise = jax.random.normal(jax.random.fold_in(key_steps, t), x.shape)
    return out.mean + (t > 0) * jnp.exp(0.5 * out.log_variance) * noise, (x, out.pred_xstart)

  x_0, (states, preds) = jax.lax.scan(step, x_T, jnp.arange(T - 1, -1, -1))
  return states[::-1], preds[::-1], x_0


def test_reverse_from_and_progressive_generation_follow_one_chain():
  key = jax.random.PRNGKey(0)
  shape = (B, 4, 4, 1)
  x_T = jax.random.normal(jax.random.split(key)[0], shape)  # p_sample_loop's own x_T
  states, preds, x_0 = manual_chain(x_T, key)
  for t in (0, 40, T - 1):
    np.testing.assert_allclose(REVERSE(states[t], t, key), x_0, atol=1e-5)
  ts = (T - 1, 50, 10, 0)
  final, x0_hat = analysis.progressive_generation(EPS, SCHED, shape, key, timesteps=ts, **KW)
  np.testing.assert_allclose(final, x_0, atol=1e-5)
  # x0_hat = x_t / sqrt(abar_t) - ... amplifies float32 rounding by up to 1 / sqrt(abar_99) ~ 10.
  np.testing.assert_allclose(x0_hat, preds[np.asarray(ts)], atol=1e-4)
  with pytest.raises(ValueError, match="timesteps"):
    analysis.progressive_generation(EPS, SCHED, shape, key, timesteps=(T,), **KW)


def test_shared_latent_samples():
  x_start, _ = MIXTURE.sample(jax.random.PRNGKey(1), B)
  key = jax.random.PRNGKey(2)
  ts = (5, 40, 90)
  latents, samples = analysis.shared_latent_samples(EPS, SCHED, x_start, key, timesteps=ts,
                                                    num_samples=16, **KW)
  assert latents.shape == (3,) + x_start.shape and samples.shape == (3, 16) + x_start.shape
  key_encode, key_chains = jax.random.split(key)
  for i, t in enumerate(ts):
    noise = jax.random.normal(jax.random.fold_in(key_encode, t), x_start.shape)
    want = diffusion.q_sample(SCHED, x_start, jnp.full((B,), t), noise)
    np.testing.assert_allclose(latents[i], want, atol=1e-6)
  chain_7 = REVERSE(latents[1], 40, jax.random.fold_in(key_chains, 7))
  np.testing.assert_allclose(samples[1, 7], chain_7, atol=1e-5)
  # The later the shared latent, the less the samples keep of x_0 and the more they differ.
  spread = np.asarray(jnp.mean(jnp.std(samples, axis=1), axis=(1, 2, 3, 4)))
  assert spread[0] < spread[1] < spread[2] and spread[0] < 0.5 * spread[2]


def test_interpolate_mixes_latents_and_shares_decoding_noise():
  x_a = jnp.full((B, 4, 4, 1), -0.5)
  x_b = jnp.full((B, 4, 4, 1), 0.5)
  key = jax.random.PRNGKey(3)
  decoded, mixed = analysis.interpolate(EPS, SCHED, x_a, x_b, key, t=10, lambdas=(0.0, 0.25, 1.0),
                                        **KW)
  np.testing.assert_allclose(mixed[1], 0.75 * mixed[0] + 0.25 * mixed[2], atol=1e-6)
  key_decode = jax.random.split(key, 3)[2]
  for i in (0, 2):
    np.testing.assert_allclose(decoded[i], REVERSE(mixed[i], 10, key_decode), atol=1e-5)
  # Decoding from t = 10 keeps each end point in its component.
  assert float(jnp.mean(decoded[0])) < -0.3 and float(jnp.mean(decoded[2])) > 0.3


def test_ddim_interpolate_reconstructs_the_end_points():
  x_a, _ = MIXTURE.sample(jax.random.PRNGKey(4), 2)
  x_b, _ = MIXTURE.sample(jax.random.PRNGKey(5), 2)
  decoded, latents = jax.jit(lambda a, b: analysis.ddim_interpolate(
      EPS, SCHED, a, b, lambdas=(0.0, 0.5, 1.0), num_steps=T, **KW))(x_a, x_b)  # one compilation
  assert decoded.shape == (3,) + x_a.shape
  # Inversion then decoding on the same grid returns the images up to the discretization error.
  np.testing.assert_allclose(decoded[0], x_a, atol=0.05)
  np.testing.assert_allclose(decoded[2], x_b, atol=0.05)
  # slerp keeps the norm of (nearly orthogonal, equal-norm) Gaussian latents.
  norms = np.linalg.norm(np.asarray(latents).reshape(3, 2, -1), axis=-1)
  np.testing.assert_allclose(norms[1], 0.5 * (norms[0] + norms[2]), rtol=0.2)


def test_rate_distortion_against_explicit_sums():
  rng = np.random.default_rng(0)
  terms = losses.BpdTerms(total_bpd=None, prior_bpd=rng.uniform(0, 0.1, 5),
                          terms_bpd=rng.uniform(0, 1, (5, 7)),
                          xstart_mse=rng.uniform(0, 0.5, (5, 7)), eps_mse=None)
  terms = terms.replace(total_bpd=terms.terms_bpd.sum(1) + terms.prior_bpd)
  rd = analysis.rate_distortion(terms)
  for t in range(7):
    want = np.mean([terms.prior_bpd[i] + sum(terms.terms_bpd[i, s] for s in range(t + 1, 7))
                    for i in range(5)])
    np.testing.assert_allclose(rd.rate_bpd[t], want, rtol=1e-12)
    rmse = 127.5 * np.sqrt(terms.xstart_mse[:, t].mean())
    np.testing.assert_allclose(rd.distortion_rmse[t], rmse, rtol=1e-12)
  np.testing.assert_allclose(rd.rate_bpd[0] + terms.terms_bpd[:, 0].mean(), rd.total_bpd,
                             rtol=1e-12)


def test_rate_distortion_of_the_exact_denoiser_on_8bit_data():
  x, _ = MIXTURE.sample(jax.random.PRNGKey(6), 64)
  x = jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255) / 127.5 - 1.0  # on the 8-bit grid
  bpd = jax.jit(lambda x, key: losses.calc_bpd_loop(EPS, SCHED, x, key, **KW))
  terms = bpd(x, jax.random.PRNGKey(7))
  rd = analysis.rate_distortion(terms)
  # The rate only grows as the receiver gets closer to x_0 (every KL term is >= 0, up to float32).
  assert np.all(np.diff(rd.rate_bpd) <= 1e-6)
  np.testing.assert_allclose(rd.total_bpd, float(jnp.mean(terms.total_bpd)), rtol=1e-6)
  # From the prior alone x0_hat is about the data mean; at t = 0 it is within the last noise level
  # sqrt(1 - abar_0) (on the 0..255 scale) of the data.
  assert rd.distortion_rmse[-1] > 40.0
  assert rd.distortion_rmse[0] < 1.1 * 127.5 * np.sqrt(BETAS[0])
  assert rd.distortion_rmse[0] < rd.distortion_rmse[T // 2] < rd.distortion_rmse[-1]
