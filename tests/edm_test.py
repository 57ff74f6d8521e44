"""EDM's Heun and stochastic samplers against diffusers' HeunDiscreteScheduler, a float64 numpy
Algorithm 2 written here from the paper, and the exact probability-flow ODE of a Gaussian mixture."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import HeunDiscreteScheduler

from bench.samplers import continuous_eps_fn, continuous_model_fn, exact_pf_ode, mixture_denoiser64
from diffusion_jax import schedules
from diffusion_jax.gaussian_mixture import GaussianMixture
from diffusion_jax.samplers import edm
from transforms import assert_jit_and_pmap_agree

T = 1000
SHAPE = (4, 4, 2, 2)
WEIGHTS, STDS = [0.3, 0.7], [0.1, 0.2]


def _betas():
  """The schedule's betas as it stores them (float32), in float64."""
  return schedules.get_beta_schedule("linear", T).astype(np.float32).astype(np.float64)


def _schedule():
  return schedules.DiffusionSchedule.from_betas(_betas())


def _mixture():
  means = np.random.default_rng(0).uniform(-0.8, 0.8, (2,) + SHAPE[1:])
  return GaussianMixture.create(WEIGHTS, means, STDS), means.reshape(2, -1)


def _sigma64(num_steps, rho=7.0):
  """Eq. 5 of Karras et al., written out: sigma_i = (max^(1/rho) + i/(N-1) (min^(1/rho) - max^(1/rho)))^rho."""
  abar = np.cumprod(1 - _betas())
  s_min, s_max = np.sqrt((1 - abar[0]) / abar[0]), np.sqrt((1 - abar[-1]) / abar[-1])
  i = np.arange(num_steps)
  ramp = i / (num_steps - 1)
  return np.append((s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho, 0.0)


def test_grid_is_eq5_and_the_model_sees_the_matching_timestep():
  sched = _schedule()
  sigmas = edm.edm_sigmas(sched, 18)
  np.testing.assert_allclose(sigmas, _sigma64(18), rtol=1e-12)
  alpha, model_t = edm.vp_points(sched, sigmas)
  assert np.isnan(model_t[-1]) and alpha[-1] == 1.0
  np.testing.assert_allclose(model_t[[0, -2]], [T - 1, 0], atol=1e-9)
  # abar at the model's (float) timestep, log abar interpolated linearly between steps, is the
  # VP level of sigma: abar = 1 / (1 + sigma^2).
  log_abar = np.log(np.cumprod(1 - _betas()))
  abar_at_t = np.exp(np.interp(model_t[:-1], np.arange(T), log_abar))
  np.testing.assert_allclose(abar_at_t, 1 / (1 + sigmas[:-1] ** 2), rtol=1e-12)
  np.testing.assert_allclose(alpha[:-1] ** 2, abar_at_t, rtol=1e-12)
  assert edm.num_function_evals(18) == 35
  with pytest.raises(ValueError, match="sigma_min"):
    edm.edm_sigmas(sched, 10, sigma_min=1e-3)          # below the schedule's step-0 level
  with pytest.raises(ValueError, match="num_steps"):
    edm.edm_sigmas(sched, 0)


def _count_model_calls(model_fn):
  calls = []
  def counted(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return model_fn(x, t)
  return counted, calls


@pytest.mark.parametrize("num_steps", [1, 5])
def test_nfe_is_2n_minus_1(num_steps):
  sched, (mixture, _) = _schedule(), _mixture()
  for fn in (edm.heun_sample, lambda *a, **k: edm.stochastic_sample(*a, s_churn=10.0, **k)):
    model, calls = _count_model_calls(continuous_eps_fn(mixture, sched))
    jax.block_until_ready(fn(model, sched, SHAPE, jax.random.PRNGKey(0), num_steps=num_steps))
    assert len(calls) == edm.num_function_evals(num_steps) == 2 * num_steps - 1


def _diffusers_sigma_oracle(mixture):
  """The mixture's eps at diffusers' noise level for a (float) t: log sigma linear in t."""
  abar = np.cumprod(1 - _betas())
  log_sigmas = np.log(np.sqrt((1 - abar) / abar))
  def eps(x, t):
    sigma = np.exp(np.interp(float(t), np.arange(T), log_sigmas))
    a = 1.0 / (1.0 + sigma**2)
    x = jnp.asarray(x)
    return (x - np.sqrt(a) * mixture.posterior_mean(x, jnp.full((x.shape[0],), a, jnp.float32))) / np.sqrt(1 - a)
  return eps


@pytest.mark.parametrize("num_steps", [4, 18])
def test_heun_matches_diffusers_heun_scheduler(num_steps):
  # diffusers maps sigma to the model's timestep with log sigma linear in t, we with log alpha
  # linear in t; each oracle evaluates the exact eps at the sigma its sampler meant, so the two
  # runs integrate the same ODE on the same Karras grid with the same Heun steps.
  sched, (mixture, _) = _schedule(), _mixture()
  x_T = jax.random.normal(jax.random.PRNGKey(3), SHAPE)
  ref_sched = HeunDiscreteScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02,
                                    beta_schedule="linear", use_karras_sigmas=True)
  # Its float32 cumprod puts sigma_min 8e-5 off; give it the float64 alpha-bars we use.
  ref_sched.alphas_cumprod = torch.from_numpy(np.cumprod(1 - _betas()))
  ref_sched.set_timesteps(num_steps)
  assert len(ref_sched.timesteps) == edm.num_function_evals(num_steps)
  oracle = _diffusers_sigma_oracle(mixture)
  # Start from the same x_T in VP coordinates (its init_noise_sigma is EDM's sigma_max instead).
  x = torch.from_numpy(np.array(x_T)) * (1 + ref_sched.sigmas[0] ** 2) ** 0.5
  for t in ref_sched.timesteps:
    eps = oracle(ref_sched.scale_model_input(x, t).numpy(), t)
    x = ref_sched.step(torch.from_numpy(np.array(eps)), t, x).prev_sample
  ours = edm.heun_sample(continuous_eps_fn(mixture, sched), sched, SHAPE, jax.random.PRNGKey(0),
                         num_steps=num_steps, x_T=x_T)
  err = np.abs(np.asarray(ours) - x.numpy())
  # float32 arithmetic on y = x / alpha, which starts at |y| ~ 157 * |x_T|.
  assert err.max() < 2e-5, err.max()


def _algorithm2_float64(means, x_T, noise, num_steps, s_churn, s_tmin, s_tmax, s_noise):
  """EDM Algorithm 2 in float64 with the exact denoiser in (y, sigma) coordinates."""
  sig = _sigma64(num_steps)
  y = x_T.reshape(SHAPE[0], -1) * np.sqrt(1 + sig[0] ** 2)
  denoise = lambda y, s: mixture_denoiser64(np.array(WEIGHTS), means, np.array(STDS), y, s)
  for i in range(num_steps):
    gamma = min(s_churn / num_steps, np.sqrt(2) - 1) if s_tmin <= sig[i] <= s_tmax else 0.0
    s_hat = min(sig[i] * (1 + gamma), sig[0])
    y_hat = y + np.sqrt(s_hat**2 - sig[i] ** 2) * s_noise * noise[i].reshape(y.shape)
    d = (y_hat - denoise(y_hat, s_hat)) / s_hat
    y = y_hat + (sig[i + 1] - s_hat) * d
    if sig[i + 1] != 0:
      d_prime = (y - denoise(y, sig[i + 1])) / sig[i + 1]
      y = y_hat + (sig[i + 1] - s_hat) * (0.5 * d + 0.5 * d_prime)
  return y.reshape(SHAPE)


@pytest.mark.parametrize("s_churn,s_tmin,s_tmax,s_noise", [(40.0, 0.05, 50.0, 1.003), (80.0, 0.0, np.inf, 1.0)])
def test_stochastic_matches_float64_algorithm2(s_churn, s_tmin, s_tmax, s_noise):
  sched, (mixture, means) = _schedule(), _mixture()
  key, num_steps = jax.random.PRNGKey(5), 12
  x_T = np.asarray(jax.random.normal(jax.random.split(key)[0], SHAPE), np.float64)   # documented draws
  noise = [np.asarray(jax.random.normal(jax.random.fold_in(jax.random.split(key)[1], i), SHAPE), np.float64)
           for i in range(num_steps)]
  ref = _algorithm2_float64(means, x_T, noise, num_steps, s_churn, s_tmin, s_tmax, s_noise)
  ours = edm.stochastic_sample(continuous_eps_fn(mixture, sched), sched, SHAPE, key, num_steps=num_steps,
                               s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
  assert np.abs(np.asarray(ours) - ref).max() < 5e-5
  heun = edm.heun_sample(continuous_eps_fn(mixture, sched), sched, SHAPE, key, num_steps=num_steps)
  assert np.abs(np.asarray(ours) - np.asarray(heun)).max() > 1e-2   # the churn did something


def test_stochastic_without_churn_equals_heun():
  sched, (mixture, _) = _schedule(), _mixture()
  model, key = continuous_eps_fn(mixture, sched), jax.random.PRNGKey(1)
  heun = edm.heun_sample(model, sched, SHAPE, key, num_steps=10)
  for kwargs in (dict(s_churn=0.0, s_noise=1.007),
                 dict(s_churn=50.0, s_tmin=1e3, s_tmax=1e4)):          # churn window holds no sigma
    np.testing.assert_array_equal(edm.stochastic_sample(model, sched, SHAPE, key, num_steps=10, **kwargs), heun)


def test_heun_is_second_order():
  """Error of the state at sigma_min (before the final Euler jump) against the exact ODE solution."""
  sched, (mixture, means) = _schedule(), _mixture()
  x_T = jax.random.normal(jax.random.PRNGKey(11), SHAPE)
  abar = np.cumprod(1 - _betas())
  ref = exact_pf_ode(WEIGHTS, means, STDS, np.asarray(x_T, np.float64).reshape(SHAPE[0], -1),
                     abar[-1], abar[0]).reshape(SHAPE)
  steps = np.array([16, 32, 64])
  errs = []
  for n in steps:
    _, traj = edm.heun_sample(continuous_eps_fn(mixture, sched), sched, SHAPE, jax.random.PRNGKey(0),
                              num_steps=int(n), x_T=x_T, return_trajectory=True)
    errs.append(float(np.sqrt(np.mean((np.asarray(traj.x[-2]) - ref) ** 2))))
  slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
  # Measured: errors 3.3e-2, 7.0e-3, 1.7e-3 (slope 2.15).
  assert 1.8 < slope < 2.5, (errs, slope)


def test_mean_types_agree():
  sched, (mixture, _) = _schedule(), _mixture()
  eps_fn = continuous_eps_fn(mixture, sched)
  key = jax.random.PRNGKey(2)
  ref = edm.heun_sample(eps_fn, sched, SHAPE, key, num_steps=8)
  for kind in ("x0", "v", "score"):
    out = edm.heun_sample(continuous_model_fn(mixture, sched, kind), sched, SHAPE, key, num_steps=8,
                          mean_type=kind)
    np.testing.assert_allclose(out, ref, atol=2e-4, err_msg=kind)
  with pytest.raises(ValueError, match="mean_type"):
    edm.heun_sample(eps_fn, sched, SHAPE, key, num_steps=8, mean_type="mean")


def test_jit_and_pmap_agree():
  sched, (mixture, _) = _schedule(), _mixture()
  model = continuous_eps_fn(mixture, sched)
  x_T = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
  assert_jit_and_pmap_agree(
      lambda x: edm.stochastic_sample(model, sched, SHAPE, jax.random.PRNGKey(2), num_steps=6,
                                      s_churn=20.0, x_T=x), x_T)
