"""Analytic-DPM against float64 closed forms (Gaussian data) and its claims on a Gaussian mixture."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import losses, schedules
from diffusion_jax.gaussian_mixture import GaussianMixture
from diffusion_jax.samplers import analytic, ddim

T = 1000
BETAS = schedules.get_beta_schedule("linear", T)
ABAR = np.cumprod(1 - BETAS)


def _schedule():
  return schedules.DiffusionSchedule.from_betas(BETAS)


def test_eps_mean_square_matches_gaussian_closed_form():
  # Data N(mu, s^2 I): eps*(x_n) = sqrt(1 - abar)(x_n - sqrt(abar) mu) / (abar s^2 + 1 - abar), so
  # Gamma_n = E||eps*||^2 / d = (1 - abar) / (abar s^2 + 1 - abar).
  s, mu = 0.3, 0.2
  gauss = GaussianMixture.create([1.0], np.full((1, 4, 4, 2), mu), [s])
  sched = _schedule()
  x0, _ = gauss.sample(jax.random.PRNGKey(0), 2048)
  steps = np.array([0, 10, 100, 400, 999])
  ms = analytic.eps_mean_square(gauss.eps_model_fn(sched), sched, x0, jax.random.PRNGKey(1),
                                timesteps=steps, batch_size=1024)
  expected = (1 - ABAR[steps]) / (ABAR[steps] * s**2 + 1 - ABAR[steps])
  # Monte Carlo with 2048 x 32 values of a scaled chi-square: relative std ~ sqrt(2 / 65536).
  np.testing.assert_allclose(ms[steps], expected, rtol=0.02)
  assert np.all(np.isnan(np.delete(ms, steps)))


@pytest.mark.parametrize("num_steps", [10, 100])
def test_optimal_variance_equals_true_reverse_variance_for_gaussian_data(num_steps):
  # For Gaussian data q(x_s | x_n) is Gaussian; its variance is the optimal DDPM-type variance.
  s = 0.3
  grid = ddim.resolve_timesteps(_schedule(), num_steps, None)
  gamma = np.full(T, np.nan)
  gamma[grid] = (1 - ABAR[grid]) / (ABAR[grid] * s**2 + 1 - ABAR[grid])   # exact Gamma
  sigma2, lambda2 = analytic.analytic_variance(_schedule(), gamma, grid, eta=1.0)
  a_n, a_s = ABAR[grid[:-1]], ABAR[grid[1:]]
  var_s, var_n = a_s * s**2 + 1 - a_s, a_n * s**2 + 1 - a_n
  cov = np.sqrt(a_s * a_n) * s**2 + np.sqrt(a_n / a_s) * (1 - a_s)   # Cov(x_s, x_n) per dim
  np.testing.assert_allclose(sigma2[:-1], var_s - cov**2 / var_n, rtol=1e-6)
  # The last entry is Var[x_0 | x_{tau_1}].
  var_x0 = s**2 * (1 - ABAR[0]) / (ABAR[0] * s**2 + 1 - ABAR[0])
  np.testing.assert_allclose(sigma2[-1], var_x0, rtol=1e-6)
  np.testing.assert_allclose(lambda2[:-1], (1 - a_s) / (1 - a_n) * (1 - a_n / a_s), rtol=1e-6)


def test_clipping_bounds():
  grid = ddim.resolve_timesteps(_schedule(), 10, None)
  # Gamma = 0 gives Var[x_0 | x_n] = (1 - abar) / abar, clipped to the data-range bound 1;
  # Gamma = 1 gives lambda^2.
  hi, lam2 = analytic.analytic_variance(_schedule(), np.zeros(T), grid, eta=1.0)
  lo, _ = analytic.analytic_variance(_schedule(), np.ones(T), grid, eta=1.0)
  np.testing.assert_allclose(lo, lam2)
  a_n, a_s = ABAR[grid], np.append(ABAR[grid[1:]], 1.0)
  coef = np.sqrt(a_s) - np.sqrt(1 - a_s - lam2) * np.sqrt(a_n / (1 - a_n))   # x0 weight of the mean
  np.testing.assert_allclose(hi, lam2 + coef**2 * np.minimum((1 - a_n) / a_n, 1.0), rtol=1e-6)
  clipped, _ = analytic.analytic_variance(_schedule(), np.zeros(T), grid, eta=0.0, clip_last_steps=2)
  bound = (2 * 2 / 255 * np.sqrt(np.pi / 2)) ** 2
  assert np.all(clipped[-3:-1] <= bound) and clipped[-4] > bound


@pytest.mark.slow
def test_variance_between_ddpm_bounds_and_vlb_beats_both_on_mixture():
  rng = np.random.default_rng(0)
  shape = (4, 4, 3)
  mixture = GaussianMixture.create([0.2, 0.3, 0.5], rng.uniform(-0.6, 0.6, (3,) + shape), [0.15, 0.25, 0.1])
  sched = _schedule()
  eps_fn = mixture.eps_model_fn(sched)
  data, _ = mixture.sample(jax.random.PRNGKey(1), 640)
  data = jnp.clip(jnp.round((data + 1) * 127.5) / 127.5 - 1, -1, 1)   # 8-bit, for the decoder term
  for k in (10, 100):
    grid = ddim.resolve_timesteps(sched, k, None)
    ms = analytic.eps_mean_square(eps_fn, sched, data[128:], jax.random.PRNGKey(2), timesteps=grid)
    sigma2, _ = analytic.analytic_variance(sched, ms, grid, eta=1.0)
    sub, _ = schedules.respace(BETAS, grid)
    small = np.asarray(sub.posterior_variance, np.float64)[::-1][:-1]   # beta-tilde (fixedsmall)
    large = np.asarray(sub.betas, np.float64)[::-1][:-1]                # beta (fixedlarge)
    assert np.all(sigma2[:-1] >= small * (1 - 1e-6))
    # At the noisiest steps Var[x_0 | x_n] hits the data-range clip, which sits a factor
    # 1 / (1 - abar_n) ~ 1 + 1e-5 above beta_n.
    assert np.all(sigma2[:-1] <= large * (1 + 1e-4))
    log_var = np.zeros(T)
    log_var[grid] = np.log(sigma2)
    log_var[grid[-1]] = float(sub.posterior_log_variance_clipped[0])   # same decoder for all
    bpd = {}
    for name, fn, var_type in (("large", eps_fn, "fixedlarge"), ("small", eps_fn, "fixedsmall"),
                               ("analytic", analytic.with_log_variance(eps_fn, log_var), "learned")):
      bpd[name] = float(jnp.mean(losses.calc_bpd_loop(fn, sub, data[:128], jax.random.PRNGKey(3),
                                                      var_type=var_type).total_bpd))
    # Measured: K=10: 6.47 / 7.51 / 156; K=100: 6.31 / 6.48 / 17.9 (analytic / large / small).
    assert bpd["analytic"] < bpd["large"] - 0.1 and bpd["analytic"] < bpd["small"], (k, bpd)


def test_sampler_reduces_to_ddim_when_variance_is_the_base_one():
  # Gamma = 1 makes Var[x_0 | x_n] = 0, so sigma* = lambda: the DDPM-type sampler is DDIM eta = 1
  # (same key, same draws).
  rng = np.random.default_rng(1)
  mixture = GaussianMixture.create([0.5, 0.5], rng.uniform(-0.5, 0.5, (2, 4, 4, 1)), [0.2, 0.1])
  sched = _schedule()
  eps_fn = mixture.eps_model_fn(sched)
  shape, key = (3, 4, 4, 1), jax.random.PRNGKey(4)
  a = analytic.analytic_sample_loop(eps_fn, sched, shape, key, ms_eps=np.ones(T), num_steps=10,
                                    eta=1.0, clip_last_steps=0)
  np.testing.assert_allclose(a, ddim.ddim_sample_loop(eps_fn, sched, shape, key, num_steps=10, eta=1.0),
                             atol=1e-5)
  b = ddim.ddim_sample_loop(eps_fn, sched, shape, key, num_steps=10, eta=0.0)
  # With the estimated Gamma the DDIM-type sampler adds noise (sigma* > 0), the DDIM one does not.
  c = analytic.analytic_sample_loop(eps_fn, sched, shape, key, ms_eps=np.full(T, 0.5), num_steps=10,
                                    eta=0.0)
  assert float(jnp.max(jnp.abs(c - b))) > 1e-3
