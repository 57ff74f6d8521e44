"""Improved DDPM end to end: its configs, L_hybrid training on the digits, respaced sampling.

References are independent of the code under test: the paper's / improved-diffusion's
hyperparameters written out here, the cosine schedule and the respaced grid from their closed
forms in float64 numpy, and an exact denoiser for a point-mass data set.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_hybrid, iddpm_cifar10, iddpm_imagenet64
from diffusion_jax import config_validation, experiment, input_pipeline, parallel, samplers
from diffusion_jax import schedules, train
from diffusion_jax import train_state
from diffusion_jax.samplers import ancestral

# (config module, image size, ch_mult, dropout, training steps) of the released L_hybrid models
# (openai/improved-diffusion README and script_util defaults).
PAPER = {
    "cifar10": (iddpm_cifar10, 32, (1, 2, 2, 2), 0.3, 500_000),
    "imagenet64": (iddpm_imagenet64, 64, (1, 2, 3, 4), 0.0, 1_500_000),
}


def _cosine_alphas_cumprod(num_timesteps: int, s: float = 0.008) -> np.ndarray:
  """Improved DDPM eq. 17 in float64, with its beta clip at 0.999 (eq. 17's text)."""
  f = lambda t: np.cos((t / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2
  i = np.arange(num_timesteps, dtype=np.float64)
  betas = np.minimum(1 - f(i + 1) / f(i), 0.999)
  return np.cumprod(1 - betas)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_iddpm_configs_are_the_papers_and_fit_the_unet(name):
  module, size, ch_mult, dropout, steps = PAPER[name]
  config = module.get_config()
  config_validation.validate_config(config, num_devices=jax.device_count())
  d, m, t = config.diffusion, config.model, config.training
  assert (d.beta_schedule, d.num_timesteps) == ("cosine", 4000)
  assert (d.mean_type, d.var_type, d.loss_type) == ("eps", "learned_range", "rescaled_mse")
  assert (m.ch, tuple(m.ch_mult), m.num_res_blocks, m.dropout) == (128, ch_mult, 3, dropout)
  assert (tuple(m.attn_resolutions), m.num_heads, m.use_scale_shift_norm) == ((16, 8), 4, True)
  assert (t.learning_rate, t.batch_size, t.num_train_steps, t.ema_decay) == (1e-4, 128, steps,
                                                                             0.9999)
  assert (config.data.image_size, config.data.num_channels) == (size, 3)
  np.testing.assert_allclose(np.asarray(experiment.create_schedule(config).alphas_cumprod),
                             _cosine_alphas_cumprod(4000), rtol=2e-5, atol=1e-7)

  # The U-Net outputs 2C = 6 channels at the configured resolution (shapes only, no compute).
  model = experiment.create_model(config)
  assert model.out_ch == 6
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  ts = jax.ShapeDtypeStruct((2,), jnp.int32)
  params = jax.eval_shape(lambda k, x, ts: model.init(k, x, ts, train=False)["params"],
                          jax.random.PRNGKey(0), x, ts)
  out = jax.eval_shape(lambda p, x, ts: model.apply({"params": p}, x, ts, train=False),
                       params, x, ts)
  assert out.shape == (2, size, size, 6)
  num_params = sum(np.prod(p.shape) for p in jax.tree.leaves(params))
  # improved-diffusion's checkpoints are named 50M (CIFAR-10) and 100M (ImageNet 64).
  assert (45e6 < num_params < 60e6) if name == "cifar10" else (100e6 < num_params < 130e6)


def _tiny_digits_hybrid():
  """digits_hybrid.py with a one-level, 8-channel U-Net (the objective is under test here)."""
  config = digits_hybrid.get_config()
  config.model.ch = 8
  config.model.ch_mult = (1,)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = ()
  return config


@pytest.mark.slow  # ~20 s of CPU, mostly compiling the pmapped step.
def test_digits_hybrid_trains_with_both_loss_terms():
  assert (digits_hybrid.get_config().diffusion.var_type,
          digits_hybrid.get_config().diffusion.loss_type) == ("learned_range", "rescaled_mse")
  config = _tiny_digits_hybrid()
  config.training.batch_size = 16
  config_validation.validate_config(config, num_devices=jax.device_count())
  model, diffusion_ = experiment.create_model(config), experiment.create_diffusion(config)
  assert model.out_ch == 2
  tx = train_state.make_optimizer(config)
  mesh = parallel.make_mesh()
  state = parallel.replicate(jax.device_get(experiment.init_train_state(config, model, tx)), mesh)
  p_step = train.pmap_train_step(train.make_train_step(config, model, diffusion_, tx), mesh)
  batches = input_pipeline.create_train_iterator(
      config.data, layout=parallel.batch_layout(16, mesh), seed=0)
  for _ in range(3):
    state, metrics = p_step(state, parallel.shard(next(batches), mesh))
    m = {k: float(np.asarray(v)[0]) for k, v in metrics.items()}
    assert all(np.isfinite(v) for v in m.values()), m
    # L_hybrid = L_simple + L_vlb term (lambda = 0.001 at T = 1000 is inside `vb`).
    assert m["mse"] > 0.05 and m["vb"] > 0.0, m
    np.testing.assert_allclose(m["loss"], m["mse"] + m["vb"], rtol=1e-5)
  assert int(parallel.unreplicate(state.step)) == 3


def _improved_diffusion_grid(num_timesteps: int, count: int) -> list[int]:
  """improved-diffusion's respacing of one section: evenly strided, rounded, ends included."""
  stride = (num_timesteps - 1) / (count - 1)
  return [round(i * stride) for i in range(count)]


def test_learned_range_model_on_a_50_step_respaced_schedule():
  """A point mass at c has the exact eps(x_t, t) = (x_t - sqrt(abar_t) c) / sqrt(1 - abar_t)."""
  betas = schedules.get_beta_schedule("linear", 1000)
  schedule = schedules.DiffusionSchedule.from_betas(betas)
  abar = np.cumprod(1.0 - betas)  # float64 reference
  c, v = 0.3, 0.5  # data value; learned_range output v (frac = 0.75)
  seen = []

  def model_fn(x_t, t):
    jax.debug.callback(lambda tt: seen.append(np.asarray(tt).copy()), t, ordered=True)
    a = jnp.asarray(abar, jnp.float32)[t][:, None, None, None]
    eps = (x_t - jnp.sqrt(a) * c) / jnp.sqrt(1.0 - a)
    return jnp.concatenate([eps, jnp.full_like(x_t, v)], axis=-1)

  shape = (4, 8, 8, 1)
  x0, traj = samplers.sample(model_fn, schedule, shape, jax.random.PRNGKey(0),
                             sampler="ancestral", num_steps=50, mean_type="eps",
                             var_type="learned_range", return_trajectory=True)
  jax.block_until_ready(x0)
  grid = _improved_diffusion_grid(1000, 50)
  assert sorted({int(t[0]) for t in seen}) == grid  # the model sees ORIGINAL timesteps
  assert [int(t[0]) for t in seen] == grid[::-1]  # walked from T-1 down to 0
  assert traj.shape == (50,) + shape
  np.testing.assert_allclose(np.asarray(traj), c, atol=2e-4)  # exact denoiser at every step
  np.testing.assert_allclose(np.asarray(x0), c, atol=2e-4)

  # One respaced step with the noise given, against the float64 closed form: respaced betas
  # from the kept abar, learned_range log-variance = frac log beta + (1 - frac) log beta~.
  resp, _ = schedules.respace(schedule, grid)
  kept = abar[grid]
  abar_prev = np.concatenate([[1.0], kept[:-1]])
  beta = 1.0 - kept / abar_prev
  post_var = beta * (1.0 - abar_prev) / (1.0 - kept)
  post_logvar_clipped = np.log(np.concatenate([[post_var[1]], post_var[1:]]))
  frac = (v + 1.0) / 2.0
  rng = np.random.default_rng(0)
  for i in (1, 10, 49):
    x_t = np.sqrt(kept[i]) * c + np.sqrt(1 - kept[i]) * rng.standard_normal(shape)
    z = rng.standard_normal(shape)
    x_prev, _ = ancestral.p_sample(model_fn, resp, jnp.asarray(x_t, jnp.float32),
                                   jnp.full((4,), i, jnp.int32), jnp.asarray(z, jnp.float32),
                                   mean_type="eps", var_type="learned_range")
    coef1 = beta[i] * np.sqrt(abar_prev[i]) / (1 - kept[i])
    coef2 = (1 - abar_prev[i]) * np.sqrt(1 - beta[i]) / (1 - kept[i])
    log_var = frac * np.log(beta[i]) + (1 - frac) * post_logvar_clipped[i]
    expected = coef1 * c + coef2 * x_t + np.exp(0.5 * log_var) * z
    np.testing.assert_allclose(np.asarray(x_prev), expected, rtol=1e-4, atol=2e-5)


def test_learned_range_unet_samples_through_the_dispatch():
  config = _tiny_digits_hybrid()
  model, schedule = experiment.create_model(config), experiment.create_schedule(config)
  params = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32),
                                        train=False)["params"])(jax.random.PRNGKey(0))
  model_fn = lambda x, t: model.apply({"params": params}, x, t, train=False)
  x0 = jax.jit(lambda k: samplers.sample(model_fn, schedule, (4, 8, 8, 1), k, num_steps=50,
                                         mean_type="eps", var_type="learned_range"))(
                                             jax.random.PRNGKey(1))
  x0 = np.asarray(x0)
  assert x0.shape == (4, 8, 8, 1) and np.all(np.isfinite(x0))
  assert np.abs(x0).max() <= 1.0 + 1e-6  # the last step returns the clipped x_0's mean
