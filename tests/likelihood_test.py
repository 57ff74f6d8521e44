"""Likelihoods along the probability-flow ODE against closed forms: Gaussian data, whose density
at every t is N(a MU, (a^2 S^2 + sigma^2) I), and the exact density of a Gaussian mixture."""
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.samplers import continuous_eps_fn
from diffusion_jax import likelihood, schedules, sde as sde_lib
from diffusion_jax.gaussian_mixture import GaussianMixture
from diffusion_jax.samplers import grids, ode

T = 1000
SHAPE = (4, 2, 2, 1)
MU, S = 0.2, 0.5


def _schedule():
  return schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear", T))


def _gaussian_eps(schedule):
  def eps(x, u):
    abar = grids.alphas_cumprod_at(schedule, u).reshape(-1, 1, 1, 1)
    return jnp.sqrt(1 - abar) * (x - jnp.sqrt(abar) * MU) / (abar * S**2 + 1 - abar)
  return eps


def _gaussian_logp(sde, x, t):
  """log N(x; a MU, (a^2 S^2 + sigma^2) I) [B], the Gaussian data's density at time t."""
  a, sigma = sde.marginal_coefs(t)
  v = a**2 * S**2 + sigma**2
  d = math.prod(x.shape[1:])
  return -0.5 * jnp.sum(jnp.square(x - a * MU).reshape(x.shape[0], -1), -1) / v - 0.5 * d * jnp.log(2 * jnp.pi * v)


def _gaussian_case(process_name):
  if process_name == "ddpm_schedule":
    sched = _schedule()
    return sched, _gaussian_eps(sched), "eps"
  sde = sde_lib.VPSDE()
  def score(x, step):
    a, sigma = sde.marginal_coefs(sde.step_to_time(step))
    return -(x - a.reshape(-1, 1, 1, 1) * MU) / (a**2 * S**2 + sigma**2).reshape(-1, 1, 1, 1)
  return sde, score, "score"


@pytest.mark.parametrize("process_name", ["ddpm_schedule", "vp"])
def test_gaussian_exact_trace_is_the_analytic_density(process_name):
  process, model, mean_type = _gaussian_case(process_name)
  sde, score_fn = ode.score_fn_for(model, process, mean_type=mean_type)
  t_min = ode.default_t_min(sde)
  x = MU + S * jax.random.normal(jax.random.PRNGKey(0), SHAPE)
  log_p, z, prior, delta, stats = likelihood.ode_log_likelihood(
      score_fn, sde, x, None, t_min=t_min, estimator="exact", rtol=1e-6, atol=1e-6)
  # The prior N(0, I) is the SDE's, not the data's p_1 (a(1) MU != 0): close with the exact p_1
  # to test the ODE's divergence integral alone, then check the prior term separately.
  np.testing.assert_allclose(delta + _gaussian_logp(sde, z, 1.0), _gaussian_logp(sde, x, t_min), atol=1e-4)
  np.testing.assert_allclose(prior, sde.prior_logp(z), rtol=1e-6)
  np.testing.assert_allclose(log_p, prior + delta, rtol=1e-6)
  assert 10 < int(stats.nfe) < 2000


def test_hutchinson_is_unbiased_within_its_standard_error():
  # 64 copies of one Gaussian-data point: one ODE trajectory, 64 independent probe draws.
  sched = _schedule()
  sde, score_fn = ode.score_fn_for(_gaussian_eps(sched), sched)
  x = jnp.broadcast_to(MU + S * jax.random.normal(jax.random.PRNGKey(1), (1,) + SHAPE[1:]), (64,) + SHAPE[1:])
  # The exact integral in closed form: the ODE maps x affinely to z (standardized x is constant).
  (a0, s0), (a1, s1) = sde.marginal_coefs(0.0), sde.marginal_coefs(1.0)
  v0, v1 = a0**2 * S**2 + s0**2, a1**2 * S**2 + s1**2
  z = a1 * MU + jnp.sqrt(v1 / v0) * (x[:1] - a0 * MU)
  exact = float((_gaussian_logp(sde, x[:1], 0.0) - _gaussian_logp(sde, z, 1.0))[0])
  for probe, num_probes in (("gaussian", 3), ("rademacher", 1)):
    delta = likelihood.ode_log_likelihood(score_fn, sde, x, jax.random.PRNGKey(2), t_min=0.0,
                                          probe=probe, num_probes=num_probes, rtol=1e-6, atol=1e-6)[3]
    if probe == "rademacher":
      # v^T (c I) v = c D exactly for +-1 probes: no variance when the Jacobian is isotropic.
      np.testing.assert_allclose(delta, exact, atol=1e-4)
      continue
    # Gaussian probes: v^T (c I) v = c |v|^2, |v|^2 ~ chi^2_D, so the std is |exact| sqrt(2 / (D K)).
    std_theory = abs(exact) * math.sqrt(2 / (4 * num_probes))
    se = float(jnp.std(delta)) / math.sqrt(delta.shape[0])
    assert abs(float(jnp.mean(delta)) - exact) < 4 * se, (float(jnp.mean(delta)), exact, se)
    assert 0.6 < float(jnp.std(delta)) / std_theory < 1.4, (float(jnp.std(delta)), std_theory)


