"""Tests of the trainer: the pmapped step (traces once, device-count invariant with dropout and
importance sampling, deterministic), the real loop end to end (digits builder and tfds mock
cifar10), and the NaN guard.

Runs on the 8 fake CPU devices of conftest.py with configs/tiny.py.
"""

import functools
import json
import os

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import tiny
from diffusion_jax import checkpointing, experiment, inference, input_pipeline, parallel, train
from diffusion_jax import train_state


def _batch(global_batch: int, num_devices: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  per = global_batch // num_devices
  return {"image": rng.uniform(-1, 1, (num_devices, per, 8, 8, 1)).astype(np.float32),
          "label": rng.integers(0, 10, (num_devices, per)).astype(np.int32)}


class _Setup:
  """One model/optimizer/initial state and one pmapped step per device count, compiled once."""

  def __init__(self, config=None):
    self.config = config or tiny.get_config()
    self.model = experiment.create_model(self.config)
    self.diffusion = experiment.create_diffusion(self.config)
    self.tx = train_state.make_optimizer(self.config)
    self.host_state = jax.device_get(experiment.init_train_state(self.config, self.model, self.tx))
    self._steps = {}

  def step_fn(self, num_devices: int):
    if num_devices not in self._steps:
      mesh = parallel.make_mesh(jax.local_devices()[:num_devices])
      # Wrapped before pmap: any retrace of the per-device step fails the test. chex keys its
      # counter by where the function was defined, which is the same for every device count.
      chex.clear_trace_counter()
      step = chex.assert_max_traces(
          train.make_train_step(self.config, self.model, self.diffusion, self.tx), n=1)
      self._steps[num_devices] = (mesh, train.pmap_train_step(step, mesh))
    return self._steps[num_devices]

  def run(self, num_devices: int, num_steps: int, global_batch: int = 16):
    mesh, p_step = self.step_fn(num_devices)
    state = parallel.replicate(self.host_state, mesh)
    losses, self.params_trajectory = [], []
    for i in range(num_steps):
      state, metrics = p_step(state, parallel.shard(_batch(global_batch, num_devices, i), mesh))
      losses.append(np.asarray(metrics["loss"]))
      self.params_trajectory.append(parallel.unreplicate(state.params))
    return parallel.unreplicate(state), np.stack(losses)


@pytest.fixture(scope="module")
def setup():
  return _Setup()


def test_step_traces_once_and_learns_state(setup):
  state, losses = setup.run(8, 3)  # assert_max_traces(n=1) guards the 3 calls
  assert int(state.step) == 3 and int(state.opt_state[1][0].count) == 3
  assert losses.shape == (3, 8) and np.all(losses == losses[:, :1])  # pmean: equal replicas
  # EMA: e_k = d e_{k-1} + (1 - d) p_k from e_0 = initial params, recomputed in float64.
  decay = setup.config.training.ema_decay
  expected = jax.tree.map(lambda x: np.asarray(x, np.float64), setup.host_state.params)
  for params in setup.params_trajectory:
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, expected, params)
  chex.assert_trees_all_close(state.ema_params, expected, rtol=1e-6, atol=1e-7)
  assert not np.allclose(state.params["conv_in"]["kernel"],
                         setup.host_state.params["conv_in"]["kernel"])
  # Same calls again: no retrace (the wrapped step would raise) and bitwise-identical results.
  state2, losses2 = setup.run(8, 3)
  np.testing.assert_array_equal(losses, losses2)
  chex.assert_trees_all_equal(state, state2)


