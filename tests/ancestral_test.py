"""Ancestral sampling with the exact Gaussian-mixture denoiser, the project's sampler oracle."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffusion_jax import schedules
from diffusion_jax.gaussian_mixture import GaussianMixture
from diffusion_jax.samplers import ancestral, sample

T = 1000
MIXTURE = GaussianMixture.create([0.2, 0.5, 0.3], [[-0.6, -0.6], [0.5, 0.0], [0.0, 0.7]], [0.05, 0.1, 0.08])


def _betas():
  return schedules.get_beta_schedule("linear", T)


def test_posterior_mean_matches_bayes_rule_float64():
  """E[x_0 | x_t] of the oracle against scipy densities and Bayes' rule in float64."""
  rng = np.random.default_rng(0)
  x_t = rng.standard_normal((5, 2))
  abar = np.array([0.999, 0.9, 0.5, 0.1, 0.01])
  w, mu, s = (np.asarray(a, np.float64) for a in (MIXTURE.weights, MIXTURE.means, MIXTURE.stds))
  expected = []
  for x, a in zip(x_t, abar):
    v = a * s**2 + 1 - a
    lik = np.array([stats.multivariate_normal(np.sqrt(a) * mu[k], v[k] * np.eye(2)).pdf(x) for k in range(3)])
    r = w * lik / np.sum(w * lik)
    cond = mu + (np.sqrt(a) * s**2 / v)[:, None] * (x - np.sqrt(a) * mu)
    expected.append(r @ cond)
  ours = MIXTURE.posterior_mean(x_t.astype(np.float32), abar.astype(np.float32))
  np.testing.assert_allclose(ours, np.array(expected), rtol=1e-4, atol=1e-5)
  lp = MIXTURE.marginal_log_prob(x_t.astype(np.float32), abar.astype(np.float32))
  ref_lp = [np.log(sum(w[k] * stats.multivariate_normal(np.sqrt(a) * mu[k], (a * s[k]**2 + 1 - a) * np.eye(2)).pdf(x)
                       for k in range(3))) for x, a in zip(x_t, abar)]
  np.testing.assert_allclose(lp, ref_lp, rtol=1e-5)


def _assign(x):
  d = ((np.asarray(x)[:, None, :] - np.asarray(MIXTURE.means)[None]) ** 2).sum(-1)
  return d.argmin(1)


@pytest.mark.parametrize("var_type, schedule_spec", [("fixedsmall", None), ("fixedlarge", None),
                                                     ("fixedsmall", "100")])
def test_p_sample_loop_reproduces_the_mixture(var_type, schedule_spec):
  betas = _betas()
  base = schedules.DiffusionSchedule.from_betas(betas)
  sched = base if schedule_spec is None else schedules.respace(betas, schedules.space_timesteps(T, schedule_spec))[0]
  n = 4000
  x = jax.jit(lambda k: ancestral.p_sample_loop(MIXTURE.eps_model_fn(base), sched, (n, 2), k,
                                                var_type=var_type))(jax.random.PRNGKey(0))
  labels = _assign(x)
  freq = np.bincount(labels, minlength=3) / n
  # Multinomial sampling error: 4 standard errors.
  w = np.asarray(MIXTURE.weights)
  assert np.all(np.abs(freq - w) < 4 * np.sqrt(w * (1 - w) / n)), freq
  for k in range(3):
    members = np.asarray(x)[labels == k]
    stderr = float(MIXTURE.stds[k]) / np.sqrt(len(members))
    np.testing.assert_allclose(members.mean(0), MIXTURE.means[k], atol=5 * stderr + 2e-3)
    if schedule_spec is None:
      # Spread: within 25% of the true std on the full chain. The fixed reverse variances are
      # not the exact ones (Analytic-DPM); on short respaced chains fixedsmall shrinks clusters more.
      np.testing.assert_allclose(members.std(0), float(MIXTURE.stds[k]), rtol=0.25)


def test_a_wrong_model_fails_the_oracle_check():
  """The oracle test has teeth: a denoiser that ignores one component cannot pass it."""
  base = schedules.DiffusionSchedule.from_betas(_betas())
  wrong = GaussianMixture.create([0.4, 0.6, 0.0], MIXTURE.means, MIXTURE.stds)
  x = ancestral.p_sample_loop(wrong.eps_model_fn(base), base, (2000, 2), jax.random.PRNGKey(0))
  freq = np.bincount(_assign(x), minlength=3) / 2000
  assert abs(freq[2] - 0.3) > 0.2


def test_x_T_key_and_trajectory():
  base = schedules.DiffusionSchedule.from_betas(_betas())
  sched, _ = schedules.respace(_betas(), schedules.space_timesteps(T, "20"))
  model = MIXTURE.eps_model_fn(base)
  x_T = jax.random.normal(jax.random.PRNGKey(5), (16, 2))
  a = ancestral.p_sample_loop(model, sched, (16, 2), jax.random.PRNGKey(1), x_T=x_T)
  b, traj = ancestral.p_sample_loop(model, sched, (16, 2), jax.random.PRNGKey(1), x_T=x_T, return_trajectory=True)
  c = ancestral.p_sample_loop(model, sched, (16, 2), jax.random.PRNGKey(2), x_T=x_T)
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3  # the key drives the per-step noise
  chex.assert_shape(traj, (20, 16, 2))
  np.testing.assert_allclose(traj[-1], a, atol=1e-6)  # the last step returns pred_x0 (no noise at t = 0)
  with pytest.raises(AssertionError):
    ancestral.p_sample_loop(model, sched, (16, 2), jax.random.PRNGKey(1), x_T=x_T[:8])


def test_model_is_called_with_original_timesteps():
  sched, tmap = schedules.respace(_betas(), [0, 499, 999])
  seen = []

  def record(t):
    seen.append(np.asarray(t))
    return np.zeros((2, 1), np.float32)

  def model(x, t):  # a host callback sees the concrete timesteps inside the compiled loop
    return jax.pure_callback(record, jax.ShapeDtypeStruct((2, 1), jnp.float32), t)

  jax.jit(lambda k: ancestral.p_sample_loop(model, sched, (2, 1), k))(jax.random.PRNGKey(0))
  np.testing.assert_array_equal([s[0] for s in seen], [999, 499, 0])


class PSampleLoopVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_deterministic(self):
    base = schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear", 50))
    fn = self.variant(lambda k: ancestral.p_sample_loop(MIXTURE.eps_model_fn(base), base, (8, 2), k))
    x1, x2 = fn(jax.random.PRNGKey(0)), fn(jax.random.PRNGKey(0))
    chex.assert_shape(x1, (8, 2))
    np.testing.assert_array_equal(x1, x2)
    assert np.all(np.isfinite(x1))


def test_loop_traces_once_for_any_key():
  base = schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear", 200))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loop(k):
    return ancestral.p_sample_loop(MIXTURE.eps_model_fn(base), base, (4, 2), k)

  for seed in range(3):
    loop(jax.random.PRNGKey(seed))


def test_sample_dispatch_respaces_and_validates():
  base = schedules.DiffusionSchedule.from_betas(_betas())
  x = sample(MIXTURE.eps_model_fn(base), base, (1000, 2), jax.random.PRNGKey(0), sampler="ancestral",
             num_steps=50, var_type="fixedsmall")
  freq = np.bincount(_assign(x), minlength=3) / 1000
  np.testing.assert_allclose(freq, MIXTURE.weights, atol=0.06)
  with pytest.raises(ValueError, match="sampler='ddpm'"):
    sample(MIXTURE.eps_model_fn(base), base, (2, 2), jax.random.PRNGKey(0), sampler="ddpm")
