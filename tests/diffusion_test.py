"""The DDPM equations against diffusers' DDPMScheduler and float64 closed forms."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_jax import diffusion, schedules

T = 1000
SHAPE = (4, 8, 8, 3)


def _schedule(name="linear", num_timesteps=T):
  return schedules.DiffusionSchedule.from_betas(schedules.get_beta_schedule(name, num_timesteps))


def _abar64(name="linear", num_timesteps=T):
  return np.cumprod(1 - schedules.get_beta_schedule(name, num_timesteps))


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2))))


def _nhwc(x):
  return np.transpose(x.numpy(), (0, 2, 3, 1))


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  x0 = rng.uniform(-1, 1, SHAPE).astype(np.float32)
  noise = rng.standard_normal(SHAPE).astype(np.float32)
  t = np.array([0, 1, 500, 999], np.int32)
  return x0, noise, t


class QSampleTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_q_sample_matches_diffusers_add_noise(self):
    x0, noise, t = _inputs()
    sched = _schedule()
    # with_pmap broadcasts the inputs to all 8 devices and returns the first device's output.
    ours = self.variant(lambda a, b, c: diffusion.q_sample(sched, a, b, c))(x0, t, noise)
    ref = DDPMScheduler(num_train_timesteps=T).add_noise(_nchw(x0), _nchw(noise), torch.from_numpy(t).long())
    # diffusers computes sqrt(1 - abar) from float32 tables; the float64 test below is the tight one.
    np.testing.assert_allclose(ours, _nhwc(ref), rtol=1e-5, atol=1e-5)

  def test_q_sample_float64_closed_form(self):
    x0, noise, t = _inputs(1)
    abar = _abar64()[t][:, None, None, None]
    expected = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise   # DDPM Eq. 4
    np.testing.assert_allclose(diffusion.q_sample(_schedule(), x0, t, noise), expected, rtol=1e-5, atol=1e-6)
    mean, var, logvar = diffusion.q_mean_variance(_schedule(), x0, t)
    np.testing.assert_allclose(mean, np.sqrt(abar) * x0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(var, 1 - abar, rtol=1e-5)
    np.testing.assert_allclose(logvar, np.log(1 - abar), rtol=1e-5)

  def test_posterior_float64_closed_form(self):
    x0, noise, t = _inputs(2)
    x_t = np.asarray(diffusion.q_sample(_schedule(), x0, t, noise))
    betas = schedules.get_beta_schedule("linear", T)
    abar = _abar64()
    abar_prev = np.append(1.0, abar[:-1])
    b, a, ap = (v[t][:, None, None, None] for v in (betas, abar, abar_prev))
    mean = np.sqrt(ap) * b / (1 - a) * x0 + np.sqrt(1 - b) * (1 - ap) / (1 - a) * x_t  # DDPM Eq. 7
    var = (1 - ap) / (1 - a) * b
    m, v, lv = diffusion.q_posterior_mean_variance(_schedule(), x0, x_t, t)
    np.testing.assert_allclose(m, mean, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(v[:, 0, 0, 0], var[:, 0, 0, 0], rtol=1e-5, atol=0)
    # t = 0 has zero variance; its log is clipped to log beta-tilde_1.
    expected_log = np.log(np.where(t == 0, (1 - abar_prev[1]) / (1 - abar[1]) * betas[1], var[:, 0, 0, 0]))
    np.testing.assert_allclose(lv[:, 0, 0, 0], expected_log, rtol=1e-5)

  def test_parameterization_round_trips(self):
    x0, noise, t = _inputs(3)
    s = _schedule("cosine")
    x_t = diffusion.q_sample(s, x0, t, noise)
    # x_0 from eps divides by sqrt(abar), tiny at t = T-1 of the cosine schedule, and eps from
    # x_0 by sqrt(1/abar - 1), tiny at small t: check each where it is well posed in float32.
    np.testing.assert_allclose(diffusion.predict_start_from_noise(s, x_t, t, noise)[:3], x0[:3], atol=2e-5)
    np.testing.assert_allclose(diffusion.predict_noise_from_start(s, x_t, t, x0)[2:], noise[2:], atol=1e-5)
    v = diffusion.predict_v(s, x0, t, noise)
    np.testing.assert_allclose(diffusion.predict_start_from_v(s, x_t, t, v), x0, atol=1e-5)
    post_mean, _, _ = diffusion.q_posterior_mean_variance(s, x0, x_t, t)
    np.testing.assert_allclose(diffusion.predict_start_from_prev_mean(s, x_t, t, post_mean), x0, atol=2e-3)


def _diffusers_step(prediction_type, variance_type, output_nhwc, x_t, t, seed, clip=True, schedule="linear"):
  ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=schedule, prediction_type=prediction_type,
                      variance_type=variance_type, clip_sample=clip)
  out = ref.step(_nchw(output_nhwc), int(t), _nchw(x_t), generator=torch.Generator().manual_seed(seed))
  z = torch.randn(_nchw(x_t).shape, generator=torch.Generator().manual_seed(seed))
  return _nhwc(out.prev_sample), _nhwc(out.pred_original_sample), _nhwc(z)


@pytest.mark.parametrize("mean_type, prediction_type", [("eps", "epsilon"), ("x0", "sample"), ("v", "v_prediction")])
@pytest.mark.parametrize("var_type, variance_type", [("fixedsmall", "fixed_small"), ("fixedlarge", "fixed_large"),
                                                     ("learned_range", "learned_range")])
@pytest.mark.parametrize("step", [1, 37, 500, 999])
def test_reverse_step_matches_diffusers(mean_type, prediction_type, var_type, variance_type, step):
  rng = np.random.default_rng(step)
  x_t = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
  channels = 6 if var_type == "learned_range" else 3
  output = rng.standard_normal((2, 8, 8, channels)).astype(np.float32)
  if var_type == "learned_range":
    output[..., 3:] = np.tanh(output[..., 3:])
  t = np.full((2,), step, np.int32)
  prev, pred_x0, z = _diffusers_step(prediction_type, variance_type, output, x_t, step, seed=step)
  out = diffusion.p_mean_variance(_schedule(), output, x_t, t, mean_type=mean_type, var_type=var_type,
                                  clip_denoised=True)
  np.testing.assert_allclose(out.pred_xstart, pred_x0, rtol=1e-5, atol=2e-5)
  ours_prev = np.asarray(out.mean + jnp.exp(0.5 * out.log_variance) * z)
  # diffusers derives beta_t = 1 - abar_t / abar_{t-1} from float32 tables (1e-3 relative error at
  # t = 1), so agreement is only < 1e-4 absolute there; the float64 test below is the tight one.
  np.testing.assert_allclose(ours_prev, prev, rtol=0, atol=1e-4)


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("var_type", ["fixedsmall", "fixedlarge"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_reverse_step_float64_closed_form(mean_type, var_type, schedule):
  rng = np.random.default_rng(7)
  x_t = rng.standard_normal((4, 4, 4, 2))
  output = rng.standard_normal((4, 4, 4, 2))
  t = np.array([0, 1, 300, 998], np.int32)
  betas = schedules.get_beta_schedule(schedule, T)
  abar = np.cumprod(1 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  b, a, ap = (v[t][:, None, None, None] for v in (betas, abar, abar_prev))
  if mean_type == "eps":
    x0 = (x_t - np.sqrt(1 - a) * output) / np.sqrt(a)
  elif mean_type == "x0":
    x0 = output
  else:
    x0 = np.sqrt(a) * x_t - np.sqrt(1 - a) * output
  x0 = np.clip(x0, -1, 1)
  mean = np.sqrt(ap) * b / (1 - a) * x0 + np.sqrt(1 - b) * (1 - ap) / (1 - a) * x_t
  post_var = betas * (1 - abar_prev) / (1 - abar)
  if var_type == "fixedsmall":
    var = np.append(post_var[1], post_var[1:])[t]
  else:
    var = np.append(post_var[1], betas[1:])[t]
  out = diffusion.p_mean_variance(_schedule(schedule), output.astype(np.float32), x_t.astype(np.float32), t,
                                  mean_type=mean_type, var_type=var_type)
  np.testing.assert_allclose(out.pred_xstart, x0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.mean, mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.variance[:, 0, 0, 0], var, rtol=2e-6)


def test_reverse_step_at_t0_is_the_mean():
  rng = np.random.default_rng(0)
  x_t = rng.standard_normal((2, 4, 4, 1)).astype(np.float32)
  eps = rng.standard_normal((2, 4, 4, 1)).astype(np.float32)
  prev, pred_x0, _ = _diffusers_step("epsilon", "fixed_small", eps, x_t, 0, seed=0)
  out = diffusion.p_mean_variance(_schedule(), eps, x_t, np.zeros(2, np.int32), mean_type="eps",
                                  var_type="fixedsmall")
  np.testing.assert_allclose(out.mean, prev, rtol=1e-5, atol=1e-6)
  # At t = 0 the posterior mean is exactly the predicted x_0 (coef1 = 1, coef2 = 0).
  np.testing.assert_allclose(out.mean, out.pred_xstart, atol=1e-6)


def test_learned_range_endpoints_and_learned():
  s = _schedule()
  x_t = np.zeros((3, 2, 2, 1), np.float32)
  t = np.array([0, 10, 999], np.int32)
  betas = schedules.get_beta_schedule("linear", T)
  abar = _abar64()
  abar_prev = np.append(1.0, abar[:-1])
  post = betas * (1 - abar_prev) / (1 - abar)
  clipped = np.log(np.append(post[1], post[1:]))
  for v, expected in [(1.0, np.log(betas[t])), (-1.0, clipped[t]), (0.0, 0.5 * (np.log(betas[t]) + clipped[t]))]:
    out = np.concatenate([x_t, np.full_like(x_t, v)], axis=-1)
    mv = diffusion.p_mean_variance(s, out, x_t, t, mean_type="eps", var_type="learned_range")
    np.testing.assert_allclose(mv.log_variance[:, 0, 0, 0], expected, rtol=1e-5)
  raw = np.concatenate([x_t, np.full_like(x_t, -3.0)], axis=-1)
  mv = diffusion.p_mean_variance(s, raw, x_t, t, mean_type="eps", var_type="learned")
  np.testing.assert_allclose(mv.log_variance, -3.0)
  np.testing.assert_allclose(mv.variance, np.exp(-3.0), rtol=1e-6)


def test_mean_parameterization_returns_the_output_as_mean():
  s = _schedule()
  rng = np.random.default_rng(4)
  x0, x_t = (rng.uniform(-0.9, 0.9, (2, 4, 4, 1)).astype(np.float32) for _ in range(2))
  t = np.array([3, 700], np.int32)
  mean, _, _ = diffusion.q_posterior_mean_variance(s, x0, x_t, t)
  mv = diffusion.p_mean_variance(s, mean, x_t, t, mean_type="mean", var_type="fixedsmall", clip_denoised=False)
  np.testing.assert_allclose(mv.mean, mean)
  np.testing.assert_allclose(mv.pred_xstart, x0, atol=5e-3)


def test_clip_denoised_only_when_asked():
  s = _schedule()
  x_t = np.full((1, 2, 2, 1), 3.0, np.float32)
  t = np.array([10], np.int32)
  clipped = diffusion.p_mean_variance(s, np.zeros_like(x_t), x_t, t, mean_type="eps", var_type="fixedlarge")
  raw = diffusion.p_mean_variance(s, np.zeros_like(x_t), x_t, t, mean_type="eps", var_type="fixedlarge",
                                  clip_denoised=False)
  assert float(clipped.pred_xstart.max()) == 1.0 and float(raw.pred_xstart.min()) > 3.0


def test_bad_options_and_shapes_name_the_argument():
  s = _schedule()
  x = np.zeros((2, 4, 4, 3), np.float32)
  t = np.zeros(2, np.int32)
  with pytest.raises(ValueError, match=r"mean_type='epsilon'.*'eps', 'x0', 'mean', 'v'"):
    diffusion.p_mean_variance(s, x, x, t, mean_type="epsilon", var_type="fixedlarge")
  with pytest.raises(ValueError, match=r"var_type='fixed'.*'fixedlarge', 'fixedsmall', 'learned', 'learned_range'"):
    diffusion.p_mean_variance(s, x, x, t, mean_type="eps", var_type="fixed")
  with pytest.raises(ValueError, match=r"model_output has shape \(2, 4, 4, 3\).*\(2, 4, 4, 6\)"):
    diffusion.p_mean_variance(s, x, x, t, mean_type="eps", var_type="learned_range")
  with pytest.raises(ValueError, match="t has shape"):
    diffusion.q_sample(s, x, np.zeros(3, np.int32), x)
  with pytest.raises(AssertionError):
    diffusion.q_sample(s, x, t, np.zeros((2, 4, 4, 1), np.float32))


class PMeanVarianceVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_variants_agree(self):
    s = _schedule()
    rng = np.random.default_rng(5)
    x_t = rng.standard_normal((8, 4, 4, 2)).astype(np.float32)
    out = rng.standard_normal((8, 4, 4, 4)).astype(np.float32)
    t = rng.integers(0, T, (8,)).astype(np.int32)

    def fn(o, x, tt):
      mv = diffusion.p_mean_variance(s, o, x, tt, mean_type="eps", var_type="learned_range")
      return mv.mean, mv.log_variance

    mean, logvar = self.variant(fn)(out, x_t, t)
    # vmap over single examples is an independent route to the same numbers.
    ref_mean, ref_logvar = jax.vmap(lambda o, x, tt: jax.tree.map(lambda a: a[0], fn(o[None], x[None], tt[None])))(out, x_t, t)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logvar, ref_logvar, rtol=1e-6, atol=1e-6)
    # And the float64 closed form of learned_range's log-variance (Improved DDPM Eq. 15).
    betas = schedules.get_beta_schedule("linear", T)
    abar = _abar64()
    post = betas * (1 - np.append(1.0, abar[:-1])) / (1 - abar)
    clipped = np.log(np.append(post[1], post[1:]))
    frac = (out[..., 2:] + 1) / 2
    expected = frac * np.log(betas[t])[:, None, None, None] + (1 - frac) * clipped[t][:, None, None, None]
    np.testing.assert_allclose(logvar, expected, rtol=1e-5, atol=1e-5)
