"""Classifier guidance and classifier-free guidance against the exact Gaussian-mixture oracle.

The mixture's components are the classes, so p(y | x_t), the conditional model E[eps | x_t, y]
and every gradient are closed-form; the float64 references below are written from those formulas
(Dhariwal & Nichol 2021, Algorithms 1 and 2; Ho & Salimans 2022), not from the code under test.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import diffusion, guidance, samplers, schedules
from diffusion_jax.gaussian_mixture import GaussianMixture
from diffusion_jax.samplers import ancestral, ddim

T = 200
BETAS = schedules.get_beta_schedule("linear_scaled", T)
SCHED = schedules.DiffusionSchedule.from_betas(BETAS)
ABAR64 = np.cumprod(1.0 - BETAS)
ANGLES = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
MEANS = 0.4 * np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=-1)       # [K, 2]: overlapping classes
WEIGHTS, STDS = np.array([0.5, 0.3, 0.2]), np.array([0.25, 0.2, 0.3])
K = 3
GM = GaussianMixture.create(WEIGHTS, MEANS, STDS)
EPS_FN, CLS_FN, COND_FN = GM.eps_model_fn(SCHED), GM.class_logits_fn(SCHED), GM.cond_eps_model_fn(SCHED)


def _oracle64(x, abar, labels):
  """float64 (eps_uncond, grad log p(y | x_t)) for x [B, 2] at abar [B]: the paper's formulas."""
  a, var_t = np.sqrt(abar)[:, None, None], (1.0 - abar)[:, None, None]
  v = a**2 * STDS[None, :, None] ** 2 + var_t                                  # [B, K, 1]
  resid = x[:, None, :] - a * MEANS[None]                                      # [B, K, 2]
  log_joint = np.log(WEIGHTS) - 0.5 * (np.sum(resid**2, -1) / v[..., 0] + 2 * np.log(2 * np.pi * v[..., 0]))
  resp = np.exp(log_joint - log_joint.max(-1, keepdims=True))
  resp /= resp.sum(-1, keepdims=True)
  score_k = -resid / v                                                         # grad log p(x_t | k)
  score = np.einsum("bk,bkd->bd", resp, score_k)                               # grad log p(x_t)
  grad = score_k[np.arange(len(x)), labels] - score                            # grad log p(y | x_t)
  return -np.sqrt(1.0 - abar)[:, None] * score, grad


def _inputs(t, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(len(t), 2)) * 0.8
  labels = rng.integers(0, K, len(t))
  return x, labels


def _model_in(mean_type, var_type, sched=SCHED):
  """The oracle as a model of the given parameterization (variance channels: a smooth function of x)."""
  def fn(x, t):
    eps = EPS_FN(x, t)
    steps = jnp.searchsorted(sched.timestep_map, t)
    x0 = diffusion.predict_start_from_noise(sched, x, steps, eps)
    out = {"eps": eps, "x0": x0, "v": diffusion.predict_v(sched, x0, steps, eps),
           "mean": diffusion.q_posterior_mean_variance(sched, x0, x, steps)[0]}[mean_type]
    if var_type == "learned":
      return jnp.concatenate([out, -4.0 + 0.5 * jnp.tanh(x)], -1)
    if var_type == "learned_range":
      return jnp.concatenate([out, jnp.tanh(x)], -1)
    return out
  return fn


T_TEST = np.array([0, 1, 57, 120, 199])


@pytest.mark.parametrize("mean_type", diffusion.MEAN_TYPES)
def test_eps_form_equals_a_float64_restatement(mean_type):
  x, labels = _inputs(T_TEST)
  scale = np.array([0.0, 1.0, 2.5, 4.0, 10.0])
  guided = guidance.classifier_guidance(_model_in(mean_type, "fixedlarge"), CLS_FN, SCHED, jnp.asarray(labels),
                                        scale=jnp.asarray(scale, jnp.float32), form="eps",
                                        mean_type=mean_type)
  got = np.asarray(jax.jit(guided)(jnp.asarray(x, jnp.float32), jnp.asarray(T_TEST, jnp.int32)))
  abar = ABAR64[T_TEST]
  eps_u, grad = _oracle64(x, abar, labels)
  eps_hat = eps_u - scale[:, None] * np.sqrt(1.0 - abar)[:, None] * grad      # Algorithm 2
  x0_hat = (x - np.sqrt(1.0 - abar)[:, None] * eps_hat) / np.sqrt(abar)[:, None]
  abar_prev = np.append(1.0, ABAR64[:-1])[T_TEST][:, None]
  c1 = BETAS[T_TEST][:, None] * np.sqrt(abar_prev) / (1.0 - abar[:, None])
  c2 = (1.0 - abar_prev) * np.sqrt(1.0 - BETAS[T_TEST])[:, None] / (1.0 - abar[:, None])
  ref = {"eps": eps_hat, "x0": x0_hat, "v": np.sqrt(abar)[:, None] * eps_hat - np.sqrt(1 - abar)[:, None] * x0_hat,
         "mean": c1 * x0_hat + c2 * x}[mean_type]
  # Tolerance: 2e-6 absolute in eps (the float32 classifier gradient cancels at high noise),
  # times how much the parameterization amplifies an eps error (1/sqrt(abar) ~ 160 at t = T-1).
  amplify = {"eps": 1.0, "x0": np.sqrt(1 / abar - 1), "v": 1 / np.sqrt(abar),
             "mean": c1[:, 0] * np.sqrt(1 / abar - 1)}[mean_type]
  assert np.all(np.abs(got - ref) <= 2e-6 * np.reshape(amplify, (-1, 1)) + 1e-5 * np.abs(ref)), got - ref


