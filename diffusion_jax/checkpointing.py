"""Checkpoints of the training state under `workdir/checkpoints/<step>/` (orbax).

- Saves are atomic (orbax writes a temporary directory and renames it when complete), so a
  run killed while saving leaves no half-written checkpoint behind that could be picked up.
- Each checkpoint also stores a SHA-256 digest of the state. A checkpoint that fails to
  restore or whose digest does not match is reported, moved to `workdir/corrupted_checkpoints/`
  and the previous one is used: a damaged checkpoint is never silently trained over.
- Only the last `keep` checkpoints are kept. An older one is first renamed into
  `checkpoints/deleted/` (atomic) and removed from there later, so a run killed while deleting
  it leaves no half-deleted step among the checkpoints either.
- Inference (`restore_ema_params`) is read-only: it opens the directory without creating,
  cleaning or moving anything, reads only the EMA parameters and the step, and skips an
  unreadable checkpoint with a message, leaving it where it is for the trainer to deal with.

The state is handled on the host: `save` takes (and `restore_*` return) an unreplicated
pytree of numpy arrays.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from typing import Any, Optional

from absl import logging
import flax.serialization
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from diffusion_jax import errors

PyTree = Any
CHECKPOINT_DIR = "checkpoints"
CORRUPTED_DIR = "corrupted_checkpoints"
DELETED_DIR = "deleted"  # under CHECKPOINT_DIR: steps past `keep`, renamed here, then removed


CheckpointError = errors.CheckpointError


def create_manager(workdir: str, keep: int = 3, *, cleanup_tmp_directories: bool = True
                   ) -> ocp.CheckpointManager:
  """An orbax CheckpointManager for `workdir/checkpoints` keeping the last `keep` steps.

  With cleanup_tmp_directories, leftovers of interrupted saves are removed in the background
  (they are never restored either way).
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         cleanup_tmp_directories=cleanup_tmp_directories,
                                         todelete_subdir=DELETED_DIR)
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                                  options=options, item_names=("state", "meta"))
  _remove_deleted(manager)
  return manager


def _remove_deleted(manager: ocp.CheckpointManager) -> None:
  """Removes the steps orbax moved to `checkpoints/deleted/` (process 0; no save running)."""
  if jax.process_index() == 0:
    shutil.rmtree(os.path.join(str(manager.directory), DELETED_DIR), ignore_errors=True)


def state_digest(state: PyTree) -> str:
  """SHA-256 over the dtype, shape and bytes of every leaf, in tree order."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    leaf = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{leaf.dtype}{leaf.shape}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def save(manager: ocp.CheckpointManager, step: int, state: PyTree) -> None:
  """Saves the host `state` as checkpoint `step` (asynchronously; see `wait`).

  Args:
    manager: from `create_manager`.
    step: the real optimizer step, which names the directory.
    state: unreplicated pytree of numpy arrays (e.g. a TrainState after `jax.device_get`).
  """
  state_dict = jax.tree.map(np.asarray, flax.serialization.to_state_dict(state))
  meta = {"step": int(step), "sha256": state_digest(state_dict),
          "sha256_ema_params": state_digest(state_dict["ema_params"]), "time": time.time()}
  manager.wait_until_finished()  # as manager.save would; then no rename into deleted/ is running
  _remove_deleted(manager)
  manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state_dict),
                                                  meta=ocp.args.JsonSave(meta)), force=True)


def wait(manager: ocp.CheckpointManager) -> None:
  """Blocks until pending asynchronous saves are on disk (and removes deleted steps)."""
  manager.wait_until_finished()
  _remove_deleted(manager)


def restore_step(manager: ocp.CheckpointManager, template: PyTree, step: int) -> PyTree:
  """Restores checkpoint `step` into the structure of `template` and verifies its digest.

  Raises:
    CheckpointError: when the step does not exist, cannot be read or its digest differs.
  """
  if step not in manager.all_steps():
    raise CheckpointError(
        f"No checkpoint for step {step} in {manager.directory}; available steps: "
        f"{sorted(manager.all_steps())}. Set the checkpoint_step field to one of them, or "
        "leave it unset for the latest.")
  template_dict = jax.tree.map(np.asarray, flax.serialization.to_state_dict(template))
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template_dict), meta=ocp.args.JsonRestore()))
  except Exception as e:  # orbax/tensorstore raise many types for unreadable files.
    raise CheckpointError(f"Checkpoint {step} in {manager.directory} cannot be restored: "
                          f"{type(e).__name__}: {e}") from e
  state_dict = jax.tree.map(np.asarray, restored.state)
  expected = (restored.meta or {}).get("sha256")
  if expected is None or state_digest(state_dict) != expected:
    raise CheckpointError(f"Checkpoint {step} in {manager.directory} is corrupted: its contents "
                          "do not match the digest saved with it.")
  return flax.serialization.from_state_dict(template, state_dict)


def _move_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves a damaged checkpoint out of the manager's directory (kept for inspection)."""
  src = os.path.join(str(manager.directory), str(step))
  dst_root = os.path.join(os.path.dirname(str(manager.directory)), CORRUPTED_DIR)
  os.makedirs(dst_root, exist_ok=True)
  dst = os.path.join(dst_root, f"{step}-{int(time.time())}")
  shutil.move(src, dst)
  manager.reload()
  return dst


