"""The trainer's sample-quality evaluation: FID/IS/precision-recall wiring and Analytic-DPM sampling.

The Inception network is replaced by a cheap fixed random projection (its equivalence with the
FID Inception is tested in inception_test.py); what is tested here is what the trainer feeds
the evaluation and what it writes.
"""
import json
import os

import jax
import numpy as np
import pytest

from configs import tiny
from diffusion_jax import experiment, inference, train_state
from diffusion_jax.evaluation import inception, metrics, sample_quality


class _ProjectionExtractor:
  """uint8 [N, 8, 8, 1] -> fixed random 16-d 'pool3' and 10-way logits."""
  feature_dim = 16

  def __init__(self):
    rng = np.random.default_rng(0)
    self.w_pool, self.w_logits = rng.normal(size=(64, 16)), rng.normal(size=(64, 10))
    self.weights_info = {"source_sha256": "stand-in", "sha256": "stand-in"}

  def __call__(self, images):
    x = np.asarray(images, np.float64).reshape(len(images), -1) / 255.0
    return {"pool3": (x @ self.w_pool).astype(np.float32),
            "logits_unbiased": (x @ self.w_logits).astype(np.float32)}


def _ema_params(config):
  model = experiment.create_model(config)
  return experiment.init_train_state(config, model, train_state.make_optimizer(config)).ema_params


@pytest.mark.slow
def test_fid_evaluation_through_the_trainer(tmp_path, monkeypatch):
  extractor = _ProjectionExtractor()
  monkeypatch.setattr(inception.InceptionExtractor, "from_file", classmethod(lambda cls, path, **kw: extractor))
  real = np.random.default_rng(1).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
  feats = extractor(real)["pool3"].astype(np.float64)
  ref_path = str(tmp_path / "ref.npz")
  sample_quality.save_reference_stats(ref_path, sample_quality.ReferenceStats(
      mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), features=feats,
      metadata={"image_shape": [8, 8, 1], "inception_weights_sha256": "stand-in", "num_images": 40}))
  config = tiny.get_config()
  with config.unlocked():
    config.data.dataset = "mnist"  # not digits: only the FID path runs
  config.eval.inception_weights = "stand-in.npz"
  config.eval.reference_stats = ref_path
  config.eval.num_quality_samples = 24
  config.eval.quality_batch_size = 16
  config.eval.pr_num_samples = 24
  config.sampling.sampler = "ddim"
  config.sampling.num_steps = 5
  workdir = str(tmp_path / "run")
  result = inference.evaluate_sample_quality(config, workdir, _ema_params(config), step=7)["fid"]
  [name] = [f[:-5] for f in os.listdir(os.path.join(workdir, "eval")) if f.endswith(".json")]
  assert name.startswith("fid_7_ddim-")
  with open(os.path.join(workdir, "eval", name + ".json")) as f:
    written = json.load(f)
  assert written["fid"] == pytest.approx(result["fid"])
  assert written["num_samples"] == 24
  protocol = json.dumps(written["protocol"])
  assert '"sampler": "ddim"' in protocol and '"num_steps": 5' in protocol and '"step": 7' in protocol
  # Recompute FID from the saved uint8 chunks with the independent closed form of metrics.
  chunks = sorted(p for p in os.listdir(os.path.join(workdir, "eval", name)) if p.endswith(".npz"))
  samples = np.concatenate([np.load(os.path.join(workdir, "eval", name, c))["images"] for c in chunks])
  assert samples.shape == (24, 8, 8, 1) and samples.dtype == np.uint8
  fake = extractor(samples)["pool3"].astype(np.float64)
  expected = metrics.frechet_distance(fake.mean(0), np.cov(fake, rowvar=False), feats.mean(0),
                                      np.cov(feats, rowvar=False))
  assert result["fid"] == pytest.approx(expected, rel=1e-6)
  # Another sampler setting on the same checkpoint is a separate result, not a protocol clash.
  config.sampling.num_steps = 4
  inference.evaluate_sample_quality(config, workdir, _ema_params(config), step=7)
  results = [f for f in os.listdir(os.path.join(workdir, "eval")) if f.endswith(".json")]
  assert len(results) == 2 and all(f.startswith("fid_7_ddim-") for f in results)


@pytest.mark.slow
def test_analytic_dpm_sampling_through_the_trainer(tmp_path):
  config = tiny.get_config()
  config.sampling.sampler = "analytic_ddpm"
  config.sampling.num_steps = 5
  config.sampling.analytic.num_samples = 32
  config.training.sample_every_steps = 0
  params = _ema_params(config)
  ms_eps = inference.prepare_sampler(config, experiment.create_model(config),
                                    experiment.create_diffusion(config), params)["ms_eps"]
  assert ms_eps.shape == (config.diffusion.num_timesteps,) and np.all(np.isfinite(ms_eps)) and np.all(ms_eps > 0)
  result = inference.evaluate_sample_quality(config, str(tmp_path), params, step=1)["digits"]
  assert np.isfinite(result["digits_fd"]) and result["num_samples"] == 64
  assert result["protocol"]["sampler"] == "analytic_ddpm"


def test_analytic_sampler_with_training_grids_is_refused():
  from diffusion_jax import config_validation
  config = tiny.get_config()
  config.sampling.sampler = "analytic_ddim"
  with pytest.raises(config_validation.ConfigError, match="training.sample_every_steps=0"):
    config_validation.validate_config(config, num_devices=8)
