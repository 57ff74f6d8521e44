"""Reliability soak: 20 SIGKILLs at random moments, a SIGTERM, then a corrupted newest checkpoint.

`python main.py` on configs/tiny.py (dropout on, checkpoints every 4 steps and 3 kept, so kills
land during steps, checkpoint writes and deletions of old checkpoints) is killed with SIGKILL 20 times, each time at a random moment
after it saved a checkpoint of its own, and rerun with the same command; then it is preempted
with SIGTERM (it must save and exit 0), its newest checkpoint is damaged, and it is rerun to the
end. After every kill each checkpoint on disk must be readable and match its digest; in the end
the whole state must be bit-identical to that of an uninterrupted run (the data of step s, its
randomness and the restored state do not depend on where a run was interrupted). A persistent
compilation cache keeps the restarts short.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import chex
import pytest

from diffusion_jax import checkpointing
from checkpoint_files import damage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 400
EVERY = 4  # checkpoint period of the interrupted run
KILLS = 20


def _command(workdir, every=EVERY):
  return [sys.executable, "main.py", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.training.num_train_steps={STEPS}",
          f"--config.training.checkpoint_every_steps={every}",
          f"--config.training.log_every_steps={EVERY}", "--config.training.keep_checkpoints=3",
          "--config.training.sample_every_steps=0", "--config.model.dropout=0.1"]


def _env(cache):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _final_digest(workdir):
  """SHA-256 of the whole final state (params, EMA, Adam moments, step), saved with it."""
  with open(os.path.join(workdir, "checkpoints", str(STEPS), "meta", "metadata")) as f:
    return json.load(f)["sha256"]


def _start_and_wait_for_new_checkpoint(workdir, cache, log_path):
  """Starts the run; returns (process, log) once it has committed a checkpoint of its own."""
  log = open(log_path, "w+")
  proc = subprocess.Popen(_command(workdir), cwd=REPO, env=_env(cache), stdout=log,
                          stderr=subprocess.STDOUT)
  before = max(_steps(workdir), default=0)
  deadline = time.time() + 600
  while (time.time() < deadline and proc.poll() is None
         and max(_steps(workdir), default=0) <= before):
    time.sleep(0.02)
  if proc.poll() is not None:
    log.seek(0)
    pytest.fail(f"the run ended (rc={proc.returncode}) before a new checkpoint; STEPS too "
                f"small?\n{log.read()[-3000:]}")
  return proc, log


@pytest.mark.slow
def test_sigkills_sigterm_then_a_corrupted_checkpoint_change_nothing(tmp_path):
  cache = str(tmp_path / "jax_cache")
  reference, soaked = str(tmp_path / "reference"), str(tmp_path / "soaked")
  # Uninterrupted, checkpointed only at the end: the period changes nothing either.
  done = subprocess.run(_command(reference, every=STEPS), cwd=REPO, env=_env(cache),
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]

  rng = random.Random(0)
  for _ in range(KILLS):
    proc, _ = _start_and_wait_for_new_checkpoint(soaked, cache, str(tmp_path / "soaked.log"))
    time.sleep(rng.uniform(0.0, 0.3))  # a random moment: mid-step or mid-save
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    for step in _steps(soaked):  # every checkpoint left behind is whole
      checkpointing.verify(soaked, step)
  assert max(_steps(soaked)) < STEPS

  # Preemption: SIGTERM saves a checkpoint and exits cleanly; the run had resumed from the
  # newest checkpoint with its saved state (the digest covers params, EMA, Adam moments, step).
  latest = max(_steps(soaked))
  proc, log = _start_and_wait_for_new_checkpoint(soaked, cache, str(tmp_path / "term.log"))
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 0
  log.seek(0)
  text = log.read()
  assert f"Resumed from the checkpoint at step {latest} (state sha256 " in text, text[-3000:]
  preempted = re.search(r"Preempted at step (\d+)", text)
  assert preempted and int(preempted.group(1)) in _steps(soaked), text[-3000:]

  # Damage the newest checkpoint: training reports it, moves it aside and resumes before it.
  newest = max(_steps(soaked))
  damage(os.path.join(soaked, "checkpoints", str(newest)))
  done = subprocess.run(_command(soaked), cwd=REPO, env=_env(cache), capture_output=True,
                        text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert re.search(rf"Checkpoint {newest} .*Moved it to", done.stderr), done.stderr[-3000:]
  resumed = re.search(r"Resumed from the checkpoint at step (\d+)", done.stderr)
  assert resumed and int(resumed.group(1)) < newest, done.stderr[-3000:]

  assert _final_digest(soaked) == _final_digest(reference)  # the whole state, bit for bit
  chex.assert_trees_all_equal(checkpointing.restore_ema_params(soaked),
                              checkpointing.restore_ema_params(reference))
