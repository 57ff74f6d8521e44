"""The probability-flow ODE sampler (diffrax) against closed forms: Gaussian data, whose PF-ODE map
is affine, and the float64 scipy solution of the Gaussian-mixture ODE (bench.samplers.exact_pf_ode)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.samplers import continuous_eps_fn, continuous_model_fn, exact_pf_ode
from diffusion_jax import schedules, sde as sde_lib
from diffusion_jax.gaussian_mixture import GaussianMixture
from diffusion_jax.samplers import grids, ode
from transforms import assert_jit_and_pmap_agree

T = 1000
SHAPE = (4, 2, 2, 2)
MU, S = 0.3, 0.4          # Gaussian data x0 ~ N(MU, S^2 I)


def _schedule():
  return schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear", T))


def _abar64():
  return np.cumprod(1 - schedules.get_beta_schedule("linear", T).astype(np.float32).astype(np.float64))


def _gaussian_eps_on_schedule(schedule):
  """eps(x, u) of Gaussian data at fractional DDPM step u (log alpha-bar linear between steps)."""
  def eps(x, u):
    abar = grids.alphas_cumprod_at(schedule, u).reshape(-1, 1, 1, 1)
    a, sigma = jnp.sqrt(abar), jnp.sqrt(1 - abar)
    return sigma * (x - a * MU) / (abar * S**2 + 1 - abar)
  return eps


def _gaussian_score_on_sde(sde):
  """score(x, step) of Gaussian data for a model whose time input is sde.time_to_step(t)."""
  def score(x, step):
    a, sigma = sde.marginal_coefs(sde.step_to_time(step))
    a, sigma = a.reshape(-1, 1, 1, 1), sigma.reshape(-1, 1, 1, 1)
    return -(x - a * MU) / (a**2 * S**2 + sigma**2)
  return score


CASES = {"ddpm_schedule": lambda: (_schedule(), _gaussian_eps_on_schedule(_schedule()), "eps"),
         "vp": lambda: (sde_lib.VPSDE(), _gaussian_score_on_sde(sde_lib.VPSDE()), "score"),
         "ve": lambda: (sde_lib.VESDE(sigma_max=20.0), _gaussian_score_on_sde(sde_lib.VESDE(sigma_max=20.0)), "score")}


@pytest.mark.parametrize("case", list(CASES))
def test_gaussian_data_pf_ode_is_the_affine_map(case):
  # Along the PF-ODE of Gaussian data the standardized state (x - a MU) / sqrt(a^2 S^2 + sigma^2)
  # is constant, so x(t_min) is an affine function of x(1).
  process, model, mean_type = CASES[case]()
  sde = ode.as_sde(process)
  x_T = sde.prior_sampling(jax.random.PRNGKey(0), SHAPE)
  x, stats = ode.ode_sample(model, process, SHAPE, None, mean_type=mean_type, x_T=x_T, rtol=1e-6,
                            atol=1e-6, denoise=False, return_stats=True)
  t_min = ode.default_t_min(sde)
  (a1, s1), (a0, s0) = sde.marginal_coefs(1.0), sde.marginal_coefs(t_min)
  v1, v0 = a1**2 * S**2 + s1**2, a0**2 * S**2 + s0**2
  expected = a0 * MU + jnp.sqrt(v0 / v1) * (x_T - a1 * MU)
  scale = float(jnp.max(jnp.abs(x_T)))
  np.testing.assert_allclose(x, expected, atol=1e-5 * max(scale, 1.0), rtol=0)
  assert 10 < int(stats.nfe) < 1000, stats.as_dict()


def test_log_snr_vp_sde_is_the_schedule_and_consistent():
  sched = _schedule()
  sde = ode.LogSNRVPSDE.from_schedule(sched)
  steps = jnp.array([0.0, 1.0, 10.0, 500.0, 998.0, 999.0])
  t = sde.step_to_time(steps)
  np.testing.assert_allclose(t[jnp.array([0, -1])], [0.0, 1.0], atol=1e-7)
  np.testing.assert_allclose(sde.time_to_step(t), steps, atol=2e-3)
  a, sigma = sde.marginal_coefs(t)
  np.testing.assert_allclose(a**2, _abar64()[steps.astype(int)], rtol=2e-6)
  np.testing.assert_allclose(a**2 + sigma**2, 1.0, rtol=1e-6)
  # Closed forms in float64: lambda linear in t between its step-0 and step-(T-1) values,
  # a^2 = sigmoid(2 lambda), and beta = -d log a^2 / dt (so that f = -beta x / 2, g^2 = beta
  # generate these marginals).
  lam_0, lam_1 = [0.5 * np.log(_abar64()[n] / (1 - _abar64()[n])) for n in (0, -1)]
  times = np.linspace(0.0, 1.0, 7)
  lam = lam_0 + times * (lam_1 - lam_0)
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  a, sigma = sde.marginal_coefs(jnp.asarray(times, jnp.float32))
  np.testing.assert_allclose(a, np.sqrt(sigmoid(2 * lam)), rtol=1e-6)
  np.testing.assert_allclose(sigma, np.sqrt(sigmoid(-2 * lam)), rtol=2e-6)
  f, g = sde.sde(jnp.ones((7, 1)), jnp.asarray(times, jnp.float32))
  beta = 2 * (lam_0 - lam_1) * sigmoid(-2 * lam)
  np.testing.assert_allclose(jnp.square(g[:, 0]), beta, rtol=1e-5)
  np.testing.assert_allclose(f[:, 0], -0.5 * beta, rtol=1e-5)
  with pytest.raises(ValueError, match="respaced"):
    ode.LogSNRVPSDE.from_schedule(schedules.respace(sched, np.arange(0, T, 10))[0])


def _mixture():
  means = np.random.default_rng(0).uniform(-0.8, 0.8, (2,) + SHAPE[1:])
  return GaussianMixture.create([0.3, 0.7], means, [0.1, 0.2]), means.reshape(2, -1)


def test_mixture_matches_the_reference_ode_solution():
  sched, (mixture, means) = _schedule(), _mixture()
  x_T = jax.random.normal(jax.random.PRNGKey(3), SHAPE)
  abar = _abar64()
  ref = exact_pf_ode([0.3, 0.7], means, [0.1, 0.2], np.asarray(x_T, np.float64).reshape(SHAPE[0], -1),
                     abar[-1], abar[0]).reshape(SHAPE)
  errs = {}
  for tol in (1e-3, 1e-7):
    x, stats = ode.ode_sample(continuous_eps_fn(mixture, sched), sched, SHAPE, None, x_T=x_T, rtol=tol,
                              atol=tol, denoise=False, return_stats=True)
    errs[tol] = (float(np.sqrt(np.mean((np.asarray(x) - ref) ** 2))), int(stats.nfe))
  # Measured: RMS 2.1e-3 at 1e-3 (73 NFE), 2.4e-6 at 1e-7 (511 NFE).
  assert errs[1e-7][0] < 1e-5 and errs[1e-3][0] > 10 * errs[1e-7][0], errs
  assert errs[1e-3][1] < errs[1e-7][1], errs


def _counted(model_fn):
  calls = []
  def counted(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return model_fn(x, t)
  return counted, calls


@pytest.mark.parametrize("solver", ["tsit5", "heun", "dopri8"])
def test_nfe_counts_the_model_calls(solver):
  sched, (mixture, _) = _schedule(), _mixture()
  model, calls = _counted(continuous_eps_fn(mixture, sched))
  seen = []
  x, stats = ode.ode_sample(model, sched, SHAPE, jax.random.PRNGKey(0), solver=solver, rtol=1e-3,
                            atol=1e-3, return_stats=True, stats_callback=seen.append)
  jax.block_until_ready(x)
  assert len(calls) == int(stats.nfe), (len(calls), stats.as_dict())   # denoise's call included
  assert int(stats.num_steps) == int(stats.num_accepted_steps) + int(stats.num_rejected_steps)
  assert len(seen) == 1 and seen[0].as_dict() == stats.as_dict()


def test_mean_types_agree():
  sched, (mixture, _) = _schedule(), _mixture()
  eps_fn = continuous_eps_fn(mixture, sched)
  # The ODE sees only the score; every parameterization must give the same one.
  sde, ref = ode.score_fn_for(eps_fn, sched)
  x = jax.random.normal(jax.random.PRNGKey(4), SHAPE)
  t = jnp.array([0.0, 0.3, 0.7, 1.0])
  for kind in ("x0", "v", "score"):
    _, score_fn = ode.score_fn_for(continuous_model_fn(mixture, sched, kind), sched, mean_type=kind)
    np.testing.assert_allclose(score_fn(x, t), ref(x, t), rtol=2e-4, atol=1e-4, err_msg=kind)


def test_options_are_validated():
  sched = _schedule()
  model = lambda x, t: jnp.zeros_like(x)
  with pytest.raises(ValueError, match="solver=.*tsit5"):
    ode.ode_sample(model, sched, SHAPE, jax.random.PRNGKey(0), solver="rk45")
  with pytest.raises(ValueError, match="mean_type"):
    ode.ode_sample(model, sched, SHAPE, jax.random.PRNGKey(0), mean_type="mean")
  with pytest.raises(ValueError, match="t_min"):
    ode.ode_sample(model, sched, SHAPE, jax.random.PRNGKey(0), t_min=1.0)
  with pytest.raises(TypeError, match="process"):
    ode.ode_sample(model, np.ones(T), SHAPE, jax.random.PRNGKey(0))


def test_jit_and_pmap_agree():
  sched, (mixture, _) = _schedule(), _mixture()
  model = continuous_eps_fn(mixture, sched)
  x_T = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
  assert_jit_and_pmap_agree(
      lambda x: ode.ode_sample(model, sched, SHAPE, None, x_T=x, rtol=1e-4, atol=1e-4), x_T)
