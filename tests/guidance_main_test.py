"""End to end through main.run: conditional training with label dropout, --mode=train_classifier
(checkpoints, resume, accuracy per t band), and guided --mode=sample with its classes x scales grid."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import main
from configs import tiny, vp_digits
from diffusion_jax import classifier_training, config_validation, experiment, inference, parallel
from diffusion_jax import train, train_state


def _config():
  config = tiny.get_config()
  config.model.num_classes = 10
  config.training.label_dropout = 0.5
  config.training.num_train_steps = 4
  config.training.checkpoint_every_steps = 4
  config.training.sample_every_steps = 0
  config.sampling.sampler = "ddim"
  config.sampling.num_steps = 4
  config.sampling.num_samples = 8
  config.sampling.batch_size = 8
  cmodel = config.classifier.model
  cmodel.ch, cmodel.ch_mult, cmodel.num_res_blocks = 16, (1, 2), 1
  cmodel.attn_resolutions, cmodel.num_head_channels, cmodel.norm_groups = (4,), 16, 8
  ct = config.classifier.training
  ct.batch_size, ct.num_train_steps, ct.log_every_steps = 16, 4, 2
  ct.checkpoint_every_steps, ct.keep_checkpoints, ct.eval_batches = 2, 2, 1
  return config


def test_label_dropout_replaces_labels_with_the_null_label_per_example():
  config = _config()
  model, diffusion_ = experiment.create_model(config), experiment.create_diffusion(config)
  assert model.num_classes == 11 and experiment.null_label(config) == 10
  tx = train_state.make_optimizer(config)
  seen = []

  class Spy(type(model)):
    def __call__(self, x, t, y=None, train=False):
      jax.debug.callback(lambda v: seen.append(np.asarray(v)), y)
      return super().__call__(x, t, y, train)

  spy = Spy(**{f: getattr(model, f) for f in model.__dataclass_fields__ if f not in ("parent", "name")})
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = parallel.replicate(experiment.init_train_state(config, spy, tx), mesh)
  step = parallel.pmap(train.make_train_step(config, spy, diffusion_, tx), mesh)
  batch = {"image": np.zeros((1, 64, 8, 8, 1), np.float32), "label": np.arange(64, dtype=np.int32)[None] % 10}
  jax.block_until_ready(step(state, parallel.shard(batch, mesh)))
  labels = seen[-1].reshape(-1)
  dropped = labels == 10
  assert 16 < dropped.sum() < 48                                  # p = 0.5 of 64
  np.testing.assert_array_equal(labels[~dropped], (np.arange(64) % 10)[~dropped])


@pytest.mark.slow
def test_train_classifier_resume_and_guided_sampling(tmp_path):
  config, workdir = _config(), str(tmp_path)
  main.run(config, workdir, "train")
  state = main.run(config, workdir, "train_classifier")
  directory = classifier_training.classifier_dir(workdir)
  assert sorted(os.listdir(os.path.join(directory, "checkpoints"))) == ["2", "4"]
  with open(os.path.join(directory, "eval_4.json")) as f:
    result = json.load(f)
  assert 0 <= result["accuracy"] <= 1 and result["num_examples"] == 16
  assert {k for k in result if k.startswith("accuracy_t")} <= {
      "accuracy_t0-5", "accuracy_t5-10", "accuracy_t10-15", "accuracy_t15-20"}
  # Rerunning resumes at the last step: nothing more to train, the same parameters.
  again = main.run(config, workdir, "train_classifier")
  jax.tree.map(np.testing.assert_array_equal, again.params, state.params)

  for kind in ("classifier", "classifier_free"):
    config.sampling.guidance.kind = kind
    config.sampling.guidance.classes = (1, 7)
    config.sampling.guidance.grid_scales = (0.0, 2.0, 5.0)
    out = main.run(config, workdir, "sample")
    with np.load(os.path.join(out, "samples.npz")) as f:
      assert set(np.unique(f["labels"])) <= {1, 7} and f["images"].shape == (8, 8, 8, 1)
    with np.load(os.path.join(out, "guidance_grid.npz")) as f:
      assert f["images"].shape == (2, 3, 8, 8, 1) and f["images"].dtype == np.uint8
      np.testing.assert_array_equal(f["classes"], [1, 7])
      if kind == "classifier":  # different scales, different images from the same x_T
        assert np.any(f["images"][:, 0] != f["images"][:, 2])
    assert os.path.exists(os.path.join(out, "guidance_grid.png"))
  # A 4-step model's label embedding moves its eps by ~1e-5, too little for the classifier-free
  # grid's uint8 columns to differ; its guided eps do (w = 5 vs 0 on the same x_t).
  model, diffusion_, params, _ = inference.restore(config, workdir, None)
  guidance_ = inference.load_guidance(config, workdir)
  x_t = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  t, labels = jnp.array([1, 5, 10, 19]), jnp.array([1, 7, 1, 7])
  eps = lambda scale: np.asarray(inference.guided_model_fn(
      config, model, diffusion_, params, labels, guidance_, scale)(x_t, t))
  assert np.abs(eps(5.0) - eps(0.0)).max() > 1e-6


def test_classifier_config_errors_name_the_field():
  config = _config()
  config.classifier.model.attn_resolutions = (2,)
  with pytest.raises(config_validation.ConfigError, match=r"classifier.model.attn_resolutions.*\[8, 4\]"):
    config_validation.validate_classifier_config(config, num_devices=8)
  config = _config()
  config.model.num_classes = None
  config.training.label_dropout = 0.0
  with pytest.raises(config_validation.ConfigError, match="model.num_classes"):
    config_validation.validate_classifier_config(config, num_devices=8)
  config = _config()
  config.classifier.training.batch_size = 12
  with pytest.raises(config_validation.ConfigError, match="classifier.training.batch_size=12"):
    config_validation.validate_classifier_config(config, num_devices=8)


def test_guidance_of_a_score_model_is_rejected():
  for config in (_config(), vp_digits.get_config()):
    config.model.num_classes, config.training.label_dropout = 10, 0.1
    config.sampling.guidance.kind = "classifier_free"
    if config.diffusion.objective == "ddpm":
      config_validation.validate_config(config, num_devices=8)  # a DDPM model: fine
      continue
    with pytest.raises(config_validation.ConfigError,
                       match=r"sampling.guidance.kind.*objective='score_sde'.*kind=none"):
      config_validation.validate_config(config, num_devices=8)


def test_band_of_splits_t_into_equal_bands():
  t = jnp.array([0, 249, 250, 499, 500, 999])
  np.testing.assert_array_equal(classifier_training.band_of(t, 1000, 4), [0, 0, 1, 1, 2, 3])
