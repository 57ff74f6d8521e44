"""End-to-end tests of `python main.py`: kill -9 and resume, SIGTERM (preemption), flag errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir, *overrides):
  return [sys.executable, os.path.join(REPO, "main.py"), "--config=configs/tiny.py",
          f"--workdir={workdir}", "--config.training.num_train_steps=400",
          "--config.training.checkpoint_every_steps=10", "--config.training.log_every_steps=10",
          "--config.training.keep_checkpoints=100", "--config.training.sample_every_steps=0",
          *overrides]


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's shell has
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _start_and_wait_for_checkpoint(cmd, workdir, after_step, timeout=420):
  """Starts `cmd`; returns (process, log file) once a checkpoint newer than after_step exists."""
  log = open(os.path.join(workdir + ".log"), "a+")
  proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + timeout
  while time.time() < deadline:
    if any(s > after_step for s in _steps(workdir)):
      return proc, log
    if proc.poll() is not None:
      break
    time.sleep(0.05)
  proc.kill()
  log.seek(0)
  pytest.fail(f"no checkpoint after step {after_step} appeared (rc={proc.poll()}):\n"
              f"{log.read()[-3000:]}")


def _digest(workdir, step):
  with open(os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")) as f:
    return json.load(f)["sha256"]


@pytest.mark.slow
def test_kill_resume_preempt_resume_finishes(tmp_path):
  workdir = str(tmp_path / "run")
  cmd = _command(workdir)

  # 1. SIGKILL right after the first checkpoint: nothing to clean up, no half checkpoint used.
  proc, log = _start_and_wait_for_checkpoint(cmd, workdir, after_step=0)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  killed_at = max(_steps(workdir))
  assert killed_at < 400

  # 2. The same command resumes from that step with the saved state (its digest covers params,
  #    EMA, Adam moments and step); SIGTERM then saves a checkpoint and exits cleanly.
  proc, log = _start_and_wait_for_checkpoint(cmd, workdir, after_step=killed_at)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 0
  log.seek(0)
  text = log.read()
  assert f"Resumed from the checkpoint at step {killed_at} (state sha256 " \
         f"{_digest(workdir, killed_at)})" in text
  preempted = re.search(r"Preempted at step (\d+)", text)
  assert preempted, text[-3000:]
  preempted_at = int(preempted.group(1))
  assert preempted_at in _steps(workdir)  # saved on SIGTERM, off the 10-step grid or not

  # 3. Rerun again: continues from the preemption checkpoint and finishes.
  done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"Resumed from the checkpoint at step {preempted_at} (state sha256 " \
         f"{_digest(workdir, preempted_at)})" in done.stderr
  assert max(_steps(workdir)) == 400
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["training"]["num_train_steps"] == 400


@pytest.mark.slow
def test_flag_errors_name_the_field():
  typo = subprocess.run(
      [sys.executable, os.path.join(REPO, "main.py"), "--config=configs/tiny.py",
       "--workdir=/tmp/unused", "--config.training.batch_sz=8"],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert typo.returncode != 0
  assert 'Did you mean "batch_size"' in typo.stderr
  bad = subprocess.run(
      [sys.executable, os.path.join(REPO, "main.py"), "--config=configs/tiny.py",
       "--workdir=/tmp/unused", "--config.data.dataset=cifar100"],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "config.data.dataset='cifar100'" in bad.stderr