def _mixture():
  means = np.random.default_rng(0).uniform(-0.7, 0.7, (2,) + SHAPE[1:])
  return GaussianMixture.create([0.4, 0.6], means, [0.15, 0.3])


@pytest.mark.slow
def test_mixture_likelihood_exact_trace_and_hutchinson():
  sched, mixture = _schedule(), _mixture()
  sde, score_fn = ode.score_fn_for(continuous_eps_fn(mixture, sched), sched)
  x, _ = mixture.sample(jax.random.PRNGKey(3), 2)
  abar = sched.alphas_cumprod
  exact_logp = lambda y, n: mixture.marginal_log_prob(y, jnp.full((y.shape[0],), abar[n]))
  _, z, _, delta, _ = likelihood.ode_log_likelihood(score_fn, sde, x, None, t_min=0.0, estimator="exact",
                                                    rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(delta + exact_logp(z, T - 1), exact_logp(x, 0), atol=1e-4)
  # Hutchinson with Rademacher probes: the mixture's Jacobian is not isotropic, so the estimate
  # varies; 16 copies of each point with 64 probes each are unbiased within their standard error
  # (measured: SE 0.010 and 0.064 nats on integrals of 4.46 and 3.28).
  copies = jnp.repeat(x, 16, axis=0)
  est = likelihood.ode_log_likelihood(score_fn, sde, copies, jax.random.PRNGKey(4), t_min=0.0, num_probes=64,
                                      rtol=1e-5, atol=1e-5)[3].reshape(2, 16)
  se = jnp.std(est, axis=1) / np.sqrt(16)
  assert np.all(se > 1e-3), se
  assert np.all(np.abs(jnp.mean(est, axis=1) - delta) < 4 * se), (jnp.mean(est, axis=1), delta, se)


def test_bits_per_dim_offset_dequantization_and_protocol():
  sched = _schedule()
  pixels = jax.random.randint(jax.random.PRNGKey(5), SHAPE, 80, 176)
  x = pixels / 127.5 - 1.0
  key = jax.random.PRNGKey(6)
  sde = ode.as_sde(sched)
  dim = math.prod(SHAPE[1:])
  offset = 8 - 1 - math.log2(256 / 255)
  assert likelihood.OFFSET_BITS_PER_DIM == pytest.approx(offset, abs=1e-12) == pytest.approx(math.log2(127.5))
  result = likelihood.bits_per_dim(_gaussian_eps(sched), sched, x, key, estimator="exact",
                                   rtol=1e-6, atol=1e-6)
  # The documented draw: u ~ U[0, 1) from split(key)[0], x + (u - 1/2) 2/255.
  u = jax.random.uniform(jax.random.split(key)[0], SHAPE)
  data = x + (u - 0.5) * (2 / 255)
  np.testing.assert_array_equal(likelihood.dequantize(x, jax.random.split(key)[0]), data)
  assert likelihood.dequantize(x, key, "none") is x
  # The exact density (the ODE's prior error closed with the exact p_1, as above).
  log_p = _gaussian_logp(sde, data, 0.0) - _gaussian_logp(sde, result.z, 1.0) + result.prior_logp
  np.testing.assert_allclose(result.bpd, -log_p / (dim * math.log(2)) + offset, atol=1e-4 / (dim * math.log(2)))
  protocol = result.protocol.as_dict()
  assert protocol["dequantization"] == "uniform" and protocol["estimator"] == "exact"
  assert protocol["t_min"] == 0.0 and protocol["sde"] == "LogSNRVPSDE" and protocol["probe"] is None
  assert protocol["offset_bits_per_dim"] == likelihood.OFFSET_BITS_PER_DIM
  json.dumps(protocol)


def test_options_are_validated():
  sched = _schedule()
  x = jnp.zeros(SHAPE)
  for kwargs, match in ((dict(estimator="trace"), "estimator"), (dict(probe="sphere"), "probe"),
                        (dict(dequantization="variational"), "dequantization"),
                        (dict(num_probes=0), "num_probes"), (dict(solver="rk4"), "solver")):
    with pytest.raises(ValueError, match=match):
      likelihood.bits_per_dim(_gaussian_eps(sched), sched, x, jax.random.PRNGKey(0), **kwargs)


class VariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, with_pmap=True)
  def test_bits_per_dim_under_jit_and_pmap(self):
    sched = _schedule()
    x = MU + S * jax.random.normal(jax.random.PRNGKey(7), SHAPE)
    run = lambda x: likelihood.bits_per_dim(_gaussian_eps(sched), sched, x, jax.random.PRNGKey(8),
                                            rtol=1e-5, atol=1e-5)
    ours, ref = self.variant(run)(x), run(x)
    np.testing.assert_allclose(ours.bpd, ref.bpd, atol=1e-5)
    assert ours.protocol == ref.protocol
