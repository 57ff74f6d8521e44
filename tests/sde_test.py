"""The SDEs of Song et al. 2021 against float64 references written here from the paper.

References: the moment ODEs of a linear SDE (dm/dt = -beta m / 2, dv/dt = -beta v + g^2) solved
numerically by scipy; Gaussian data x0 ~ N(mu, s^2 I), whose perturbed density is
N(a mu, (a^2 s^2 + sigma^2) I) in closed form; scipy densities; DDPM's schedules.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from diffusion_jax import schedules, sde as sde_lib
from diffusion_jax.gaussian_mixture import GaussianMixture

TIMES = np.array([1e-5, 0.01, 0.1, 0.37, 0.5, 0.9, 1.0])


def _beta(t, b0=0.1, b1=20.0):
  return b0 + t * (b1 - b0)


def _moments_ode(beta, g2, t_end, v0=0.0):
  """Mean coefficient a(t) and variance v(t) of x(t) | x(0) from the moment ODEs (float64)."""
  sol = integrate.solve_ivp(lambda t, y: [-0.5 * beta(t) * y[0], -beta(t) * y[1] + g2(t)],
                            (0.0, t_end), [1.0, v0], rtol=1e-11, atol=1e-13)
  return sol.y[0, -1], sol.y[1, -1]


def _int_beta(t):
  return 0.1 * t + 0.5 * 19.9 * t**2


# Each SDE's beta(t) and g(t)^2 as the paper writes them (Eqs. 9, 11, 12).
PAPER = {
    "vp": (_beta, _beta),
    "subvp": (_beta, lambda t: _beta(t) * (1.0 - np.exp(-2.0 * _int_beta(t)))),
    "ve": (lambda t: 0.0, lambda t: (0.01 * 5000.0**t) ** 2 * 2.0 * np.log(5000.0)),
}
SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.subVPSDE(), "ve": sde_lib.VESDE()}


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_marginal_prob_solves_the_moment_odes(name):
  sde, (beta, g2) = SDES[name], PAPER[name]
  x = jnp.full((len(TIMES), 3), 0.7)
  mean, std = sde.marginal_prob(x, jnp.asarray(TIMES, jnp.float32))
  chex.assert_shape(std, (len(TIMES), 1))
  # VE: the kernel's variance is sigma(t)^2, i.e. the SDE's own variance on top of sigma_min^2.
  v0 = 0.01**2 if name == "ve" else 0.0
  for i, t in enumerate(TIMES):
    a, v = _moments_ode(beta, g2, t, v0)
    np.testing.assert_allclose(mean[i], 0.7 * a, rtol=2e-6)
    np.testing.assert_allclose(std[i, 0], np.sqrt(v), rtol=2e-5)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_sde_coefficients_are_the_papers(name):
  sde, (beta, g2) = SDES[name], PAPER[name]
  x = jnp.asarray(np.random.default_rng(0).standard_normal((len(TIMES), 2, 2)), jnp.float32)
  drift, g = sde.sde(x, jnp.asarray(TIMES, jnp.float32))
  np.testing.assert_allclose(drift, -0.5 * np.array([beta(t) for t in TIMES])[:, None, None] * x, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(g[:, 0, 0], np.sqrt([g2(t) for t in TIMES]), rtol=3e-6)


def _gaussian_score(x, t, sde_name, mu, s):
  """grad log p_t for x0 ~ N(mu, s^2 I): -(x - a mu) / (a^2 s^2 + sigma^2), float64."""
  big_b = _int_beta(t)
  a, var = {"vp": (np.exp(-0.5 * big_b), 1 - np.exp(-big_b)),
            "subvp": (np.exp(-0.5 * big_b), (1 - np.exp(-big_b)) ** 2),
            "ve": (1.0, (0.01 * 5000.0**t) ** 2)}[sde_name]
  return -(x - a * mu) / (a**2 * s**2 + var)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_reverse_sde_drift_is_the_closed_form_on_gaussian_data(name):
  """f - g^2 grad log p_t (and f - g^2/2 grad log p_t for the ODE) with the exact score."""
  sde, (beta, g2) = SDES[name], PAPER[name]
  mu, s = np.array([0.3, -0.5, 0.1]), 0.4
  gaussian = GaussianMixture.create([1.0], [mu], [s])
  rng = np.random.default_rng(1)
  x = rng.standard_normal((len(TIMES), 3)) * 2
  t = jnp.asarray(TIMES, jnp.float32)
  score = np.stack([_gaussian_score(x[i], tt, name, mu, s) for i, tt in enumerate(TIMES)])
  f = -0.5 * np.array([beta(tt) for tt in TIMES])[:, None] * x
  g2s = np.array([g2(tt) for tt in TIMES])[:, None]
  np.testing.assert_allclose(gaussian.score_fn(sde)(jnp.asarray(x, jnp.float32), t), score, rtol=2e-5)
  for flow, coef in ((False, 1.0), (True, 0.5)):
    drift, g = sde.reverse(gaussian.score_fn(sde), probability_flow=flow).sde(jnp.asarray(x, jnp.float32), t)
    # float32 error relative to the size of the two terms (they cancel where x sits at the mode).
    np.testing.assert_array_less(np.abs(drift - (f - coef * g2s * score)),
                                 3e-5 * (np.abs(f) + coef * np.abs(g2s * score)) + 1e-6)
    np.testing.assert_allclose(g[:, 0], 0.0 if flow else np.sqrt(g2s[:, 0]), rtol=3e-6)


def test_mixture_score_is_the_gradient_of_the_log_density():
  """GaussianMixture.perturbed_score against central differences of scipy's log density (float64)."""
  mix = GaussianMixture.create([0.3, 0.7], [[-1.0, 0.5], [0.8, 0.0]], [0.2, 0.5])
  rng = np.random.default_rng(2)
  x = rng.standard_normal((4, 2))
  scale, std = np.array([1.0, 0.9, 0.5, 0.1]), np.array([0.01 * 50, 0.3, 0.8, 3.0])

  def logp(y, a, sd):
    return np.log(sum(w * stats.multivariate_normal(a * np.array(m), (a**2 * s**2 + sd**2) * np.eye(2)).pdf(y)
                      for w, m, s in zip([0.3, 0.7], [[-1.0, 0.5], [0.8, 0.0]], [0.2, 0.5])))

  h = 1e-6
  ref = np.array([[(logp(x[b] + h * e, scale[b], std[b]) - logp(x[b] - h * e, scale[b], std[b])) / (2 * h)
                   for e in np.eye(2)] for b in range(4)])
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  np.testing.assert_allclose(mix.perturbed_score(f32(x), f32(scale), f32(std)), ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(mix.perturbed_log_prob(f32(x), f32(scale), f32(std)),
                             [logp(x[b], scale[b], std[b]) for b in range(4)], rtol=1e-5)
  # Tweedie: a E[x0 | x] - x = std^2 * score.
  tweedie = (scale[:, None] * mix.perturbed_posterior_mean(f32(x), f32(scale), f32(std)) - x) / std[:, None] ** 2
  np.testing.assert_allclose(tweedie, ref, rtol=1e-4, atol=1e-4)


def test_vp_map_of_the_ddpm_linear_schedule():
  """What is exact: VPSDE(0.1, 20, 1000)'s chain IS DDPM's linear 1e-4..0.02 chain; its continuous
  marginal is not DDPM's alpha-bar (prod(1 - beta) != exp(-int beta)), within stated bounds."""
  ddpm_betas = schedules.get_beta_schedule("linear", 1000)
  ddpm = schedules.DiffusionSchedule.from_betas(ddpm_betas)
  vp = sde_lib.VPSDE()
  np.testing.assert_allclose(vp.to_schedule().betas, ddpm.betas, rtol=0, atol=0)
  np.testing.assert_allclose(vp.discrete_alphas_cumprod, ddpm.alphas_cumprod, rtol=1e-6)
  n = jnp.arange(1000)
  a, std = vp.step_marginal_coefs(n)
  np.testing.assert_allclose(a, ddpm.sqrt_alphas_cumprod, rtol=1e-6)
  np.testing.assert_allclose(std, ddpm.sqrt_one_minus_alphas_cumprod, rtol=1e-6)
  # And back: the linear schedule maps onto the same VPSDE (float64 betas: exact).
  back = sde_lib.VPSDE.from_schedule(ddpm_betas)
  assert back.N == 1000 and abs(back.beta_min - 0.1) < 1e-12 and abs(back.beta_max - 20.0) < 1e-12
  assert sde_lib.VPSDE.from_schedule(ddpm).N == 1000
  # The continuous marginal at t_n = (n + 1) / N: close, not exact.
  a_c, std_c = vp.marginal_coefs(vp.step_to_time(n.astype(jnp.float32)))
  dlog = np.abs(2 * np.log(np.asarray(a_c, np.float64)) - np.log(np.asarray(ddpm.alphas_cumprod, np.float64)))
  assert 0.06 < dlog.max() < 0.068
  assert np.max(np.abs(std_c / ddpm.sqrt_one_minus_alphas_cumprod - 1)) < 0.049


def test_piecewise_vp_sde_is_exact_for_any_schedule():
  for name in ("cosine", "quad", "linear"):
    betas = schedules.get_beta_schedule(name, 200)
    sched = schedules.DiffusionSchedule.from_betas(betas)
    pw = sde_lib.PiecewiseVPSDE.from_schedule(sched)
    times = pw.step_to_time(jnp.arange(200, dtype=jnp.float32))
    a, std = pw.marginal_coefs(times)
    keep = slice(0, 199) if name == "cosine" else slice(None)  # cosine's last beta is clipped at 0.999
    np.testing.assert_allclose(jnp.square(a)[keep], sched.alphas_cumprod[keep], rtol=2e-5)
    np.testing.assert_allclose(std, sched.sqrt_one_minus_alphas_cumprod, rtol=2e-5)
    np.testing.assert_allclose(pw.to_schedule().alphas_cumprod, sched.alphas_cumprod, rtol=1e-6)
    # beta(t) is -d log a^2 / dt: central differences inside each interval.
    mid = (jnp.arange(200, dtype=jnp.float32) + 0.5) / 200
    h = 0.2 / 200
    log_a2 = lambda t: 2 * jnp.log(pw.marginal_coefs(t)[0])  # noqa: E731
    rates = -(log_a2(mid + h) - log_a2(mid - h)) / (2 * h)
    np.testing.assert_allclose(rates[keep], -200 * np.log1p(-betas)[keep], rtol=2e-3)
    np.testing.assert_allclose(pw.beta(mid), -200 * np.log1p(-betas), rtol=3e-6)
  with pytest.raises(ValueError, match="not linear"):
    sde_lib.VPSDE.from_schedule(schedules.get_beta_schedule("cosine", 100))
  respaced, _ = schedules.respace(schedules.get_beta_schedule("linear", 100), [0, 50, 99])
  with pytest.raises(ValueError, match="respaced"):
    sde_lib.PiecewiseVPSDE.from_schedule(respaced)


def test_step_conventions_and_discretizations():
  vp, ve = sde_lib.VPSDE(N=1000), sde_lib.VESDE(sigma_min=0.02, sigma_max=2.0, N=10)
  n = np.arange(1000)
  np.testing.assert_array_equal(vp.step_index(jnp.asarray((n + 1) / 1000, jnp.float32)), n)
  np.testing.assert_allclose(vp.step_times(), (n + 1) / 1000, rtol=1e-15)
  # VE: the N levels are NCSN's geometric sequence and sigma(t_n) hits them.
  levels = np.geomspace(0.02, 2.0, 10)
  np.testing.assert_allclose(ve.discrete_sigmas, levels, rtol=1e-6)
  np.testing.assert_allclose(ve.marginal_coefs(jnp.asarray(ve.step_times(), jnp.float32))[1], levels, rtol=2e-6)
  np.testing.assert_array_equal(ve.step_index(jnp.asarray(ve.step_times(), jnp.float32)), np.arange(10))
  x = jnp.ones((10, 2))
  f, big_g = ve.discretize(x, jnp.asarray(ve.step_times(), jnp.float32))
  np.testing.assert_array_equal(f, 0.0)
  np.testing.assert_allclose(big_g[:, 0] ** 2, levels**2 - np.append(0.0, levels[:-1]) ** 2, rtol=1e-5)
  # VP: DDPM's forward step x_n = sqrt(1 - beta_n) x_{n-1} + sqrt(beta_n) z.
  betas = schedules.get_beta_schedule("linear", 1000)
  t = jnp.asarray([1e-3, 0.5, 1.0], jnp.float32)
  f, big_g = vp.discretize(jnp.ones((3, 2)), t)
  idx = [0, 499, 999]
  np.testing.assert_allclose(f[:, 0], np.sqrt(1 - betas[idx]) - 1, rtol=1e-5)
  np.testing.assert_allclose(big_g[:, 0], np.sqrt(betas[idx]), rtol=1e-6)
  # sub-VP: Euler-Maruyama over dt = 1/N.
  sub = sde_lib.subVPSDE()
  f, big_g = sub.discretize(jnp.ones((3, 2)), t)
  drift, g = sub.sde(jnp.ones((3, 2)), t)
  np.testing.assert_allclose(f, drift / 1000, rtol=1e-6)
  np.testing.assert_allclose(big_g, g / np.sqrt(1000), rtol=1e-6)
  # The reverse discretization: f - G^2 s, G (the ODE: f - G^2 s / 2, 0).
  score = lambda x, t: -x  # noqa: E731
  rf, rg = ve.reverse(score).discretize(x, 0.5)
  _, big_g = ve.discretize(x, 0.5)
  np.testing.assert_allclose(rf, big_g**2 * x, rtol=1e-6)
  np.testing.assert_allclose(rg, big_g)
  rf, rg = ve.reverse(score, probability_flow=True).discretize(x, 0.5)
  np.testing.assert_allclose(rf, 0.5 * big_g**2 * x, rtol=1e-6)
  np.testing.assert_array_equal(rg, 0.0)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_prior(name):
  sde = SDES[name]
  scale = 50.0 if name == "ve" else 1.0
  z = sde.prior_sampling(jax.random.PRNGKey(0), (4000, 3))
  assert abs(float(jnp.std(z)) / scale - 1) < 0.03
  zz = np.random.default_rng(3).standard_normal((5, 2, 3)) * scale
  np.testing.assert_allclose(sde.prior_logp(jnp.asarray(zz, jnp.float32)),
                             stats.norm(0, scale).logpdf(zz).reshape(5, -1).sum(-1), rtol=1e-6)


def test_score_fn_from_model_converts_every_parameterization():
  """eps / x0 / v / score outputs, discrete and continuous time inputs, all give the exact score."""
  mix = GaussianMixture.create([0.4, 0.6], [[-0.5, 0.2], [0.4, -0.1]], [0.1, 0.2])
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((6, 2)), jnp.float32)
  betas = schedules.get_beta_schedule("cosine", 100)
  ddpm = schedules.DiffusionSchedule.from_betas(betas)
  pw = sde_lib.PiecewiseVPSDE.from_schedule(ddpm)
  n = jnp.array([0, 5, 30, 60, 90, 98])
  t = pw.step_to_time(n.astype(jnp.float32))
  exact = mix.score_fn(pw)(x, t)
  # DDPM oracles on integer steps (the schedule's own alpha-bar).
  for prediction, model_fn in (("eps", mix.eps_model_fn(ddpm)), ("x0", mix.x0_model_fn(ddpm))):
    score = sde_lib.score_fn_from_model(model_fn, pw, prediction=prediction)(x, t)
    np.testing.assert_allclose(score, exact, rtol=2e-4, atol=2e-4 * np.abs(exact).max())

  def v_model(x, n):
    abar = ddpm.alphas_cumprod[n][:, None]
    return jnp.sqrt(abar) * mix.eps_model_fn(ddpm)(x, n) - jnp.sqrt(1 - abar) * mix.x0_model_fn(ddpm)(x, n)

  score = sde_lib.score_fn_from_model(v_model, pw, prediction="v")(x, t)
  np.testing.assert_allclose(score, exact, rtol=2e-4, atol=2e-4 * np.abs(exact).max())
  # A continuous-time x0 model on the VE SDE sees the fractional step; its score is exact at any t.
  ve = sde_lib.VESDE(sigma_min=0.02, sigma_max=5.0, N=50)
  t = jnp.asarray([0.0, 0.013, 0.3, 0.77, 0.95, 1.0], jnp.float32)
  seen = []

  def x0_model(x, u):
    seen.append(u)
    return mix.perturbed_posterior_mean(x, jnp.ones_like(u), ve.sigma(u / 49.0))

  score = sde_lib.score_fn_from_model(x0_model, ve, prediction="x0", time_input="continuous")(x, t)
  np.testing.assert_allclose(seen[0], t * 49, rtol=1e-6)
  np.testing.assert_allclose(score, mix.score_fn(ve)(x, t), rtol=1e-3, atol=1e-3)
  score_model = lambda x, n: mix.score_fn(ve)(x, ve.step_to_time(n.astype(jnp.float32)))  # noqa: E731
  t = jnp.asarray(ve.step_times()[[0, 3, 10, 20, 40, 49]], jnp.float32)
  np.testing.assert_allclose(sde_lib.score_fn_from_model(score_model, ve, prediction="score")(x, t),
                             mix.score_fn(ve)(x, t), rtol=1e-6)
  # score <-> eps
  eps = jnp.asarray(rng.standard_normal((3, 2)), jnp.float32)
  np.testing.assert_allclose(sde_lib.eps_from_score(sde_lib.score_from_eps(eps, 0.3), 0.3), eps, rtol=1e-6)
  np.testing.assert_allclose(sde_lib.score_from_eps(eps, 0.3), -eps / 0.3, rtol=1e-6)


