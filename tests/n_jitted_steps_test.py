"""Tests of training.n_jitted_steps: k optimizer steps per dispatch (`train.make_multi_step`, a
lax.scan inside the pmapped step) compute the k single steps, through the real loop (stacking,
sharding, per-step metrics, resuming at a step that is not a multiple of k); and the
validator's errors.

Not bit for bit on XLA:CPU: there the scan is unrolled (a rolled loop body would get no Eigen
convolutions: XLA:CPU's ConvCanonicalization pass visits only the entry computation), and XLA
fuses, hence contracts a * b + c into FMAs, differently in one program of k steps than in k
programs of one (optimization barriers between the steps do not change that: XLA:CPU drops them
before fusion; the EMA and Adam's second moment differ first). After 12 tiny-config steps the
parameters differ by < 1e-6 (one step moves them by ~1e-3), each step's metrics by < 3e-7
relative: the k = 1 comparisons use tolerances just above that, which any wrong batch or step
order exceeds by orders of magnitude. Runs with the same k run the same programs and are compared
bit for bit.

Runs on the 8 fake CPU devices of conftest.py with configs/tiny.py.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from diffusion_jax import config_validation, parallel, train


@pytest.mark.parametrize("unroll", [None, False])  # CPU's default (unrolled), and rolled
def test_multi_step_scans_and_stacks_metrics(unroll):
  """A toy step with a pmean and per-step randomness: k = 3 in one call equals 3 calls."""

  def step(state, batch):
    noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), state["step"]), ())
    g = jax.lax.pmean(jnp.mean(batch["x"]) * state["w"] + noise, parallel.AXIS)
    return {"step": state["step"] + 1, "w": state["w"] - 0.1 * g}, {"g": g}

  assert train.make_multi_step(step, 1) is step  # k = 1: the step itself, no scan
  mesh = parallel.make_mesh(jax.local_devices()[:2])
  single = parallel.pmap(step, mesh)
  multi = parallel.pmap(train.make_multi_step(step, 3, unroll), mesh)
  host = {"step": np.int32(0), "w": np.float32(1.0)}
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


def _assert_close(state, expected):
  """k = 4 against k = 1: equal up to float32 rounding (see the module docstring)."""
  assert int(state.step) == int(expected.step)
  assert int(state.opt_state[1][0].count) == int(expected.opt_state[1][0].count)  # Adam's
  chex.assert_trees_all_close(state.params, expected.params, rtol=1e-5, atol=2e-6)
  chex.assert_trees_all_close(state.ema_params, expected.ema_params, rtol=1e-5, atol=2e-6)
  chex.assert_trees_all_close(state.opt_state, expected.opt_state, rtol=1e-5, atol=1e-7)


def _assert_metrics_close(metrics, expected):
  assert sorted(metrics) == sorted(expected)
  for s in expected:
    assert sorted(metrics[s]) == sorted(expected[s])
    np.testing.assert_allclose([metrics[s][k] for k in sorted(metrics[s])],
                               [expected[s][k] for k in sorted(metrics[s])], rtol=1e-6,
                               err_msg=f"step {s}")


@pytest.mark.slow
def test_four_steps_per_dispatch_match_single_steps(tmp_path, spy):
  """12 steps with dropout through the real loop: k = 4 against k = 1 (to rounding), a k = 4
  run resumed at step 4 against an uninterrupted one (bit for bit), and a k = 1 run to step 6
  resumed with k = 4 (single steps 7, 8, then 4 at a time) against k = 1 (to rounding)."""
  single = train.train_and_evaluate(_config(12, 1), str(tmp_path / "k1"))
  single_metrics = _steps(spy)
  assert [p for p, _ in spy] == [[(s - 3 + j, 0) for j in range(4)] for s in (4, 8, 12)]
  spy.clear()

  multi = train.train_and_evaluate(_config(12, 4), str(tmp_path / "k4"))
  assert [p for p, _ in spy] == [[(4, 1)], [(8, 1)], [(12, 1)]]  # one stacked entry a dispatch
  multi_metrics = _steps(spy)
  _assert_metrics_close(multi_metrics, single_metrics)  # each step's own loss, grad norm, lr
  _assert_close(multi, single)
  assert int(multi.opt_state[1][0].count) == 12
  spy.clear()

  workdir = str(tmp_path / "k4_resumed")
  train.train_and_evaluate(_config(4, 4), workdir)
  resumed = train.train_and_evaluate(_config(12, 4), workdir)
  assert _steps(spy) == multi_metrics
  chex.assert_trees_all_equal(resumed, multi)  # the same programs: bit for bit
  spy.clear()

  workdir = str(tmp_path / "k1_then_k4")
  train.train_and_evaluate(_config(6, 1), workdir)
  spy.clear()
  aligned = train.train_and_evaluate(_config(12, 4), workdir)
  assert [p for p, _ in spy] == [[(7, 0), (8, 0)], [(12, 1)]]
  _assert_metrics_close(_steps(spy), {s: single_metrics[s] for s in range(7, 13)})
  _assert_close(aligned, single)


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
