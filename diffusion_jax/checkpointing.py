"""Checkpoints of the training state under `workdir/checkpoints/<step>/` (orbax).

- Saves are atomic (orbax writes a temporary directory and renames it when complete), so a
  run killed while saving leaves no half-written checkpoint behind that could be picked up.
- Each checkpoint also stores a SHA-256 digest of the state. A checkpoint that fails to
  restore or whose digest does not match is reported, moved to `workdir/corrupted_checkpoints/`
  and the previous one is used: a damaged checkpoint is never silently trained over.
- Only the last `keep` checkpoints are kept.

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
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any
CHECKPOINT_DIR = "checkpoints"
CORRUPTED_DIR = "corrupted_checkpoints"


class CheckpointError(RuntimeError):
  """A requested checkpoint is missing or cannot be restored."""


def create_manager(workdir: str, keep: int = 3, *, cleanup_tmp_directories: bool = True
                   ) -> ocp.CheckpointManager:
  """An orbax CheckpointManager for `workdir/checkpoints` keeping the last `keep` steps.

  With cleanup_tmp_directories, leftovers of interrupted saves are removed in the background
  (they are never restored either way).
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         cleanup_tmp_directories=cleanup_tmp_directories)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                               options=options, item_names=("state", "meta"))


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
  meta = {"step": int(step), "sha256": state_digest(state_dict), "time": time.time()}
  manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state_dict),
                                                  meta=ocp.args.JsonSave(meta)), force=True)


def wait(manager: ocp.CheckpointManager) -> None:
  """Blocks until pending asynchronous saves are on disk."""
  manager.wait_until_finished()


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
      dst = _move_aside(manager, step)
      failed.append(dst)
      logging.error("%s Moved it to %s; falling back to the previous checkpoint.", e, dst)
  if failed:
    raise CheckpointError(
        f"None of the checkpoints in {manager.directory} could be restored (moved to "
        f"{', '.join(failed)}). Use a new workdir to train from scratch.")
  return None, None
