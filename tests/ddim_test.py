"""DDIM against diffusers' DDIMScheduler, ancestral sampling, and an exact Gaussian-mixture denoiser."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from diffusion_jax import schedules
from diffusion_jax.gaussian_mixture import GaussianMixture
from diffusion_jax.samplers import ancestral, ddim, grids
from transforms import assert_jit_and_pmap_agree

T = 1000
SHAPE = (4, 4, 4, 2)


def _schedule(name="linear"):
  return schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule(name, T))


def _mixture():
  rng = np.random.default_rng(0)
  return GaussianMixture.create([0.3, 0.7], rng.uniform(-0.8, 0.8, (2,) + SHAPE[1:]), [0.1, 0.2])


def _step_noise(key, t):
  """The documented per-step noise of ddim_sample_loop: fold_in(split(key)[1], t)."""
  return np.asarray(jax.random.normal(jax.random.fold_in(jax.random.split(key)[1], int(t)), SHAPE))


def _diffusers_ddim(eps_fn, x_T, key, num_steps, spacing, eta, clip):
  sched = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=clip,
                        set_alpha_to_one=True, timestep_spacing=spacing, steps_offset=0)
  sched.set_timesteps(num_steps)
  x = torch.from_numpy(np.asarray(x_T))
  for t in sched.timesteps:
    eps = torch.from_numpy(np.asarray(eps_fn(jnp.asarray(x.numpy()), jnp.full((SHAPE[0],), int(t), jnp.int32))))
    x = sched.step(eps, t, x, eta=eta, use_clipped_model_output=True,
                   variance_noise=torch.from_numpy(_step_noise(key, t))).prev_sample
  return x.numpy(), sched.timesteps.numpy()


@pytest.mark.parametrize("num_steps,spacing,eta,clip", [
    (10, "leading", 0.0, False), (10, "leading", 1.0, False), (50, "leading", 0.0, True),
    (50, "leading", 1.0, False), (10, "trailing", 1.0, True), (1000, "leading", 0.0, False),
    (1000, "leading", 1.0, False)])
def test_matches_diffusers_ddim_scheduler(num_steps, spacing, eta, clip):
  # Only "leading", and "trailing" with n | T, put diffusers' sample at the noise level it tells
  # the model: its step always moves to t - T // n, whatever its timestep list says.
  sched, mixture, key = _schedule(), _mixture(), jax.random.PRNGKey(num_steps)
  eps_fn = jax.jit(mixture.eps_model_fn(sched))
  x_T = jax.random.normal(jax.random.PRNGKey(7), SHAPE)
  ref, timesteps = _diffusers_ddim(eps_fn, x_T, key, num_steps, spacing, eta, clip)
  ours = ddim.ddim_sample_loop(eps_fn, sched, SHAPE, key, timesteps=timesteps, eta=eta,
                               clip_denoised=clip, x_T=x_T)
  err = np.abs(np.asarray(ours) - ref)
  # diffusers keeps its tables in float32; eta = 1 over 1000 steps accumulates the most.
  assert np.median(err) < 5e-6 and err.max() < 2e-4, (np.median(err), err.max())


def test_default_grid_contains_both_ends_and_differs_from_leading():
  for spacing in grids.DDIM_SPACINGS:
    for n in (1, 2, 10, 50, 999, 1000):
      g = grids.ddim_timesteps(T, n, spacing, schedule=_schedule())
      assert len(g) == n and g[0] == T - 1 and np.all(np.diff(g) < 0)
      assert n == 1 or g[-1] == 0
  np.testing.assert_array_equal(grids.ddim_timesteps(T, 10), [999, 888, 777, 666, 555, 444, 333, 222, 111, 0])
  # DDIM's quadratic skip, (T-1) (i/(S-1))^2, is dense near the data.
  np.testing.assert_array_equal(grids.ddim_timesteps(T, 4, "quadratic"), [999, 444, 111, 0])
  # Karras: sigma = exp(-lambda) of the points follows Eq. 5 with rho = 7 before rounding.
  sched = _schedule()
  u = grids.continuous_timesteps(sched, 6, "karras")
  abar = np.cumprod(1 - schedules.get_beta_schedule("linear", T))
  sig = np.sqrt((1 - abar) / abar)
  expected = (sig[-1] ** (1 / 7) + np.linspace(0, 1, 6) * (sig[0] ** (1 / 7) - sig[-1] ** (1 / 7))) ** 7
  np.testing.assert_allclose(np.exp(-grids.lambda_at(sched, u)), expected, rtol=1e-6)


def test_eta_one_on_full_grid_equals_ancestral_fixedsmall():
  sched, mixture, key = _schedule("cosine"), _mixture(), jax.random.PRNGKey(3)
  eps_fn = mixture.eps_model_fn(sched)
  ours = ddim.ddim_sample_loop(eps_fn, sched, SHAPE, key, eta=1.0)
  ref = ancestral.p_sample_loop(eps_fn, sched, SHAPE, key, mean_type="eps", var_type="fixedsmall")
  np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_last_step_returns_pred_x0_and_trajectory_shapes():
  sched, mixture = _schedule(), _mixture()
  x0, traj = ddim.ddim_sample_loop(mixture.x0_model_fn(sched), sched, SHAPE, jax.random.PRNGKey(0),
                                   num_steps=5, eta=0.5, mean_type="x0", clip_denoised=False,
                                   return_trajectory=True)
  assert traj.x.shape == traj.pred_x0.shape == (5,) + SHAPE
  np.testing.assert_array_equal(traj.x[-1], x0)
  np.testing.assert_allclose(traj.pred_x0[-1], x0, atol=1e-6)


def test_x0_and_eps_parameterizations_agree():
  sched, mixture, key = _schedule(), _mixture(), jax.random.PRNGKey(4)
  a = ddim.ddim_sample_loop(mixture.eps_model_fn(sched), sched, SHAPE, key, num_steps=20, eta=0.3)
  b = ddim.ddim_sample_loop(mixture.x0_model_fn(sched), sched, SHAPE, key, num_steps=20, eta=0.3,
                            mean_type="x0")
  np.testing.assert_allclose(a, b, atol=2e-4)


def test_respaced_schedule_calls_model_with_original_timesteps():
  sched, mixture, key = _schedule(), _mixture(), jax.random.PRNGKey(5)
  grid = grids.ddim_timesteps(T, 10)
  respaced, _ = schedules.respace(schedules.get_beta_schedule("linear", T), grid)
  eps_fn = mixture.eps_model_fn(sched)  # indexes the ORIGINAL schedule
  full = ddim.ddim_sample_loop(eps_fn, sched, SHAPE, key, timesteps=grid)
  sub = ddim.ddim_sample_loop(eps_fn, respaced, SHAPE, key, num_steps=10)
  np.testing.assert_allclose(sub, full, atol=2e-5)


def test_inversion_then_generation_reconstructs():
  sched, mixture = _schedule(), _mixture()
  eps_fn = mixture.eps_model_fn(sched)
  x0, _ = mixture.sample(jax.random.PRNGKey(6), SHAPE[0])
  latent = ddim.ddim_reverse_loop(eps_fn, sched, x0)
  # The latent is Gaussian-like: unit variance.
  assert 0.6 < float(jnp.std(latent)) < 1.4
  recon = ddim.ddim_sample_loop(eps_fn, sched, SHAPE, jax.random.PRNGKey(0), x_T=latent,
                                clip_denoised=False)
  # Measured: RMS 2.5e-3, max 8e-3. The error is made near the data, where the linear
  # schedule's steps are coarse in log-SNR (lambda drops by 0.4 from t = 0 to t = 1): encoder and
  # decoder take eps at opposite ends of each step, O(h^2) apart.
  assert float(jnp.sqrt(jnp.mean(jnp.square(recon - x0)))) < 3.5e-3
  assert float(jnp.max(jnp.abs(recon - x0))) < 1.5e-2
  # With 20 steps the encoder still inverts its own decoder to the discretization error.
  latent20 = ddim.ddim_reverse_loop(eps_fn, sched, x0, num_steps=20)
  recon20 = ddim.ddim_sample_loop(eps_fn, sched, SHAPE, jax.random.PRNGKey(0), num_steps=20,
                                  x_T=latent20, clip_denoised=False)
  assert float(jnp.sqrt(jnp.mean(jnp.square(recon20 - x0)))) < 0.12  # measured 0.086


def test_slerp_against_closed_form():
  rng = np.random.default_rng(0)
  z0, z1 = rng.standard_normal((2, 3, 5, 2)).astype(np.float32)
  out = np.asarray(ddim.slerp(z0, z1, 0.3))
  for i in range(2):
    a, b = z0[i].ravel().astype(np.float64), z1[i].ravel().astype(np.float64)
    theta = np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    expected = (np.sin(0.7 * theta) * a + np.sin(0.3 * theta) * b) / np.sin(theta)
    np.testing.assert_allclose(out[i].ravel(), expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ddim.slerp(z0, z1, 0.0), z0, atol=1e-5)
  np.testing.assert_allclose(ddim.slerp(z0, z1, 1.0), z1, atol=1e-5)
  np.testing.assert_allclose(ddim.slerp(z0, z0, 0.5), z0, atol=1e-5)  # parallel: no NaN


def test_bad_arguments_name_the_field():
  sched = _schedule()
  with pytest.raises(ValueError, match="spacing"):
    grids.ddim_timesteps(T, 10, "cubic")
  with pytest.raises(ValueError, match="num_steps"):
    grids.ddim_timesteps(T, 0)
  with pytest.raises(ValueError, match="timesteps"):
    ddim.resolve_timesteps(sched, None, [0, 10], "uniform")
  with pytest.raises(ValueError, match="concrete"):
    jax.jit(lambda s: ddim.ddim_sample_loop(lambda x, t: x, s, SHAPE, jax.random.PRNGKey(0),
                                            num_steps=3))(sched)


def test_jit_and_pmap_agree():
  sched, mixture = _schedule(), _mixture()
  eps_fn = mixture.eps_model_fn(sched)
  x_T = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
  assert_jit_and_pmap_agree(
      lambda x: ddim.ddim_sample_loop(eps_fn, sched, SHAPE, jax.random.PRNGKey(2), num_steps=8,
                                      eta=1.0, x_T=x), x_T)
