"""Tests of training.n_jitted_steps: k optimizer steps per dispatch (`train.make_multi_step`, a
lax.scan inside the pmapped step) compute the k single steps bit for bit, through the real loop
(stacking, sharding, per-step metrics, resuming at a step that is not a multiple of k); and the
validator's errors.

On XLA:CPU the scan is unrolled (a rolled loop body would get no Eigen convolutions: XLA:CPU's
ConvCanonicalization pass visits only the entry computation). Without `train._fusion_barrier`
between the unrolled steps XLA fuses, hence contracts a * b + c into FMAs, differently in one
program of k steps than in k programs of one, and the states drift apart by float32 rounding
(~1e-8 after 4 tiny-config steps); `test_fusion_barrier_is_what_makes_k_steps_bit_identical`
shows both.

Runs on the 8 fake CPU devices of conftest.py with configs/tiny.py.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from diffusion_jax import config_validation, experiment, parallel, train, train_state


class ToyState(NamedTuple):
  step: jnp.ndarray
  w: jnp.ndarray


@pytest.mark.parametrize("unroll", [None, False])  # CPU's default (unrolled), and rolled
def test_multi_step_scans_and_stacks_metrics(unroll):
  """A toy step with a pmean and per-step randomness: k = 3 in one call equals 3 calls."""

  def step(state, batch):
    noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), state.step), ())
    g = jax.lax.pmean(jnp.mean(batch["x"]) * state.w + noise, parallel.AXIS)
    return ToyState(state.step + 1, state.w - 0.1 * g), {"g": g}

  assert train.make_multi_step(step, 1) is step  # k = 1: the step itself, no scan
  mesh = parallel.make_mesh(jax.local_devices()[:2])
  single = parallel.pmap(step, mesh)
  multi = parallel.pmap(train.make_multi_step(step, 3, unroll), mesh)
  host = ToyState(np.int32(0), np.float32(1.0))
  batches = [{"x": np.arange(4, dtype=np.float32).reshape(2, 2) + i} for i in range(3)]
  state, gs = parallel.replicate(host, mesh), []
  for b in batches:
    state, metrics = single(state, parallel.shard(b, mesh))
    gs.append(parallel.unreplicate(metrics)["g"])
  stacked = train.stack_batches(batches)
  assert stacked["x"].shape == (2, 3, 2)  # [local_devices, k, per_device]
  state3, metrics3 = multi(parallel.replicate(host, mesh), parallel.shard(stacked, mesh))
  assert metrics3["g"].shape == (2, 3)  # [devices, k]
  np.testing.assert_array_equal(parallel.unreplicate(metrics3)["g"], np.stack(gs))
  chex.assert_trees_all_equal(parallel.unreplicate(state3), parallel.unreplicate(state))


def test_nan_guard_names_the_step_inside_a_dispatch():
  """A dispatch of steps 5..8 with a NaN loss at step 7: the error names step 7."""
  losses = np.tile(np.array([1.0, 2.0, np.nan, 3.0], np.float32), (8, 1))  # [devices, k]
  pending = [(4, {"loss": jnp.ones((8,))}), (8, {"loss": jnp.asarray(losses)})]
  assert [s for s, _ in train._per_step(pending)] == [4, 5, 6, 7, 8]
  with pytest.raises(train.NonFiniteLossError, match=r"at step 7: \{'loss': nan\}"):
    train._check_finite(pending, None, "/tmp")
  assert train._check_finite(pending[:1], None, "/tmp") == {"loss": 1.0}


def _config(num_train_steps: int, n_jitted_steps: int):
  config = tiny.get_config()
  config.model.dropout = 0.1  # per-example dropout masks from fold_in(step key, example index)
  config.training.num_train_steps = num_train_steps
  config.training.n_jitted_steps = n_jitted_steps
  config.training.log_every_steps = 4
  config.training.checkpoint_every_steps = 4
  config.training.sample_every_steps = 0
  return config


@pytest.fixture
def spy(monkeypatch):
  """Records, per call of the loop's metric check, its pending entries (last step, metric
  rank: 0 single step, 1 stacked) and the host metrics of each step."""
  calls = []
  real = train._per_step

  def per_step(pending):
    host = real(pending)
    calls.append(([(s, np.ndim(parallel.unreplicate(m)["loss"])) for s, m in pending], host))
    return host

  monkeypatch.setattr(train, "_per_step", per_step)
  return calls


def _steps(calls) -> dict:
  return {s: m for _, host in calls for s, m in host}


def _assert_equal(state, expected):
  assert int(state.opt_state[1][0].count) == int(state.step)  # Adam's count follows the steps
  chex.assert_trees_all_equal(state, expected)


@pytest.mark.slow
def test_four_steps_per_dispatch_equal_single_steps(tmp_path, spy):
  """12 steps with dropout through the real loop, all bit for bit: k = 4 against k = 1, a
  k = 4 run resumed at step 4 against an uninterrupted one, and a k = 1 run to step 6 resumed
  with k = 4 (single steps 7, 8, then 4 at a time) against k = 1."""
  single = train.train_and_evaluate(_config(12, 1), str(tmp_path / "k1"))
  single_metrics = _steps(spy)
  assert [p for p, _ in spy] == [[(s - 3 + j, 0) for j in range(4)] for s in (4, 8, 12)]
  spy.clear()

  multi = train.train_and_evaluate(_config(12, 4), str(tmp_path / "k4"))
  assert [p for p, _ in spy] == [[(4, 1)], [(8, 1)], [(12, 1)]]  # one stacked entry a dispatch
  assert _steps(spy) == single_metrics  # each step's own loss, grad norm, lr
  _assert_equal(multi, single)
  assert int(multi.step) == 12
  spy.clear()

  workdir = str(tmp_path / "k4_resumed")
  train.train_and_evaluate(_config(4, 4), workdir)
  resumed = train.train_and_evaluate(_config(12, 4), workdir)
  assert _steps(spy) == single_metrics  # steps 1-4, then 5-12 after the resume
  _assert_equal(resumed, single)
  spy.clear()

  workdir = str(tmp_path / "k1_then_k4")
  train.train_and_evaluate(_config(6, 1), workdir)
  spy.clear()
  aligned = train.train_and_evaluate(_config(12, 4), workdir)
  assert [p for p, _ in spy] == [[(7, 0), (8, 0)], [(12, 1)]]
  assert _steps(spy) == {s: single_metrics[s] for s in range(7, 13)}
  _assert_equal(aligned, single)


def test_fusion_barrier_is_what_makes_k_steps_bit_identical(monkeypatch):
  """Four tiny-config steps with dropout on 8 devices: one dispatch of k = 4 equals four
  single steps bit for bit; without the barrier between the unrolled steps it does not (so the
  test above can fail), though it agrees to float32 rounding."""
  config = _config(4, 4)
  mesh = parallel.make_mesh()
  model, diffusion_ = experiment.create_model(config), experiment.create_diffusion(config)
  tx = train_state.make_optimizer(config)
  host = jax.device_get(experiment.init_train_state(config, model, tx))
  step = train.make_train_step(config, model, diffusion_, tx)
  layout = parallel.batch_layout(config.training.batch_size, mesh)
  rng = np.random.default_rng(0)
  size, ch = config.data.image_size, config.data.num_channels
  batches = [{"image": rng.uniform(-1, 1, (layout.local_devices, layout.per_device, size, size,
                                            ch)).astype(np.float32),
              "label": np.zeros((layout.local_devices, layout.per_device), np.int32)}
             for _ in range(4)]
  single = train.pmap_train_step(step, mesh)
  expected = parallel.replicate(host, mesh)
  for batch in batches:
    expected, _ = single(expected, parallel.shard(batch, mesh))
  expected = parallel.unreplicate(expected)

  def four_in_one():
    multi = train.pmap_train_step(train.make_multi_step(step, 4), mesh)
    state, _ = multi(parallel.replicate(host, mesh),
                     parallel.shard(train.stack_batches(batches), mesh))
    return parallel.unreplicate(state)

  chex.assert_trees_all_equal(four_in_one(), expected)
  monkeypatch.setattr(train, "_fusion_barrier", lambda state: state)
  fused = four_in_one()
  differ = [a for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(expected))
            if not np.array_equal(a, b)]
  assert len(differ) > len(jax.tree.leaves(expected)) // 2
  chex.assert_trees_all_close(fused, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field,value,match", [
    ("n_jitted_steps", 0, r"n_jitted_steps=0: must be an integer >= 1"),
    ("n_jitted_steps", -4, r"n_jitted_steps=-4: must be an integer >= 1"),
    ("num_train_steps", 10, r"num_train_steps=10: must be a multiple of "
     r"training.n_jitted_steps=4 .*=8 or 12, or --config.training.n_jitted_steps=1"),
    ("checkpoint_every_steps", 6, r"checkpoint_every_steps=6: must be a multiple of"),
    ("log_every_steps", 2, r"log_every_steps=2: .*log_every_steps=4 or 8"),
    ("sample_every_steps", 5, r"sample_every_steps=5: must be a multiple of"),
])
def test_validation_names_the_field_and_the_fix(field, value, match):
  config = _config(12, 4)
  config_validation.validate_config(config, num_devices=8)  # multiples of 4, no grids: valid
  config.training.sample_every_steps = 8
  config_validation.validate_config(config, num_devices=8)
  config.training[field] = value
  with pytest.raises(config_validation.ConfigError, match=f"config.training.{match}"):
    config_validation.validate_config(config, num_devices=8)