def test_eps_form_at_float_timesteps_uses_the_continuous_abar():
  t = np.array([10.25, 99.5, 180.75])
  x, labels = _inputs(t, seed=1)
  guided = guidance.classifier_guidance(EPS_FN, CLS_FN, SCHED, jnp.asarray(labels), scale=2.0)
  got = guided(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32))
  log_abar = np.log(ABAR64)
  abar = np.exp(np.interp(t, np.arange(T), log_abar))                          # log abar linear in t
  eps_u, grad = _oracle64(x, abar, labels)
  np.testing.assert_allclose(got, eps_u - 2.0 * np.sqrt(1 - abar)[:, None] * grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("var_type", diffusion.VAR_TYPES)
@pytest.mark.parametrize("mean_type", diffusion.MEAN_TYPES)
def test_mean_shift_form_equals_mu_plus_s_sigma_grad(mean_type, var_type):
  x, labels = _inputs(T_TEST, seed=2)
  scale = np.array([1.0, 3.0, 1.0, 0.5, 2.0])
  model_fn = _model_in(mean_type, var_type)
  guided = guidance.classifier_guidance(model_fn, CLS_FN, SCHED, jnp.asarray(labels), scale=jnp.asarray(scale),
                                        form="mean_shift", mean_type=mean_type, var_type=var_type)
  xj, tj = jnp.asarray(x, jnp.float32), jnp.asarray(T_TEST, jnp.int32)
  kw = dict(mean_type=mean_type, var_type=var_type, clip_denoised=False)
  plain = diffusion.p_mean_variance(SCHED, model_fn(xj, tj), xj, tj, **kw)
  shifted = diffusion.p_mean_variance(SCHED, guided(xj, tj), xj, tj, **kw)
  _, grad = _oracle64(x, ABAR64[T_TEST], labels)
  ref = np.asarray(plain.mean, np.float64) + scale[:, None] * np.asarray(plain.variance, np.float64) * grad
  np.testing.assert_allclose(shifted.mean, ref, rtol=1e-5, atol=2e-6)          # Algorithm 1
  np.testing.assert_array_equal(shifted.log_variance, plain.log_variance)


def test_mean_shift_uses_the_respaced_chain_and_guided_diffusions_clip_order():
  respaced, tmap = schedules.respace(BETAS, schedules.space_timesteps(T, [20]))
  steps = np.array([0, 1, 7, 19])
  x, labels = _inputs(steps, seed=3)
  x = 3.0 * x                                       # far out, so that the clip is active
  model_fn = _model_in("eps", "fixedlarge", respaced)
  xj, sj = jnp.asarray(x, jnp.float32), jnp.asarray(steps, jnp.int32)
  t_model = jnp.asarray(tmap[steps], jnp.int32)     # the model and the classifier see original t
  for clip in (False, True):
    guided = guidance.classifier_guidance(model_fn, CLS_FN, respaced, jnp.asarray(labels), scale=2.0,
                                          form="mean_shift", clip_denoised=clip)
    plain = diffusion.p_mean_variance(respaced, model_fn(xj, t_model), xj, sj, mean_type="eps",
                                      var_type="fixedlarge", clip_denoised=clip)
    shifted = diffusion.p_mean_variance(respaced, guided(xj, t_model), xj, sj, mean_type="eps",
                                        var_type="fixedlarge", clip_denoised=False)
    _, grad = _oracle64(x, ABAR64[tmap[steps]], labels)
    ref = np.asarray(plain.mean, np.float64) + 2.0 * np.asarray(plain.variance, np.float64) * grad
    np.testing.assert_allclose(shifted.mean, ref, rtol=1e-5, atol=1e-5)
  assert np.any(np.abs(np.asarray(plain.pred_xstart)) == 1.0)              # the clip did act


def test_errors_and_unvisited_timesteps():
  respaced, _ = schedules.respace(BETAS, schedules.space_timesteps(T, [20]))
  x, y = jnp.zeros((2, 2)), jnp.array([0, 1])
  guided = guidance.classifier_guidance(EPS_FN, CLS_FN, respaced, y, scale=1.0, form="mean_shift")
  out = guided(x, jnp.array([0, 5], jnp.int32))     # 5 is not a step of the 20-step chain
  assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1]))
  with pytest.raises(ValueError, match="float timesteps.*form='eps'"):
    guided(x, jnp.array([1.5, 2.5]))
  with pytest.raises(ValueError, match="'mean_shift', 'eps'"):
    guidance.classifier_guidance(EPS_FN, CLS_FN, SCHED, y, scale=1.0, form="ddim")
  with pytest.raises(ValueError, match=r"labels have shape \(2,\); expected \(3,\)"):
    guidance.classifier_guidance(EPS_FN, CLS_FN, SCHED, y, scale=1.0)(jnp.zeros((3, 2)), jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="scale has shape"):
    guidance.classifier_guidance(EPS_FN, CLS_FN, SCHED, y, scale=jnp.ones(3))(x, jnp.zeros(2, jnp.int32))