def test_learned_variance_channels_are_dropped_and_options_are_validated():
  vp = sde_lib.VPSDE(N=50)
  x = jnp.ones((2, 4, 4, 3))
  model = lambda x, n: jnp.concatenate([jnp.full_like(x, 0.5), jnp.full_like(x, 9.0)], -1)  # noqa: E731
  score = sde_lib.score_fn_from_model(model, vp, var_type="learned_range")(x, 0.5)
  std = vp.step_marginal_coefs(jnp.array([24, 24]))[1]
  np.testing.assert_allclose(score[:, 0, 0, 0], -0.5 / std, rtol=1e-6)
  with pytest.raises(ValueError, match="'eps', 'x0', 'v', 'score'"):
    sde_lib.score_fn_from_model(model, vp, prediction="noise")
  with pytest.raises(ValueError, match="'discrete', 'continuous'"):
    sde_lib.score_fn_from_model(model, vp, time_input="sigma")
  with pytest.raises(ValueError, match="variance-preserving"):
    sde_lib.score_fn_from_model(model, sde_lib.VESDE(), prediction="v")
  with pytest.raises(ValueError, match="beta_min"):
    sde_lib.VPSDE(beta_min=1.0, beta_max=0.5)
  with pytest.raises(ValueError, match="N > beta_max"):
    sde_lib.VPSDE(N=20)
  with pytest.raises(ValueError, match="sigma_min"):
    sde_lib.VESDE(sigma_min=5.0, sigma_max=1.0)


def test_sdes_are_pytrees_that_pass_through_jit():
  pw = sde_lib.PiecewiseVPSDE.from_schedule(schedules.get_beta_schedule("linear", 50))
  x = jnp.ones((2, 3))
  for sde in (sde_lib.VPSDE(), sde_lib.VESDE(), sde_lib.subVPSDE(), pw):
    jitted = jax.jit(lambda s, x: s.marginal_prob(x, 0.4))(sde, x)
    chex.assert_trees_all_close(jitted, sde.marginal_prob(x, 0.4), rtol=1e-6)
  chex.assert_trees_all_close(jax.vmap(lambda x: pw.sde(x[None], 0.3)[0][0])(x), pw.sde(x, 0.3)[0])
