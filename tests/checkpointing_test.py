"""Tests of diffusion_jax.checkpointing: round trip, keep-last-N, and damaged checkpoints."""

import os

import chex
import jax
import numpy as np
import optax
import pytest

from diffusion_jax import checkpointing, timestep_sampling, train_state
from checkpoint_files import damage, snapshot


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


def test_old_checkpoints_are_renamed_aside_before_they_are_removed(tmp_path):
  # orbax deletes a step past `keep` file by file: killed midway, that left a step directory with
  # only some of its items among the checkpoints (seen in tests/soak_test.py). Renamed into
  # checkpoints/deleted/ first, it leaves the list of steps in one move.
  manager = checkpointing.create_manager(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    checkpointing.save(manager, step, _state(step))
  manager.wait_until_finished()  # orbax's wait only: step 1 was moved aside, not yet removed
  checkpoints = tmp_path / "checkpoints"
  assert sorted(os.listdir(checkpoints / checkpointing.DELETED_DIR)) == ["1"]
  assert sorted(d for d in os.listdir(checkpoints) if d.isdigit()) == ["2", "3"]
  checkpointing.wait(manager)  # ours also removes what was moved aside
  assert not os.path.exists(checkpoints / checkpointing.DELETED_DIR)
  manager.close()


def test_a_half_removed_old_checkpoint_is_never_listed_and_is_cleaned_up(tmp_path):
  states = _save(tmp_path, [2])
  # A run killed while removing a moved-aside step: part of it is still in deleted/.
  leftover = tmp_path / "checkpoints" / checkpointing.DELETED_DIR / "1" / "state"
  os.makedirs(leftover)
  restored, step = _restore_latest(tmp_path, _state(0))  # create_manager cleans up
  assert step == 2
  chex.assert_trees_all_equal(restored, states[2])
  assert not os.path.exists(tmp_path / "checkpoints" / checkpointing.DELETED_DIR)
  assert checkpointing.latest_step(str(tmp_path)) == 2


def test_half_written_checkpoint_is_ignored(tmp_path):
  states = _save(tmp_path, [2])
  # What a run killed during a save leaves behind: orbax's temporary directory.
  os.makedirs(tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp" / "state")
  restored, step = _restore_latest(tmp_path, _state(0))
  assert step == 2
  chex.assert_trees_all_equal(restored, states[2])


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_latest_checkpoint_is_reported_and_previous_used(tmp_path, how, caplog):
  states = _save(tmp_path, [1, 2])
  damage(tmp_path / "checkpoints" / "2", how)
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
  damage(tmp_path / "checkpoints" / "1", "truncate")
  with pytest.raises(checkpointing.CheckpointError, match="None of the checkpoints"):
    _restore_latest(tmp_path, _state(0))


def test_missing_step_names_the_available_ones(tmp_path):
  _save(tmp_path, [1, 2])
  manager = checkpointing.create_manager(str(tmp_path))
  with pytest.raises(checkpointing.CheckpointError, match=r"step 7.*\[1, 2\]"):
    checkpointing.restore_step(manager, _state(0), 7)
  manager.close()


def test_restore_ema_params_reads_only_the_ema_and_the_step(tmp_path):
  states = _save(tmp_path, [1, 2])
  before = snapshot(tmp_path)
  ema, step = checkpointing.restore_ema_params(str(tmp_path))
  assert step == 2
  chex.assert_trees_all_equal(ema, states[2].ema_params)
  ema1, step1 = checkpointing.restore_ema_params(str(tmp_path), 1)
  assert step1 == 1
  chex.assert_trees_all_equal(ema1, states[1].ema_params)
  assert snapshot(tmp_path) == before  # nothing created, moved or written


@pytest.mark.parametrize("how", ["truncate", "wrong_digest"])
def test_restore_ema_params_skips_a_damaged_newest_without_touching_it(tmp_path, how, caplog):
  states = _save(tmp_path, [1, 2])
  if how == "truncate":
    damage(tmp_path / "checkpoints" / "2", how)
  else:  # the EMA parameters no longer match the digest saved with them
    meta = tmp_path / "checkpoints" / "2" / "meta" / "metadata"
    meta.write_text(meta.read_text().replace('"sha256_ema_params": "', '"sha256_ema_params": "0'))
  before = snapshot(tmp_path)
  with caplog.at_level("WARNING"):
    ema, step = checkpointing.restore_ema_params(str(tmp_path))
  assert step == 1
  chex.assert_trees_all_equal(ema, states[1].ema_params)
  assert any("Checkpoint 2" in r.getMessage() and "Skipped" in r.getMessage()
             for r in caplog.records)
  assert snapshot(tmp_path) == before
  with pytest.raises(checkpointing.CheckpointError, match="Checkpoint 2"):
    checkpointing.restore_ema_params(str(tmp_path), 2)  # asked for by step: an error


def test_restore_ema_params_without_checkpoints(tmp_path):
  with pytest.raises(checkpointing.CheckpointError, match="train first"):
    checkpointing.restore_ema_params(str(tmp_path))
  assert not any(tmp_path.iterdir())