def test_class_log_prob_grad_is_the_closed_form_under_jit_and_pmap():
  t = np.tile(T_TEST, 8)[:16]
  x, labels = _inputs(t, seed=4)
  _, ref = _oracle64(x, ABAR64[t], labels)
  args = (jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.int32), jnp.asarray(labels))
  fn = lambda x, t, y: guidance.class_log_prob_grad(CLS_FN, x, t, y)
  np.testing.assert_allclose(fn(*args), ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.jit(fn)(*args), ref, rtol=1e-5, atol=1e-6)
  sharded = jax.pmap(fn)(*(a.reshape((8, 2) + a.shape[1:]) for a in args))
  np.testing.assert_allclose(np.asarray(sharded).reshape(ref.shape), ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Sampling.

N_PER = 1000                                       # samples per class (and per scale)


def _purity_spread(x, labels):
  """Fraction whose clean-data Bayes class is their label, and the mean per-dim std, per class."""
  x, labels = np.asarray(x, np.float64), np.asarray(labels)
  resid = x[:, None, :] - MEANS[None]
  log_joint = np.log(WEIGHTS) - np.sum(resid**2, -1) / (2 * STDS**2) - 2 * np.log(STDS)
  purity = np.array([np.mean(log_joint[labels == k].argmax(-1) == k) for k in range(K)])
  spread = np.array([x[labels == k].std(0).mean() for k in range(K)])
  return purity, spread


def _reference_purity():
  x, y = GM.sample(jax.random.PRNGKey(42), 200_000)
  return _purity_spread(x, y)[0]


LABELS = jnp.repeat(jnp.arange(K, dtype=jnp.int32), N_PER)


@pytest.mark.parametrize("sampler,form,options", [
    ("ancestral", "mean_shift", {}),
    ("ddim", "eps", dict(num_steps=100)),
    ("dpm_solver++", "eps", dict(num_steps=25)),   # float timesteps between the steps
])
def test_scale_one_samples_the_class_conditional(sampler, form, options):
  guided = guidance.classifier_guidance(EPS_FN, CLS_FN, SCHED, LABELS, scale=1.0, form=form)
  run = lambda fn, key: samplers.sample(fn, SCHED, (len(LABELS), 2), key, sampler=sampler,
                                        clip_denoised=False, **options)
  key = jax.random.PRNGKey(0)
  x = np.asarray(jax.jit(lambda k: run(guided, k))(key))
  for k in range(K):
    # Sampling error of a class mean: std / sqrt(1000) ~ 0.009; of a std: ~2.2% relative.
    np.testing.assert_allclose(x[LABELS == k].mean(0), MEANS[k], atol=0.035)
    np.testing.assert_allclose(x[LABELS == k].std(0).mean(), STDS[k], rtol=0.07)
  purity, _ = _purity_spread(x, LABELS)
  np.testing.assert_allclose(purity, _reference_purity(), atol=0.04)        # binomial se <= 0.015
  if form == "eps":
    # eps - sqrt(1 - abar) grad log p(y | x_t) is the exact conditional eps: the same samples as
    # the exact class-conditional model on the same noise.
    exact = jax.jit(lambda k: run(guidance.conditional_model_fn(COND_FN, LABELS), k))(key)
    np.testing.assert_allclose(x, exact, atol=2e-4)


def test_larger_scales_raise_purity_and_lower_spread():
  scales = (1.0, 2.0, 4.0)
  labels = jnp.tile(LABELS, len(scales))
  per_example = jnp.repeat(jnp.asarray(scales), len(LABELS))               # one batch, every scale
  shape, key = (len(labels), 2), jax.random.PRNGKey(1)
  models = {
      "eps/ddim": (guidance.classifier_guidance(EPS_FN, CLS_FN, SCHED, labels, scale=per_example),
                   lambda fn, k: ddim.ddim_sample_loop(fn, SCHED, shape, k, num_steps=50, clip_denoised=False)),
      "mean_shift/ancestral": (
          guidance.classifier_guidance(EPS_FN, CLS_FN, SCHED, labels, scale=per_example, form="mean_shift"),
          lambda fn, k: ancestral.p_sample_loop(fn, SCHED, shape, k, clip_denoised=False)),
      "cfg/ddim": (guidance.classifier_free_guidance(COND_FN, labels, scale=per_example, null_label=K),
                   lambda fn, k: ddim.ddim_sample_loop(fn, SCHED, shape, k, num_steps=50, clip_denoised=False)),
  }
  for name, (model, run) in models.items():
    x = np.asarray(jax.jit(lambda k: run(model, k))(key)).reshape(len(scales), -1, 2)
    stats = [_purity_spread(x[i], LABELS) for i in range(len(scales))]
    purity, spread = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])
    assert np.all(np.diff(purity, axis=0) >= -0.005) and np.all(purity[-1] - purity[0] > 0.05), (name, purity)
    assert np.all(np.diff(spread, axis=0) < -0.005), (name, spread)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance.


