"""Tests of diffusion_jax.checkpointing: round trip, keep-last-N, and damaged checkpoints."""

import os

import chex
import jax
import numpy as np
import optax
import pytest

from diffusion_jax import checkpointing, timestep_sampling, train_state


def _state(seed: int, with_history: bool = False) -> train_state.TrainState:
  rng = np.random.default_rng(seed)
  params = {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
                     "bias": rng.normal(size=(4,)).astype(np.float32)}}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  history = timestep_sampling.init_loss_history(5) if with_history else None
  state = train_state.create_train_state(params, tx, history)
  grads = jax.tree.map(lambda p: np.full_like(p, 0.5), params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  state = state.replace(step=state.step + seed, params=optax.apply_updates(state.params, updates),
                        opt_state=opt_state)
  return jax.device_get(state)


def _save(workdir, steps, keep=5, with_history=False):
  manager = checkpointing.create_manager(str(workdir), keep=keep)
  states = {}
  for step in steps:
    states[step] = _state(step, with_history)
    checkpointing.save(manager, step, states[step])
  checkpointing.wait(manager)
  manager.close()
  return states


def _restore_latest(workdir, template):
  manager = checkpointing.create_manager(str(workdir))
  try:
    return checkpointing.restore_latest(manager, template)
  finally:
    manager.close()


def test_round_trip_is_exact_including_optimizer_and_history(tmp_path):
  states = _save(tmp_path, [3], with_history=True)
  restored, step = _restore_latest(tmp_path, _state(0, with_history=True))
  assert step == 3
  assert isinstance(restored, train_state.TrainState)
  chex.assert_trees_all_equal(restored, states[3])  # params, EMA, Adam mu/nu/count, history
  assert int(restored.opt_state[1][0].count) == 1


def test_no_checkpoint_returns_none(tmp_path):
  assert _restore_latest(tmp_path, _state(0)) == (None, None)


def test_keeps_last_n(tmp_path):
  _save(tmp_path, [1, 2, 3, 4], keep=2)
  assert sorted(d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == ["3", "4"]


def test_half_written_checkpoint_is_ignored(tmp_path):
  states = _save(tmp_path, [2])
  # What a run killed during a save leaves behind: orbax's temporary directory.
  os.makedirs(tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp" / "state")
  restored, step = _restore_latest(tmp_path, _state(0))
  assert step == 2
  chex.assert_trees_all_equal(restored, states[2])


def _damage(directory, how):
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs
                 if os.path.basename(d) == "d")  # the array data files
  assert files, f"no data files under {directory}"
  for path in files:
    with open(path, "r+b") as f:
      if how == "truncate":
        f.truncate(os.path.getsize(path) // 2)
      else:  # flip bytes in the middle of the data
        f.seek(os.path.getsize(path) // 2)
        chunk = f.read(8)
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_latest_checkpoint_is_reported_and_previous_used(tmp_path, how, caplog):
  states = _save(tmp_path, [1, 2])
  _damage(tmp_path / "checkpoints" / "2", how)
  with caplog.at_level("ERROR"):
    restored, step = _restore_latest(tmp_path, _state(0))
  assert step == 1
  chex.assert_trees_all_equal(restored, states[1])
  assert any("Checkpoint 2" in r.getMessage() for r in caplog.records)
  # The damaged one is moved aside (kept for inspection), so it is never trained over.
  assert sorted(d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == ["1"]
  assert [d.split("-")[0] for d in os.listdir(tmp_path / "corrupted_checkpoints")] == ["2"]


def test_all_checkpoints_damaged_raises(tmp_path):
  _save(tmp_path, [1])
  _damage(tmp_path / "checkpoints" / "1", "truncate")
  with pytest.raises(checkpointing.CheckpointError, match="None of the checkpoints"):
    _restore_latest(tmp_path, _state(0))


def test_missing_step_names_the_available_ones(tmp_path):
  _save(tmp_path, [1, 2])
  manager = checkpointing.create_manager(str(tmp_path))
  with pytest.raises(checkpointing.CheckpointError, match=r"step 7.*\[1, 2\]"):
    checkpointing.restore_step(manager, _state(0), 7)
  manager.close()
