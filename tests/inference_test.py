"""The inference module through `main.py`: a sampler registered here alone, read-only restores.

main.py runs in-process (its `main` with parsed flags), so a sampler registered in this file is
visible to it, exactly as a new sampler module would be.
"""

import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from diffusion_jax import train
from diffusion_jax.samplers import registry
from checkpoint_files import damage, snapshot
from main_in_process import run_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run with checkpoints at steps 10 and 20."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny.get_config()
  config.training.sample_every_steps = 0
  train.train_and_evaluate(config, workdir)
  return workdir


def _toy_run(model_fn, schedule, shape, key, *, level, num_steps, mean_type, var_type,
             clip_denoised, x_T, return_trajectory):
  """Calls the model once, then returns a constant image at `level` (what the test checks)."""
  del key, num_steps, mean_type, var_type, clip_denoised, x_T, return_trajectory
  out = model_fn(jnp.zeros(shape), jnp.zeros((shape[0],), jnp.int32))
  return jnp.full(shape, level) + 0.0 * out


@pytest.fixture()
def toy_sampler():
  spec = registry.register(registry.Sampler(
      name="toy_constant", run=_toy_run, summary="a test sampler: a constant image",
      options=(registry.Option("level", 0.0, "the constant", minimum=-1.0, maximum=1.0),)))
  yield spec
  registry.unregister(spec.name)


@pytest.mark.slow
def test_a_sampler_registered_here_runs_through_main(trained, toy_sampler, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  # The section config.sampling.toy_constant exists because the sampler is registered.
  run_main(f"--workdir={workdir}", "--mode=sample", "--config.sampling.sampler=toy_constant",
            "--config.sampling.toy_constant.level=0.5")
  with np.load(os.path.join(workdir, "samples", "20", "samples.npz")) as data:
    images = data["images"]
  assert images.shape == (16, 8, 8, 1)
  np.testing.assert_array_equal(images, 191)  # round((0.5 + 1) * 127.5)
  # Its declared bounds are validated like any built-in option: a short error, exit status 2.
  with pytest.raises(SystemExit) as e:
    run_main(f"--workdir={workdir}", "--mode=sample", "--config.sampling.sampler=toy_constant",
              "--config.sampling.toy_constant.level=3.0")
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "config.sampling.toy_constant.level=3.0" in err and "<= 1.0" in err
  assert "Traceback" not in err


@pytest.mark.slow
def test_sample_mode_skips_a_corrupted_newest_checkpoint_read_only(trained, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  damage(os.path.join(workdir, "checkpoints", "20"))
  before = snapshot(os.path.join(workdir, "checkpoints"))
  with caplog.at_level("WARNING"):
    run_main(f"--workdir={workdir}", "--mode=sample")
  assert snapshot(os.path.join(workdir, "checkpoints")) == before  # byte for byte
  assert sorted(os.listdir(os.path.join(workdir, "samples"))) == ["10"]  # the previous one
  with np.load(os.path.join(workdir, "samples", "10", "samples.npz")) as data:
    assert data["images"].shape == (16, 8, 8, 1)
  assert any("Checkpoint 20" in r.getMessage() and "Skipped" in r.getMessage()
             for r in caplog.records)
  assert not os.path.exists(os.path.join(workdir, "corrupted_checkpoints"))