def restore_latest(manager: ocp.CheckpointManager, template: PyTree
                   ) -> tuple[Optional[PyTree], Optional[int]]:
  """Restores the newest readable checkpoint; (None, None) when there is none.

  A checkpoint that fails to restore is logged as an error, moved to
  `workdir/corrupted_checkpoints/` and the next older one is tried.

  Raises:
    CheckpointError: when checkpoints exist but none of them can be restored (training
      from scratch over them would hide the damage).
  """
  failed = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return restore_step(manager, template, step), step
    except CheckpointError as e:
      # Every process fails on the same files; process 0 moves them, the others wait for it.
      dst = _move_aside(manager, step) if jax.process_index() == 0 else "corrupted_checkpoints/ (by process 0)"
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"diffusion_jax: moved checkpoint {step}")
        manager.reload()
      failed.append(dst)
      logging.error("%s Moved it to %s; falling back to the previous checkpoint.", e, dst)
  if failed:
    raise CheckpointError(
        f"None of the checkpoints in {manager.directory} could be restored (moved to "
        f"{', '.join(failed)}). Use a new workdir to train from scratch.")
  return None, None


def _read_only_manager(directory: str) -> ocp.CheckpointManager:
  """A manager that never creates, cleans, deletes or writes anything under `directory`."""
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  return ocp.CheckpointManager(directory, options=options, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})


def latest_step(workdir: str) -> Optional[int]:
  """The newest checkpoint step in `workdir` (None if there is none), looked up read-only."""
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    return None
  manager = _read_only_manager(directory)
  try:
    return manager.latest_step()
  finally:
    manager.close()


def _restore_ema_step(manager: ocp.CheckpointManager, step: int) -> PyTree:
  """Reads only `ema_params` of checkpoint `step` and checks them against their digest."""
  try:
    saved = manager.item_metadata(step).state.tree
    template = {"ema_params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                                           saved["ema_params"])}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), template)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=template, restore_args=restore_args,
                                     partial_restore=True),
        meta=ocp.args.JsonRestore()))
  except Exception as e:  # orbax/tensorstore raise many types for unreadable files.
    raise CheckpointError(f"Checkpoint {step} in {manager.directory} cannot be read: "
                          f"{type(e).__name__}: {e}") from e
  ema_params = restored.state["ema_params"]
  meta = restored.meta or {}
  expected = meta.get("sha256_ema_params")
  if expected is None and "sha256" in meta:  # older checkpoints: one digest of the whole state
    whole = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore())).state
    if state_digest(whole) == meta["sha256"]:
      return ema_params
  if expected is None or state_digest(ema_params) != expected:
    raise CheckpointError(f"Checkpoint {step} in {manager.directory} is corrupted: its EMA "
                          "parameters do not match the digest saved with them.")
  return ema_params


def restore_ema_params(workdir: str, step: Optional[int] = None) -> tuple[PyTree, int]:
  """Reads the EMA parameters of checkpoint `step` (None = the newest readable one), read-only.

  Nothing under `workdir/checkpoints` is created, moved or deleted, so this is safe beside a
  live training run. An unreadable newest checkpoint is reported and the previous one used.

  Returns:
    (ema_params as a nested dict of numpy arrays, the checkpoint's step).

  Raises:
    CheckpointError: no checkpoint, the requested step is missing or unreadable, or none of
      the checkpoints can be read.
  """
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    raise CheckpointError(f"No checkpoint in {directory}: train first with --mode=train and the "
                          "same --workdir.")
  manager = _read_only_manager(directory)
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None:
      if step not in steps:
        raise CheckpointError(
            f"No checkpoint for step {step} in {directory}; available steps: {sorted(steps)}. "
            "Set the checkpoint_step field to one of them, or leave it unset for the latest.")
      return _restore_ema_step(manager, step), step
    if not steps:
      raise CheckpointError(f"No checkpoint in {directory}: train first with --mode=train and "
                            "the same --workdir.")
    for candidate in steps:
      try:
        return _restore_ema_step(manager, candidate), candidate
      except CheckpointError as e:
        logging.warning("%s Skipped it (left untouched); trying the previous checkpoint.", e)
    raise CheckpointError(f"None of the checkpoints {sorted(steps)} in {directory} can be read.")
  finally:
    manager.close()


def verify(workdir: str, step: int) -> None:
  """Reads all of checkpoint `step` (read-only) and checks it against its digest.

  Raises:
    CheckpointError: when it cannot be read or its contents differ from the digest.
  """
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  manager = _read_only_manager(directory)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(), meta=ocp.args.JsonRestore()))
  except Exception as e:  # orbax/tensorstore raise many types for unreadable files.
    raise CheckpointError(f"Checkpoint {step} in {directory} cannot be read: "
                          f"{type(e).__name__}: {e}") from e
  finally:
    manager.close()
  if state_digest(restored.state) != (restored.meta or {}).get("sha256"):
    raise CheckpointError(f"Checkpoint {step} in {directory} does not match its digest.")