def test_cfg_endpoints_equal_conditional_and_unconditional_sampling_on_the_same_noise():
  labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1], jnp.int32)
  b = len(labels)
  # One batch holds the three cases: w = 1 (conditional), w = 0, and the null label at w = 3
  # (both unconditional). The reference runs the conditional and the unconditional model on the
  # same noise (samplers draw it for the whole batch from the key).
  cfg = guidance.classifier_free_guidance(COND_FN, jnp.concatenate([labels, labels, jnp.full_like(labels, K)]),
                                          scale=jnp.repeat(jnp.array([1.0, 0.0, 3.0]), b), null_label=K)
  conditional = guidance.conditional_model_fn(COND_FN, labels)
  reference = lambda x, t: jnp.concatenate([conditional(x[:b], t[:b]), EPS_FN(x[b:], t[b:])])
  shape, key = (3 * b, 2), jax.random.PRNGKey(3)
  for run in (lambda fn: ancestral.p_sample_loop(fn, SCHED, shape, key),
              lambda fn: ddim.ddim_sample_loop(fn, SCHED, shape, key, num_steps=20, eta=0.5)):
    got, ref = run(cfg), run(reference)
    np.testing.assert_array_equal(got[:b], ref[:b])            # (1 - w) u + w c is c at w = 1
    np.testing.assert_allclose(got[b:], ref[b:], rtol=0, atol=1e-5)


def test_cfg_is_classifier_guidance_with_the_implicit_classifier_in_one_batched_call():
  t = np.array([0, 3, 50, 150, 199])
  x, labels = _inputs(t, seed=5)
  xj, tj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.int32), jnp.asarray(labels)
  calls = []

  def cond_fn(x, t, y):
    calls.append(x.shape[0])
    eps = COND_FN(x, t, y)
    return jnp.concatenate([eps, 0.1 * y[:, None].astype(jnp.float32) + 0 * eps], -1)  # + a "variance"

  cfg = guidance.classifier_free_guidance(cond_fn, yj, scale=3.0, null_label=K, var_type="learned_range")
  out = cfg(xj, tj)
  assert calls == [2 * len(t)]
  # eps_c - eps_u = -sqrt(1 - abar) grad log p(y | x_t): CFG at w is the eps form at scale w.
  eps_u, grad = _oracle64(x, ABAR64[t], labels)
  # atol: the float32 oracle's eps at t = 0 divides by sqrt(1 - abar_0) = 0.022.
  np.testing.assert_allclose(out[:, :2], eps_u - 3.0 * np.sqrt(1 - ABAR64[t])[:, None] * grad, rtol=1e-5, atol=5e-5)
  np.testing.assert_allclose(out[:, 2:], 0.1 * labels[:, None] * np.ones((1, 2)), rtol=1e-6)  # conditional half
