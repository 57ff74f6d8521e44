"""Losses and bits/dim against float64 closed forms, torch.distributions and an exact Gaussian reverse process."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import special

from diffusion_jax import diffusion, losses, schedules

T = 1000


def _schedule(name="linear", num_timesteps=T):
  return schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule(name, num_timesteps))


def _tanh_cdf64(x):
  return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def test_normal_kl_matches_torch_distributions():
  rng = np.random.default_rng(0)
  m1, m2 = rng.standard_normal((2, 100))
  lv1, lv2 = rng.uniform(-4, 2, (2, 100))
  ref = torch.distributions.kl_divergence(
      torch.distributions.Normal(torch.tensor(m1), torch.tensor(np.exp(0.5 * lv1))),
      torch.distributions.Normal(torch.tensor(m2), torch.tensor(np.exp(0.5 * lv2)))).numpy()
  np.testing.assert_allclose(losses.normal_kl(m1.astype(np.float32), lv1.astype(np.float32),
                                              m2.astype(np.float32), lv2.astype(np.float32)), ref, rtol=2e-5, atol=1e-6)
  np.testing.assert_array_equal(losses.normal_kl(m1, lv1, m1, lv1), 0.0)


def test_decoder_float64_closed_form_with_edges_and_clamp():
  k = np.array([0, 1, 127, 128, 254, 255, 100, 100], np.float64)
  x = k / 127.5 - 1
  means = np.array([-0.99, -0.5, 0.0, 0.01, 0.9, 0.95, 1.0, -1.0])
  log_scales = np.array([-3.0, -1.0, -4.0, -6.0, -2.0, -3.0, -9.0, -9.0])
  inv = np.exp(-log_scales)
  plus = _tanh_cdf64(inv * (x - means + 1 / 255))
  minus = _tanh_cdf64(inv * (x - means - 1 / 255))
  expected = np.log(np.maximum(plus - minus, 1e-12))
  expected[x < -0.999] = np.log(np.maximum(plus, 1e-12))[x < -0.999]          # bin 0 reaches -inf
  expected[x > 0.999] = np.log(np.maximum(1 - minus, 1e-12))[x > 0.999]       # bin 255 reaches +inf
  ours = losses.discretized_gaussian_log_likelihood(x.astype(np.float32), means.astype(np.float32),
                                                    log_scales.astype(np.float32))
  np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=1e-5)
  # A bin far from a narrow Gaussian hits the 1e-12 clamp.
  np.testing.assert_allclose(ours[-2:], np.log(1e-12), rtol=1e-6)


@pytest.mark.parametrize("mean, log_scale", [(0.0, -2.0), (0.73, -5.0), (-1.0, -3.0), (0.2, 0.5), (0.999, -6.0)])
def test_decoder_probabilities_sum_to_one(mean, log_scale):
  x = (np.arange(256) / 127.5 - 1).astype(np.float32)
  logp = losses.discretized_gaussian_log_likelihood(x, np.full_like(x, mean), np.full_like(x, log_scale))
  np.testing.assert_allclose(np.exp(np.asarray(logp, np.float64)).sum(), 1.0, atol=2e-5)


def test_prior_bpd_float64_closed_form():
  rng = np.random.default_rng(1)
  x0 = rng.uniform(-1, 1, (3, 4, 4, 3))
  abar = np.cumprod(1 - schedules.get_beta_schedule("linear", T))[-1]
  mu, var = np.sqrt(abar) * x0, 1 - abar
  kl = 0.5 * (-1 - np.log(var) + var + mu**2)   # KL(N(mu, var) || N(0, 1))
  expected = kl.reshape(3, -1).mean(1) / np.log(2)
  np.testing.assert_allclose(losses.prior_bpd(_schedule(), x0.astype(np.float32)), expected, rtol=1e-4, atol=1e-9)


def _constant_model(output):
  return lambda x_t, t: output


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v", "mean"])
def test_mse_targets_float64(mean_type):
  rng = np.random.default_rng(2)
  x0 = rng.uniform(-1, 1, (4, 4, 4, 2))
  noise = rng.standard_normal((4, 4, 4, 2))
  out = rng.standard_normal((4, 4, 4, 2))
  t = np.array([0, 5, 400, 999], np.int32)
  betas = schedules.get_beta_schedule("linear", T)
  abar = np.cumprod(1 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  b, a, ap = (v[t][:, None, None, None] for v in (betas, abar, abar_prev))
  x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
  target = {"eps": noise, "x0": x0, "v": np.sqrt(a) * noise - np.sqrt(1 - a) * x0,
            "mean": np.sqrt(ap) * b / (1 - a) * x0 + np.sqrt(1 - b) * (1 - ap) / (1 - a) * x_t}[mean_type]
  terms = losses.training_losses(_constant_model(out.astype(np.float32)), _schedule(), x0.astype(np.float32), t,
                                 noise.astype(np.float32), mean_type=mean_type, var_type="fixedlarge", loss_type="mse")
  expected = ((target - out) ** 2).reshape(4, -1).mean(1)
  np.testing.assert_allclose(terms.loss, expected, rtol=1e-5)
  np.testing.assert_allclose(terms.mse, expected, rtol=1e-5)
  assert terms.vb is None


def test_model_sees_original_timesteps_on_respaced_schedule():
  seen = []
  def model(x_t, t):
    seen.append(t)
    return jnp.zeros_like(x_t)
  sched, tmap = schedules.respace(schedules.get_beta_schedule("linear", T), [0, 250, 999])
  x = np.zeros((3, 2, 2, 1), np.float32)
  losses.training_losses(model, sched, x, np.array([0, 1, 2], np.int32), x)
  np.testing.assert_array_equal(seen[0], [0, 250, 999])


def _vb_reference(x0, x_t, t, model_mean, model_logvar, schedule_name="linear"):
  """float64: KL(q(x_{t-1}|x_t,x_0) || N(model_mean, exp(model_logvar))) or the decoder NLL at t = 0."""
  betas = schedules.get_beta_schedule(schedule_name, T)
  abar = np.cumprod(1 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  post_var = betas * (1 - abar_prev) / (1 - abar)
  b, a, ap = (v[t][:, None, None, None] for v in (betas, abar, abar_prev))
  true_mean = np.sqrt(ap) * b / (1 - a) * x0 + np.sqrt(1 - b) * (1 - ap) / (1 - a) * x_t
  true_logvar = np.log(np.append(post_var[1], post_var[1:]))[t][:, None, None, None]
  kl = 0.5 * (-1 + model_logvar - true_logvar + np.exp(true_logvar - model_logvar)
              + (true_mean - model_mean) ** 2 * np.exp(-model_logvar))
  inv = np.exp(-0.5 * model_logvar)
  plus = _tanh_cdf64(inv * (x0 - model_mean + 1 / 255))
  minus = _tanh_cdf64(inv * (x0 - model_mean - 1 / 255))
  logp = np.where(x0 < -0.999, np.log(np.maximum(plus, 1e-12)),
                  np.where(x0 > 0.999, np.log(np.maximum(1 - minus, 1e-12)), np.log(np.maximum(plus - minus, 1e-12))))
  per_dim = np.where((t == 0)[:, None, None, None], -logp, kl)
  return per_dim.reshape(len(t), -1).mean(1) / np.log(2)


def _learned_range_case(seed=3):
  rng = np.random.default_rng(seed)
  x0 = (rng.integers(0, 256, (4, 4, 4, 2)) / 127.5 - 1)
  noise = rng.standard_normal((4, 4, 4, 2))
  t = np.array([0, 1, 300, 999], np.int32)
  eps_out = rng.standard_normal((4, 4, 4, 2)) * 0.5 + noise
  v_out = np.tanh(rng.standard_normal((4, 4, 4, 2)))
  return x0, noise, t, eps_out, v_out


def _reference_model_moments(x0, noise, t, eps_out, v_out):
  betas = schedules.get_beta_schedule("linear", T)
  abar = np.cumprod(1 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  post_var = betas * (1 - abar_prev) / (1 - abar)
  b, a, ap = (v[t][:, None, None, None] for v in (betas, abar, abar_prev))
  x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
  pred_x0 = (x_t - np.sqrt(1 - a) * eps_out) / np.sqrt(a)   # never clipped in training
  model_mean = np.sqrt(ap) * b / (1 - a) * pred_x0 + np.sqrt(1 - b) * (1 - ap) / (1 - a) * x_t
  frac = (v_out + 1) / 2
  logvar = frac * np.log(b) + (1 - frac) * np.log(np.append(post_var[1], post_var[1:]))[t][:, None, None, None]
  return x_t, model_mean, logvar


@pytest.mark.parametrize("loss_type, scale", [("kl", 1.0), ("rescaled_kl", float(T))])
def test_kl_losses_float64(loss_type, scale):
  x0, noise, t, eps_out, v_out = _learned_range_case()
  x_t, model_mean, logvar = _reference_model_moments(x0, noise, t, eps_out, v_out)
  expected = _vb_reference(x0, x_t, t, model_mean, logvar)
  out = np.concatenate([eps_out, v_out], -1).astype(np.float32)
  terms = losses.training_losses(_constant_model(out), _schedule(), x0.astype(np.float32), t,
                                 noise.astype(np.float32), mean_type="eps", var_type="learned_range",
                                 loss_type=loss_type)
  np.testing.assert_allclose(terms.vb, expected, rtol=2e-4)
  np.testing.assert_allclose(terms.loss, scale * expected, rtol=2e-4)


def test_hybrid_loss_value_and_gradients():
  """L_hybrid = L_simple + T/1000 L_vlb; the vlb sees the mean through a stop-gradient."""
  num_timesteps = 4000
  sched = _schedule("cosine", num_timesteps)
  rng = np.random.default_rng(4)
  x0 = (rng.integers(0, 256, (4, 4, 4, 1)) / 127.5 - 1).astype(np.float32)
  noise = rng.standard_normal((4, 4, 4, 1)).astype(np.float32)
  t = np.array([0, 10, 2000, 3999], np.int32)
  out = np.concatenate([noise + 0.3 * rng.standard_normal(noise.shape), np.tanh(rng.standard_normal(noise.shape))],
                       -1).astype(np.float32)

  def total(o, loss_type):
    return jnp.sum(losses.training_losses(_constant_model(o), sched, x0, t, noise, mean_type="eps",
                                          var_type="learned_range", loss_type=loss_type).loss)

  def vb_only(o):
    terms = losses.training_losses(_constant_model(o), sched, x0, t, noise, mean_type="eps",
                                   var_type="learned_range", loss_type="kl")
    return jnp.sum(terms.vb)

  hybrid = losses.training_losses(_constant_model(out), sched, x0, t, noise, mean_type="eps",
                                  var_type="learned_range", loss_type="rescaled_mse")
  vb = losses.training_losses(_constant_model(out), sched, x0, t, noise, mean_type="eps",
                              var_type="learned_range", loss_type="kl").vb
  mse = ((out[..., :1] - noise) ** 2).reshape(4, -1).mean(1)
  np.testing.assert_allclose(hybrid.mse, mse, rtol=1e-5)
  np.testing.assert_allclose(hybrid.vb, vb * num_timesteps / 1000, rtol=1e-5)
  np.testing.assert_allclose(hybrid.loss, mse + vb * 4.0, rtol=1e-5)
  unscaled = losses.training_losses(_constant_model(out), sched, x0, t, noise, mean_type="eps",
                                    var_type="learned_range", loss_type="mse")
  np.testing.assert_allclose(unscaled.loss, mse + vb, rtol=1e-5)

  grad_hybrid = jax.grad(total)(out, "rescaled_mse")
  # Mean channel: exactly the gradient of L_simple alone, d/do sum_b mean((o - eps)^2).
  np.testing.assert_allclose(grad_hybrid[..., :1], 2 * (out[..., :1] - noise) / 16, rtol=1e-5, atol=1e-8)
  # Variance channel: exactly T/1000 times the vlb's gradient.
  grad_vb = jax.grad(vb_only)(out)
  np.testing.assert_allclose(grad_hybrid[..., 1:], 4.0 * grad_vb[..., 1:], rtol=1e-5, atol=1e-8)
  assert np.abs(grad_vb[..., :1]).max() > 1e-6  # without the stop-gradient the vlb would move the mean


def _gaussian_reverse_model(schedule, mu, s):
  """The exact reverse process of data x_0 ~ N(mu, s^2 I): mean_type x0 + learned log-variance."""
  abar = schedule.alphas_cumprod

  def model(x_t, t):
    a = abar[t][:, None, None, None]
    v = a * s**2 + 1 - a
    x0_mean = mu + jnp.sqrt(a) * s**2 / v * (x_t - jnp.sqrt(a) * mu)
    x0_var = s**2 * (1 - a) / v
    c1 = schedule.posterior_mean_coef1[t][:, None, None, None]
    log_var = jnp.log(schedule.posterior_variance[t][:, None, None, None] + c1**2 * x0_var)
    return jnp.concatenate([x0_mean, jnp.broadcast_to(log_var, x_t.shape)], axis=-1)

  return model


@pytest.mark.slow
def test_bpd_of_exact_reverse_process_equals_analytic_nll():
  """With p(x_{t-1}|x_t) = q(x_{t-1}|x_t), E[bound] = H(x_0) + KL(q(x_T) || N(0, I)) exactly.

  The discretized decoder turns the density into bin probabilities: -log P(bin) = -log p(x_0)
  - log(2/255) up to O((bin / sigma_0)^2), negligible with sigma_0 >> 2/255 (T = 20, const betas).
  """
  num_timesteps, mu, s = 20, 0.1, 0.2
  sched = schedules.DiffusionSchedule.from_betas(np.full(num_timesteps, 0.05))
  key = jax.random.PRNGKey(0)
  x0 = mu + s * jax.random.normal(key, (512, 8, 8, 1))
  bpd = jax.jit(lambda x, k: losses.calc_bpd_loop(_gaussian_reverse_model(sched, mu, s), sched, x, k,
                                                  mean_type="x0", var_type="learned", clip_denoised=False)
                )(x0, jax.random.PRNGKey(1))
  abar_T = np.prod(1 - np.full(num_timesteps, 0.05))
  entropy = 0.5 * math.log(2 * math.pi * math.e * s**2)
  m, v = math.sqrt(abar_T) * mu, abar_T * s**2 + 1 - abar_T
  kl_T = 0.5 * (-1 - math.log(v) + v + m**2)
  expected_bpd = (entropy - math.log(2 / 255) + kl_T) / math.log(2)
  per_image = np.asarray(bpd.total_bpd)
  stderr = per_image.std() / math.sqrt(per_image.size)
  assert abs(per_image.mean() - expected_bpd) < 4 * stderr + 2e-3, (per_image.mean(), expected_bpd, stderr)
  assert stderr < 0.01
  # Sum of parts, and the prior term is the closed-form KL(q(x_T | x_0) || N(0, I)).
  np.testing.assert_allclose(bpd.total_bpd, bpd.terms_bpd.sum(1) + bpd.prior_bpd, rtol=1e-5)
  np.testing.assert_allclose(bpd.prior_bpd, losses.prior_bpd(sched, x0), rtol=1e-6)
  assert bpd.terms_bpd.shape == (512, num_timesteps) and bpd.xstart_mse.shape == (512, num_timesteps)


def test_calc_bpd_loop_terms_are_the_vb_terms_at_each_t():
  sched = _schedule("linear", 50)
  rng = np.random.default_rng(5)
  x0 = (rng.integers(0, 256, (2, 4, 4, 1)) / 127.5 - 1).astype(np.float32)
  model = lambda x_t, t: 0.9 * x_t  # an arbitrary eps model
  key = jax.random.PRNGKey(3)
  out = losses.calc_bpd_loop(model, sched, x0, key, mean_type="eps", var_type="fixedsmall")
  for step in (0, 1, 49):
    t = np.full((2,), step, np.int32)
    noise = jax.random.normal(jax.random.fold_in(key, step), x0.shape)
    x_t = diffusion.q_sample(sched, x0, t, noise)
    term, _ = losses.vb_terms_bpd(sched, model(x_t, t), x0, x_t, t, mean_type="eps", var_type="fixedsmall",
                                  clip_denoised=True)
    np.testing.assert_allclose(out.terms_bpd[:, step], term, rtol=1e-5)


def test_bad_loss_type_lists_valid_values():
  x = np.zeros((1, 2, 2, 1), np.float32)
  with pytest.raises(ValueError, match=r"loss_type='l2'.*'mse', 'rescaled_mse', 'kl', 'rescaled_kl'"):
    losses.training_losses(_constant_model(x), _schedule(), x, np.zeros(1, np.int32), x, loss_type="l2")


class TrainingLossesVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_variants(self):
    sched = _schedule()
    rng = np.random.default_rng(6)
    x0, noise, out = (rng.standard_normal((2, 4, 4, 1)).astype(np.float32) for _ in range(3))
    t = np.array([3, 600], np.int32)
    fn = self.variant(lambda a, b, c, o: losses.training_losses(_constant_model(o), sched, a, b, c).loss)
    np.testing.assert_allclose(fn(x0, t, noise, out), ((out - noise) ** 2).reshape(2, -1).mean(1), rtol=1e-5)