@pytest.mark.slow
def test_one_device_equals_eight_with_dropout_and_importance_sampling():
  """Per-example dropout masks and timesteps come from the global example index: the same
  update on 1 or 8 devices with dropout 0.1 and importance-sampled t (history warmed up)."""
  config = tiny.get_config()
  config.model.dropout = 0.1
  config.training.timestep_sampler = "loss_second_moment"
  setup = _Setup(config)
  history = setup.host_state.loss_history
  rng = np.random.default_rng(0)
  warm = history.replace(losses=rng.uniform(0.1, 2.0, history.losses.shape).astype(np.float32),
                         counts=np.full_like(history.counts, history.history_per_term))
  setup.host_state = setup.host_state.replace(loss_history=warm)
  state8, losses8 = setup.run(8, 3)
  state1, losses1 = setup.run(1, 3)
  np.testing.assert_allclose(losses1[:, 0], losses8[:, 0], rtol=2e-5)
  chex.assert_trees_all_close(state1.params, state8.params, rtol=1e-4, atol=2e-6)
  chex.assert_trees_all_close(state1.loss_history, state8.loss_history, rtol=1e-5, atol=1e-7)
  assert not np.allclose(state8.loss_history.losses, warm.losses)  # the history was updated
  # Dropout is really on: the same steps without it end elsewhere.
  config0 = tiny.get_config()
  config0.training.timestep_sampler = "loss_second_moment"
  plain = _Setup(config0)
  plain.host_state = plain.host_state.replace(loss_history=warm)
  state0, _ = plain.run(1, 3)
  assert not np.allclose(state0.params["conv_out"]["kernel"], state1.params["conv_out"]["kernel"])


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.slow
def test_train_sample_eval_end_to_end_on_digits(tmp_path):
  config = tiny.get_config()
  workdir = str(tmp_path)
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 20
  files = _files(workdir)
  assert "config.json" in files and "samples/20/grid.png" in files
  assert any(f.startswith("events.out.tfevents") for f in files)
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps == [10, 20]  # checkpoint_every_steps=10, keep_checkpoints=2
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["training"]["batch_size"] == 16
  # The saved state is the returned one.
  manager = checkpointing.create_manager(workdir)
  restored = checkpointing.restore_step(manager, state, 20)
  manager.close()
  chex.assert_trees_all_equal(restored, state)
  # Rerunning the finished command trains nothing more.
  again = train.train_and_evaluate(config, workdir)
  chex.assert_trees_all_equal(again, state)

  out = inference.sample(config, workdir)
  with np.load(os.path.join(out, "samples.npz")) as data:
    assert data["images"].shape == (16, 8, 8, 1) and data["images"].dtype == np.uint8
  assert os.path.exists(os.path.join(out, "samples.png"))
  config.eval.ode_bpd = True
  config.eval.ode.rtol = config.eval.ode.atol = 1e-3
  result = inference.evaluate(config, workdir)
  assert result["num_examples"] == 32 and result["step"] == 20
  # An untrained-ish model on 8-bit data: a finite bound well above 0 and below 8 + prior.
  assert 0.5 < result["total_bpd"] < 20
  # Beside it, the probability-flow ODE's bits/dim of the same images, with its protocol.
  assert np.isfinite(result["ode"]["bpd"]) and result["ode"]["mean_nfe"] > 0
  assert result["ode"]["protocol"]["dequantization"] == "uniform"
  with open(os.path.join(workdir, "eval", "bpd_20.json")) as f:
    assert json.load(f)["ode"]["protocol"]["sde"] == "LogSNRVPSDE"


@pytest.mark.slow
def test_end_to_end_on_mock_cifar10(tmp_path, monkeypatch):
  # tfds.testing.mock_data patches the file system while it builds the dataset; orbax's
  # background clean-up of temporary checkpoint directories must not run inside that window.
  monkeypatch.setattr(checkpointing, "create_manager",
                      functools.partial(checkpointing.create_manager, cleanup_tmp_directories=False))
  config = tiny.get_config()
  config.data.dataset = "cifar10"
  config.data.download = False  # mock_data stands for data prepared elsewhere
  config.data.image_size = 32
  config.data.num_channels = 3
  config.data.random_flip = True
  config.model.ch_mult = (1, 2, 2)
  config.model.attn_resolutions = (8,)
  config.training.num_train_steps = 4
  config.training.checkpoint_every_steps = 2
  config.training.log_every_steps = 2
  config.training.sample_every_steps = 0
  with tfds.testing.mock_data(num_examples=32):
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 4
  assert np.all(np.isfinite(state.params["conv_in"]["kernel"]))
  assert sorted(d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == ["2", "4"]


@pytest.mark.slow
def test_non_finite_loss_stops_before_checkpoint(tmp_path, monkeypatch):
  """NaN images from step 13 on: the error names the step; no checkpoint after step 10."""
  real = input_pipeline.create_train_iterator

  def poisoned(data_config, *, layout, seed, start_step=0):
    it = real(data_config, layout=layout, seed=seed, start_step=start_step)
    for i, batch in enumerate(it):
      if i >= 12:
        batch["image"] = np.full_like(batch["image"], np.nan)
      yield batch

  monkeypatch.setattr(input_pipeline, "create_train_iterator", poisoned)
  config = tiny.get_config()
  config.training.sample_every_steps = 0
  with pytest.raises(train.NonFiniteLossError, match=r"step 13.*last good checkpoint: step 10"):
    train.train_and_evaluate(config, str(tmp_path))
  assert [d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()] == ["10"]


@pytest.mark.slow
def test_bfloat16_compute_trains_like_float32_end_to_end(tmp_path):
  """model.dtype=bfloat16 (float32 master weights, Adam moments and EMA; GroupNorm, softmax and
  the loss in float32): the same 30 steps from the same state and batches track float32's loss
  at every step, and the real loop trains, checkpoints and samples."""
  runs = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny.get_config()
    config.model.dtype = dtype
    runs[dtype] = _Setup(config).run(8, 30)
  (state32, loss32), (state16, loss16) = runs["float32"], runs["bfloat16"]
  assert loss16[-5:].mean() < 0.9 * loss16[:5].mean()  # it learns
  np.testing.assert_allclose(loss16[:, 0], loss32[:, 0], rtol=0.01)  # measured: 7e-4
  assert not np.array_equal(loss16, loss32)  # bfloat16 compute did run
  for tree in (state16.params, state16.ema_params, state16.opt_state):
    assert {x.dtype for x in jax.tree.leaves(tree) if x.ndim} == {np.dtype(np.float32)}

  config = tiny.get_config()
  config.model.dtype = "bfloat16"
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 20 and np.isfinite(state.params["conv_out"]["kernel"]).all()
  with np.load(os.path.join(inference.sample(config, str(tmp_path)), "samples.npz")) as data:
    assert data["images"].shape == (16, 8, 8, 1) and data["images"].std() > 0
