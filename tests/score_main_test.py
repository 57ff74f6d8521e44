"""Score-matching objectives through the trainer and main.py: the step (traces once, the loss of
`losses`), train -> sample -> ODE bits/dim end to end, and the config errors."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from diffusion_jax import config_validation, experiment, losses, parallel, train, train_state
from diffusion_jax.models.model_fn import make_model_fn
from main_in_process import run_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECTIVES = {
    "score_sde": ["--config.diffusion.objective=score_sde", "--config.diffusion.num_timesteps=50",
                  "--config.sampling.sampler=pc", "--config.sampling.pc.predictor=euler_maruyama",
                  "--config.sampling.num_steps=4"],
    "ncsn": ["--config.diffusion.objective=ncsn", "--config.diffusion.num_timesteps=4",
             "--config.diffusion.sigma_max=5.0", "--config.sampling.sampler=annealed_langevin",
             "--config.sampling.annealed_langevin.n_steps_each=2"],
}


def _tiny(objective):
  config = tiny.get_config()
  config.diffusion.objective = objective
  config.eval.compute_bpd = False
  if objective == "score_sde":
    config.diffusion.num_timesteps = 50
    config.sampling.sampler = "pc"
  else:
    config.diffusion.num_timesteps = 4
    config.sampling.sampler = "annealed_langevin"
  return config


@pytest.mark.parametrize("objective", ["score_sde", "ncsn"])
def test_score_step_is_the_losses(objective):
  """The pmapped step (8 devices) logs the library's objective on the draws it makes; that the
  step does not depend on the device layout is the trainer's, tested in train_test.py."""
  config = _tiny(objective)
  model, diffusion_ = experiment.create_model(config), experiment.create_diffusion(config)
  tx = train_state.make_optimizer(config)
  host = jax.device_get(experiment.init_train_state(config, model, tx))
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32)
  mesh = parallel.make_mesh(jax.local_devices()[:8])
  chex.clear_trace_counter()  # chex counts traces by definition site
  step = chex.assert_max_traces(train.make_train_step(config, model, diffusion_, tx), n=1)
  p_step = train.pmap_train_step(step, mesh)
  batch = {"image": images.reshape(8, -1, 8, 8, 1), "label": np.zeros((8, 2), np.int32)}
  state, metrics = p_step(parallel.replicate(host, mesh), parallel.shard(batch, mesh))
  logged = float(parallel.unreplicate(metrics)["loss"])
  assert int(parallel.unreplicate(state).step) == 1
  # The logged loss is the library's objective on the draws the step makes (example keys from
  # fold_in(fold_in(train_key, step), i), split three ways: time, noise, dropout).
  step_key = jax.random.fold_in(experiment.base_keys(config)["train"], 0)
  keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(step_key, i), 3))(jnp.arange(16))
  objective_ = train.score_objective(config, diffusion_)
  t = jax.vmap(objective_.draw)(keys[:, 0])
  noise = jax.vmap(lambda k: jax.random.normal(k, (8, 8, 1)))(keys[:, 1])
  model_fn = make_model_fn(model, host.params, train=True)
  sde = diffusion_.sde
  if objective == "score_sde":
    assert 1e-5 <= float(t.min()) and float(t.max()) <= 1.0
    terms = losses.score_matching_losses(model_fn, sde, images, t, noise, time_input="continuous")
  else:
    assert t.dtype == jnp.int32 and 0 <= int(t.min()) and int(t.max()) < 4
    terms = losses.ncsn_losses(model_fn, sde, images, t, noise, prediction="eps",
                               time_input="continuous")
  np.testing.assert_allclose(logged, float(jnp.mean(terms.loss)), rtol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["score_sde", "ncsn"])
def test_train_then_sample_through_main(objective, tmp_path):
  workdir = str(tmp_path / objective)
  common = [f"--workdir={workdir}", *OBJECTIVES[objective], "--config.eval.compute_bpd=False",
            "--config.training.num_train_steps=6", "--config.training.checkpoint_every_steps=3",
            "--config.training.sample_every_steps=6", "--config.training.log_every_steps=3"]
  run_main(*common)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  assert os.path.exists(os.path.join(workdir, "samples", "6", "grid.png"))
  run_main(*common, "--mode=sample", "--config.sampling.num_samples=8",
            "--config.sampling.batch_size=8")
  with np.load(os.path.join(workdir, "samples", "6", "samples.npz")) as data:
    images = data["images"]
  assert images.shape == (8, 8, 8, 1) and images.dtype == np.uint8
  assert len(np.unique(images)) >= 2  # not a constant image (a 6-step model may saturate)
  if objective == "score_sde":  # a score model's likelihood is the probability-flow ODE's
    run_main(*common, "--mode=eval", "--config.eval.ode_bpd=True", "--config.eval.num_batches=1",
              "--config.eval.batch_size=8", "--config.eval.ode.rtol=1e-3",
              "--config.eval.ode.atol=1e-3", "--config.eval.num_quality_samples=8",
              "--config.eval.quality_batch_size=8")
    with open(os.path.join(workdir, "eval", "bpd_6.json")) as f:
      result = json.load(f)
    assert "total_bpd" not in result and result["num_examples"] == 8
    assert 0 < result["ode"]["bpd"] < 20 and result["ode"]["protocol"]["sde"] == "VPSDE"


def test_config_errors_name_the_field_and_the_fix():
  def error(**fields):
    config = _tiny("score_sde")
    for name, value in fields.items():
      section, key = name.split("__")
      config[section][key] = value
    with pytest.raises(config_validation.ConfigError) as e:
      config_validation.validate_config(config, num_devices=1)
    return str(e.value)

  assert "'ddpm', 'score_sde', 'ncsn'" in error(diffusion__objective="smld")
  assert "'vp', 'subvp', 've'" in error(diffusion__sde="edm")
  assert "'sigma2', 'likelihood'" in error(diffusion__sde_weighting="uniform")
  assert "config.sampling.sampler='ddim'" in error(sampling__sampler="ddim") and "'pc'" in error(
      sampling__sampler="ddim")
  assert "config.eval.compute_bpd=True" in error(eval__compute_bpd=True)
  assert "v needs a variance-preserving SDE" in error(diffusion__sde="ve", diffusion__mean_type="v")
  assert "config.diffusion.var_type='learned_range'" in error(diffusion__var_type="learned_range")
  assert "exceed beta_max" in error(diffusion__num_timesteps=20)
  assert "config.training.timestep_sampler" in error(training__timestep_sampler="loss_second_moment")
  assert "config.diffusion.loss_type" in error(diffusion__loss_type="kl")
  assert "num_steps=7 is not possible" in error(sampling__num_steps=7)  # reverse_diffusion walks N
