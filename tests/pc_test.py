"""Predictor-corrector and annealed Langevin sampling against DDPM and the exact mixture score."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import samplers, schedules, sde as sde_lib
from diffusion_jax.gaussian_mixture import GaussianMixture
from diffusion_jax.samplers import ancestral, langevin, pc

MIXTURE = GaussianMixture.create([0.2, 0.5, 0.3], [[-0.6, -0.6], [0.5, 0.0], [0.0, 0.7]], [0.05, 0.1, 0.08])
W, MU, S = (np.asarray(a, np.float64) for a in (MIXTURE.weights, MIXTURE.means, MIXTURE.stds))
N_SAMPLES = 3000


def _check_mixture(x, stds=None, std_rtol=0.15):
  """Weights within 4 multinomial standard errors (+0.01 for the samplers' own bias), means within
  5 standard errors (+2e-3), per-component stds within std_rtol of `stds` (default: the data's)."""
  x = np.asarray(x, np.float64)
  assert np.all(np.isfinite(x))
  labels = ((x[:, None] - MU[None]) ** 2).sum(-1).argmin(1)
  n = len(x)
  freq = np.bincount(labels, minlength=3) / n
  assert np.all(np.abs(freq - W) < 4 * np.sqrt(W * (1 - W) / n) + 0.01), freq
  stds = S if stds is None else stds
  for k in range(3):
    members = x[labels == k]
    np.testing.assert_allclose(members.mean(0), MU[k], atol=5 * S[k] / np.sqrt(len(members)) + 2e-3)
    np.testing.assert_allclose(members.std(0), stds[k], rtol=std_rtol)


def _sample(sde, **kw):
  fn = jax.jit(lambda key: pc.pc_sample_loop(MIXTURE.score_fn(sde), sde, (N_SAMPLES, 2), key, **kw))
  return fn(jax.random.PRNGKey(0))


# The spread is the samplers' weak point on coarse grids (VP's ancestral variance beta_i is too
# large, as DDPM's fixedlarge; 100 Euler-Maruyama steps overshoot the narrow component): 25% there.
@pytest.mark.parametrize("sde, kw, std_rtol", [
    (sde_lib.VESDE(sigma_min=0.01, sigma_max=3.0, N=200), dict(predictor="reverse_diffusion", corrector="langevin"), 0.1),
    (sde_lib.VESDE(sigma_min=0.01, sigma_max=3.0, N=200), dict(predictor="ancestral", corrector="none"), 0.1),
    (sde_lib.VPSDE(N=200), dict(predictor="euler_maruyama", corrector="langevin", snr=0.1), 0.1),
    (sde_lib.VPSDE(N=200), dict(predictor="ancestral", corrector="langevin", snr=0.1), 0.25),
    (sde_lib.subVPSDE(N=200), dict(predictor="euler_maruyama", corrector="none"), 0.1),
    (sde_lib.VPSDE(), dict(predictor="euler_maruyama", corrector="none", num_steps=100), 0.25),
], ids=["ve-rd-langevin", "ve-ancestral", "vp-em-langevin", "vp-ancestral-langevin", "subvp-em", "vp-em-100"])
def test_pc_sampling_reaches_the_mixture(sde, kw, std_rtol):
  _check_mixture(_sample(sde, **kw), std_rtol=std_rtol)


def test_final_denoising_step_on_ve():
  """Without the final step samples keep sigma_min's noise: std sqrt(s^2 + sigma_min^2); with it
  Tweedie's E[x0 | x] has std s^2 / sqrt(s^2 + sigma_min^2)."""
  sde = sde_lib.VESDE(sigma_min=0.04, sigma_max=3.0, N=200)
  kw = dict(predictor="reverse_diffusion", corrector="langevin")
  _check_mixture(_sample(sde, denoise=False, **kw), stds=np.sqrt(S**2 + 0.04**2), std_rtol=0.1)
  _check_mixture(_sample(sde, denoise=True, **kw), stds=S**2 / np.sqrt(S**2 + 0.04**2), std_rtol=0.1)


def test_vp_ancestral_predictor_is_ddpm_ancestral_sampling():
  """N = 1000, the DDPM eps oracle: one step equals DDPM's p_sample to float32 rounding, and the same
  key gives the same 1000-step chain (rounding accumulates to ~1e-4 over the chain)."""
  sched = schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear", 1000))
  model_fn = MIXTURE.eps_model_fn(sched)
  vp = sde_lib.VPSDE.from_schedule(sched)
  x, z = (jax.random.normal(jax.random.PRNGKey(i), (600, 2)) for i in (0, 1))
  n = jnp.repeat(jnp.array([999, 700, 500, 200, 50, 1]), 100)
  ddpm_step, _ = ancestral.p_sample(model_fn, sched, x, n, z, mean_type="eps", var_type="fixedlarge",
                                    clip_denoised=False)
  step, _ = pc.ancestral_step(vp, sde_lib.score_fn_from_model(model_fn, vp), x,
                              vp.step_to_time(n.astype(jnp.float32)), None, z)
  np.testing.assert_allclose(step, ddpm_step, rtol=1e-5, atol=1e-6)
  key, shape = jax.random.PRNGKey(3), (512, 2)
  ddpm = jax.jit(lambda k: ancestral.p_sample_loop(model_fn, sched, shape, k, mean_type="eps",
                                                   var_type="fixedlarge", clip_denoised=False))(key)
  score_fn = sde_lib.score_fn_from_model(model_fn, vp, prediction="eps")
  ours = jax.jit(lambda k: pc.pc_sample_loop(score_fn, vp, shape, k, predictor="ancestral",
                                             corrector="none"))(key)
  np.testing.assert_allclose(ours, ddpm, rtol=1e-4, atol=1e-4)


def test_ve_ancestral_step_is_the_gaussian_posterior():
  """NCSN's ancestral step = q(x_{i-1} | x_i, x0-hat) of the chain x_i = x_{i-1} + N(0, s_i^2 - s_{i-1}^2),
  x_{i-1} ~ N(x0, s_{i-1}^2), with x0-hat = x_i + s_i^2 score (Bayes' rule in float64)."""
  ve = sde_lib.VESDE(sigma_min=0.05, sigma_max=4.0, N=12)
  rng = np.random.default_rng(0)
  x, z, x0 = (rng.standard_normal((12, 3)) for _ in range(3))
  n = np.arange(12)
  sig = np.geomspace(0.05, 4.0, 12)
  score_fn = lambda x_, t: (jnp.asarray(x0, jnp.float32) - x_) / jnp.asarray(sig[n, None] ** 2, jnp.float32)  # noqa: E731
  out, mean = pc.ancestral_step(ve, score_fn, jnp.asarray(x, jnp.float32), jnp.asarray(ve.step_times(), jnp.float32),
                                None, jnp.asarray(z, jnp.float32))
  prev2, d2 = np.append(0.0, sig[:-1] ** 2)[:, None], (sig**2 - np.append(0.0, sig[:-1] ** 2))[:, None]
  with np.errstate(divide="ignore"):
    precision = 1.0 / prev2 + 1.0 / d2
  post_mean = np.where(prev2 > 0, (x0 / np.where(prev2 > 0, prev2, 1.0) + x / d2) / precision, x0)
  np.testing.assert_allclose(mean, post_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out, post_mean + np.sqrt(1.0 / precision) * z, rtol=1e-5, atol=1e-5)


def test_ancestral_with_any_schedule_through_piecewise_vp_is_ddpm():
  """A cosine schedule (not linear, no VPSDE has it) through PiecewiseVPSDE, x0-predicting model."""
  sched = schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("cosine", 1000))
  model_fn = MIXTURE.x0_model_fn(sched)
  pw = sde_lib.PiecewiseVPSDE.from_schedule(sched)
  key, shape = jax.random.PRNGKey(5), (512, 2)
  ddpm = jax.jit(lambda k: ancestral.p_sample_loop(model_fn, sched, shape, k, mean_type="x0",
                                                   clip_denoised=False))(key)
  score_fn = sde_lib.score_fn_from_model(model_fn, pw, prediction="x0")
  ours = jax.jit(lambda k: pc.pc_sample_loop(score_fn, pw, shape, k, predictor="ancestral",
                                             corrector="none"))(key)
  np.testing.assert_allclose(ours, ddpm, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("denoise", [True, False])
def test_annealed_langevin_reaches_the_mixture(denoise):
  """NCSN's Algorithm 1 on [-1, 1]-scaled levels 2 -> 0.02 (L = 10), T = 100: weights, means, and
  the spread of the last level (with denoising: Tweedie's s^2 / sqrt(s^2 + sigma_L^2))."""
  ve = sde_lib.VESDE(sigma_min=0.02, sigma_max=2.0, N=10)
  x = jax.jit(lambda k: langevin.annealed_langevin_sample(
      MIXTURE.score_fn(ve), ve, (N_SAMPLES, 2), k, n_steps_each=100, step_size=2e-4,
      denoise=denoise))(jax.random.PRNGKey(1))
  spread = S**2 / np.sqrt(S**2 + 0.02**2) if denoise else np.sqrt(S**2 + 0.02**2)
  _check_mixture(x, stds=spread, std_rtol=0.08)


def test_keys_trajectories_and_x_T():
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=3.0, N=20)
  score_fn = MIXTURE.score_fn(sde)
  x_T = sde.prior_sampling(jax.random.PRNGKey(9), (8, 2))
  run = jax.jit(lambda k, traj: pc.pc_sample_loop(score_fn, sde, (8, 2), k, x_T=x_T, return_trajectory=traj),
                static_argnums=1)
  a, traj = run(jax.random.PRNGKey(1), True)
  b, c = run(jax.random.PRNGKey(1), False), run(jax.random.PRNGKey(2), False)
  assert traj.shape == (20, 8, 2)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(traj[-1], a)
  assert not np.allclose(a, c)
  y, levels = langevin.annealed_langevin_sample(score_fn, sde, (8, 2), jax.random.PRNGKey(1), n_steps_each=3,
                                                return_trajectory=True, denoise=False)
  assert levels.shape == (20, 8, 2)
  np.testing.assert_array_equal(levels[-1], y)


def test_options_are_validated():
  sde = sde_lib.VPSDE(N=100)
  score_fn = MIXTURE.score_fn(sde)
  with pytest.raises(ValueError, match="'euler_maruyama', 'reverse_diffusion', 'ancestral', 'none'"):
    pc.pc_sample_loop(score_fn, sde, (2, 2), jax.random.PRNGKey(0), predictor="heun")
  with pytest.raises(ValueError, match="'langevin', 'none'"):
    pc.pc_sample_loop(score_fn, sde, (2, 2), jax.random.PRNGKey(0), corrector="ald")
  with pytest.raises(ValueError, match="N=100 steps"):
    pc.pc_sample_loop(score_fn, sde, (2, 2), jax.random.PRNGKey(0), predictor="ancestral", num_steps=50)
  with pytest.raises(ValueError, match="snr > 0"):
    pc.pc_sample_loop(score_fn, sde, (2, 2), jax.random.PRNGKey(0), snr=0.0)
  with pytest.raises(ValueError, match="'reverse_diffusion' or 'euler_maruyama'"):
    pc.pc_sample_loop(MIXTURE.score_fn(sde_lib.subVPSDE(N=100)), sde_lib.subVPSDE(N=100), (2, 2),
                      jax.random.PRNGKey(0), predictor="ancestral")
  with pytest.raises(ValueError, match="'uniform', 'prior'"):
    langevin.annealed_langevin_sample(score_fn, sde, (2, 2), jax.random.PRNGKey(0), init="gaussian")
  np.testing.assert_allclose(pc.sampling_times(sde, 5), np.linspace(1, 0.01, 5))
  np.testing.assert_allclose(pc.sampling_times(sde_lib.VESDE(N=5)), [1, 0.75, 0.5, 0.25, 0])


def test_registry_dispatch_on_a_schedule_and_on_an_sde():
  """samplers.sample(sampler="pc" / "annealed_langevin") equals the direct calls: on a DDPM schedule
  through its PiecewiseVPSDE with int steps, on an SDE with the fractional step; a DDPM-only
  sampler refuses an SDE."""
  sched = schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear", 100))
  eps_fn, key, shape = MIXTURE.eps_model_fn(sched), jax.random.PRNGKey(4), (64, 2)
  got = samplers.sample(eps_fn, sched, shape, key, sampler="pc", predictor="ancestral", corrector="none")
  pw = sde_lib.PiecewiseVPSDE.from_schedule(sched)
  direct = pc.pc_sample_loop(sde_lib.score_fn_from_model(eps_fn, pw), pw, shape, key,
                             predictor="ancestral", corrector="none")
  np.testing.assert_allclose(got, direct, atol=1e-6)
  np.testing.assert_allclose(got, ancestral.p_sample_loop(eps_fn, sched, shape, key, clip_denoised=False),
                             atol=1e-4)
  ve = sde_lib.VESDE(sigma_min=0.02, sigma_max=2.0, N=5)
  seen = []

  def x0_fn(x, u):  # a continuous-time x0 model: it sees the fractional step
    seen.append(u.dtype)
    return MIXTURE.perturbed_posterior_mean(x, jnp.ones_like(u), ve.sigma(u / 4.0))

  got = samplers.sample(x0_fn, ve, shape, key, sampler="annealed_langevin", mean_type="x0",
                        n_steps_each=3, step_size=2e-4)
  direct = langevin.annealed_langevin_sample(
      sde_lib.score_fn_from_model(x0_fn, ve, prediction="x0", time_input="continuous"), ve, shape, key,
      n_steps_each=3, step_size=2e-4)
  np.testing.assert_allclose(got, direct, atol=1e-6)
  assert seen[0] == jnp.float32
  with pytest.raises(ValueError, match="'pc', 'annealed_langevin'"):
    samplers.sample(x0_fn, ve, shape, key, sampler="ddim", num_steps=5)
  with pytest.raises(ValueError, match="n_steps_each"):
    samplers.sample(x0_fn, ve, shape, key, sampler="annealed_langevin", num_steps=5)
  with pytest.raises(ValueError, match="mean_type='mean'"):
    samplers.sample(eps_fn, sched, shape, key, sampler="pc", mean_type="mean")
