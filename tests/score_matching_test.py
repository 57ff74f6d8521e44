"""Score-matching objectives against closed forms on Gaussian data and DDPM's L_simple, and the
U-Net's continuous time conditioning."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import losses, schedules, sde as sde_lib, timestep_sampling
from diffusion_jax.gaussian_mixture import GaussianMixture
from diffusion_jax.models.unet import UNet

MU, S, D = np.array([0.3, -0.2, 0.5, 0.0]), 0.3, 4
GAUSSIAN = GaussianMixture.create([1.0], [MU], [S])


def _expected_loss(a, sigma, g2, weighting):
  """E || sigma s* + z ||^2 / D for x0 ~ N(mu, s^2 I) and the exact score s* (derivation:
  sigma s* + z = (1 - sigma^2 / v) z - (sigma a / v)(x0 - mu), v = a^2 s^2 + sigma^2), so the
  per-dimension mean is a^2 s^2 / v; the likelihood weighting multiplies by g^2 / sigma^2."""
  v = a**2 * S**2 + sigma**2
  base = a**2 * S**2 / v
  return base * (g2 / sigma**2 if weighting == "likelihood" else 1.0)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_dsm_loss_of_the_exact_score_is_the_closed_form(name, weighting):
  sde = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.subVPSDE(), "ve": sde_lib.VESDE(sigma_min=0.02, sigma_max=5.0)}[name]
  n = 20000
  key_x, key_z = jax.random.split(jax.random.PRNGKey(0))
  x0, _ = GAUSSIAN.sample(key_x, n)
  z = jax.random.normal(key_z, x0.shape)
  exact = GAUSSIAN.score_fn(sde)
  for t in (0.05, 0.3, 0.8):
    tt = jnp.full((n,), t)
    terms = losses.score_matching_losses(lambda x, u: exact(x, sde.step_to_time(u)), sde, x0, tt, z,
                                         prediction="score", weighting=weighting)
    a, sigma = (float(c) for c in sde.marginal_coefs(jnp.float32(t)))
    g2 = float(sde.sde(x0[:1], t)[1][0, 0]) ** 2
    expected = _expected_loss(a, sigma, g2, weighting)
    # 5 standard errors of the Monte-Carlo mean.
    assert abs(float(terms.loss.mean()) - expected) < 5 * float(terms.loss.std()) / np.sqrt(n), (t, expected)
  # A wrong score (target sign flipped) is far off.
  wrong = losses.score_matching_losses(lambda x, u: -exact(x, sde.step_to_time(u)), sde, x0, tt, z,
                                       prediction="score", weighting=weighting)
  assert float(wrong.loss.mean()) > 2 * expected


def test_dsm_with_an_eps_model_on_the_discrete_chain_is_ddpm_l_simple():
  sched = schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule("linear", 1000))
  vp = sde_lib.VPSDE()
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-1, 1, (6, 4, 4, 3)), jnp.float32)
  z = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
  steps = jnp.array([0, 1, 100, 500, 900, 999])
  model_fn = lambda x, t: jnp.tanh(x) * (1.0 + t[:, None, None, None] / 1000.0)  # noqa: E731
  ddpm = losses.training_losses(model_fn, sched, x0, steps, z)
  ours = losses.score_matching_losses(model_fn, vp, x0, vp.step_to_time(steps.astype(jnp.float32)), z,
                                      time_input="discrete")
  np.testing.assert_allclose(ours.loss, ddpm.loss, rtol=2e-5)
  total = losses.score_matching_losses(model_fn, vp, x0, vp.step_to_time(steps.astype(jnp.float32)), z,
                                       time_input="discrete", reduce="sum")
  np.testing.assert_allclose(total.loss, ours.loss * 48, rtol=1e-6)


def test_ncsn_loss_is_the_papers_on_geometric_levels():
  """|| sigma_i s(x0 + sigma_i z, i) + z ||^2 written out here, NCSN levels 2 -> 0.02 (L = 10)."""
  ve = sde_lib.VESDE(sigma_min=0.02, sigma_max=2.0, N=10)
  sigmas = np.geomspace(0.02, 2.0, 10)
  rng = np.random.default_rng(1)
  x0 = rng.uniform(-1, 1, (5, 2, 2, 1))
  z = rng.standard_normal(x0.shape)
  levels = np.array([0, 3, 5, 9, 9])
  seen = []

  def model_fn(x, i):
    seen.append(i)
    return -x / (1.0 + jnp.asarray(sigmas, jnp.float32)[i][:, None, None, None])

  terms = losses.ncsn_losses(model_fn, ve, jnp.asarray(x0, jnp.float32), jnp.asarray(levels), jnp.asarray(z, jnp.float32))
  sig = sigmas[levels][:, None, None, None]
  x_noisy = x0 + sig * z
  expected = np.mean((sig * (-x_noisy / (1 + sig)) + z) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(terms.loss, expected, rtol=1e-5)
  assert seen[0].dtype == jnp.int32
  np.testing.assert_array_equal(seen[0], levels)
  # Its expectation with the exact score on Gaussian data: s^2 / (s^2 + sigma^2) per dimension.
  n = 20000
  x0, _ = GAUSSIAN.sample(jax.random.PRNGKey(2), n)
  zz = jax.random.normal(jax.random.PRNGKey(3), x0.shape)
  exact = GAUSSIAN.score_fn(ve)
  terms = losses.ncsn_losses(lambda x, i: exact(x, ve.step_to_time(i.astype(jnp.float32))), ve, x0,
                             jnp.full((n,), 4), zz)
  expected = S**2 / (S**2 + sigmas[4] ** 2)
  assert abs(float(terms.loss.mean()) - expected) < 5 * float(terms.loss.std()) / np.sqrt(n)


def test_options_and_time_sampling():
  vp = sde_lib.VPSDE()
  x = jnp.ones((2, 3))
  with pytest.raises(ValueError, match="'sigma2', 'likelihood'"):
    losses.score_matching_losses(lambda x, t: x, vp, x, jnp.full(2, 0.5), x, weighting="uniform")
  with pytest.raises(ValueError, match="'mean', 'sum'"):
    losses.score_matching_losses(lambda x, t: x, vp, x, jnp.full(2, 0.5), x, reduce="max")
  t = timestep_sampling.sample_continuous_times(jax.random.PRNGKey(0), (10000,))
  assert float(t.min()) >= 1e-5 and float(t.max()) <= 1.0 and abs(float(t.mean()) - 0.5) < 0.01
  with pytest.raises(ValueError, match="eps"):
    timestep_sampling.sample_continuous_times(jax.random.PRNGKey(0), (3,), eps=1.0)


def test_unet_takes_continuous_time():
  """Float times: an integer-valued float equals the int step exactly; in between, the output moves
  continuously; a DDPM-style network needs no other change."""
  # norm_groups=8: with one channel per group GroupNorm would erase the per-channel time bias.
  net = UNet(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0, out_ch=1, norm_groups=8)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
  params = jax.jit(net.init)(jax.random.PRNGKey(1), x, jnp.zeros(3, jnp.int32))
  # Random weights everywhere: at init the zero-ish residual convs would hide the time input.
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = tree.unflatten([0.2 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)])
  apply = jax.jit(net.apply)
  steps = jnp.array([0, 10, 999])
  np.testing.assert_array_equal(apply(params, x, steps), apply(params, x, steps.astype(jnp.float32)))
  a, b, c = (apply(params, x, jnp.full(3, u)) for u in (500.0, 500.01, 520.0))
  assert float(jnp.abs(c - a).max()) > 0.1 * float(jnp.abs(a).max())  # time matters
  assert 0 < float(jnp.abs(b - a).max()) < 0.01 * float(jnp.abs(c - a).max())  # continuously
