"""Reliability soak: 20 SIGKILLs at random moments, then a corrupted newest checkpoint.

`python main.py` on configs/tiny.py (checkpoints every 2 steps, so kills land during steps and
during checkpoint writes) is killed 20 times, each time at a random moment after it started
training, and rerun with the same command. After every kill each checkpoint on disk must be
readable and match its digest; in the end the parameters must be bit-identical to those of an
uninterrupted run (the data of step s, its randomness and the restored state do not depend on
where a run was interrupted). A persistent compilation cache keeps the restarts short.
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
STEPS = 150
KILLS = 20


def _command(workdir):
  return [sys.executable, "main.py", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.training.num_train_steps={STEPS}", "--config.training.checkpoint_every_steps=2",
          "--config.training.log_every_steps=2", "--config.training.keep_checkpoints=3",
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


@pytest.mark.slow
def test_twenty_sigkills_then_a_corrupted_checkpoint_change_nothing(tmp_path):
  cache = str(tmp_path / "jax_cache")
  reference, soaked = str(tmp_path / "reference"), str(tmp_path / "soaked")
  done = subprocess.run(_command(reference), cwd=REPO, env=_env(cache), capture_output=True,
                        text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]

  rng = random.Random(0)
  kills = 0
  while kills < KILLS:
    log = open(str(tmp_path / "soaked.log"), "w+")
    proc = subprocess.Popen(_command(soaked), cwd=REPO, env=_env(cache), stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
      log.seek(0)
      if "Training steps" in log.read():  # compiled and stepping
        break
      time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.5))
    if proc.poll() is not None:  # finished before this kill: start over from scratch
      assert proc.returncode == 0, open(log.name).read()[-3000:]
      pytest.fail(f"the run finished after {kills} kills; raise STEPS")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    kills += 1
    for step in _steps(soaked):  # every checkpoint left behind is whole
      checkpointing.verify(soaked, step)
  assert _steps(soaked) and max(_steps(soaked)) < STEPS

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
